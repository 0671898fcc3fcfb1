"""Images as a viewer shows them (alignkit.images): every accepted PIL mode against the same real
photo saved as plain 8-bit RGB, EXIF orientation, and the one loader used by probe rows, the
encoders' preprocessing and the probe checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignkit.encoders._util import ToRGB, image_transform
from alignkit.errors import AlignkitError
from alignkit.images import MODES, load_image, to_rgb
from alignkit.probes.base import ProbeRow, decode_check


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> Image.Image:
    """A real Flickr8k photo, cropped to 224 x 160 so that a quarter turn changes its shape."""
    line = (data_dir / "flickr8k" / "pairs.jsonl").read_text().splitlines()[3]
    with Image.open(data_dir / "flickr8k" / json.loads(line)["image"]) as im:
        return im.convert("RGB").crop((0, 32, 224, 192))


def _file(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb_reference(image: Image.Image) -> np.ndarray:
    """The picture saved as a plain 8-bit RGB PNG and read back with nothing but PIL."""
    with Image.open(io.BytesIO(_file(image, "PNG"))) as im:
        assert im.mode == "RGB"
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.int16)


# -- greyscale of every depth -----------------------------------------------------------------


def _grey_cases(grey: np.ndarray) -> dict[str, Image.Image]:
    """The 8-bit grey picture ``grey`` (H, W) in every deeper mode, as files store it."""
    g16 = grey.astype(np.uint16) * 257  # 8 -> 16 bits, full range (0 -> 0, 255 -> 65535)
    return {
        "L": Image.fromarray(grey, "L"),
        "I;16": Image.fromarray(g16),
        "I;16B": Image.frombytes("I;16B", grey.shape[::-1], g16.astype(">u2").tobytes()),
        "I (16-bit values)": Image.fromarray(g16.astype(np.int32), "I"),
        "I (signed, any range)": Image.fromarray(grey.astype(np.int32) * 1000 - 70_000, "I"),
        "F (0..1)": Image.fromarray(grey.astype(np.float32) / 255.0, "F"),
        "F (any range)": Image.fromarray(grey.astype(np.float32) * 3.5 - 20.0, "F"),
    }


def test_every_greyscale_depth_shows_as_the_8_bit_picture(photo: Image.Image) -> None:
    grey = np.asarray(photo.convert("L"))
    grey = np.interp(grey, (grey.min(), grey.max()), (0, 255)).round().astype(np.uint8)  # 0..255
    reference = _rgb_reference(Image.fromarray(grey, "L").convert("RGB"))
    for name, image in _grey_cases(grey).items():
        got = _pixels(to_rgb(image))
        assert np.abs(got - reference).max() <= 1, name  # rounding of a scale factor at most
    # what plain PIL does to the 16-bit picture: everything above 255 clips to white
    clipped = _pixels(Image.fromarray(grey.astype(np.uint16) * 257).convert("RGB"))
    assert np.abs(clipped - reference).mean() > 50


@pytest.mark.parametrize("fmt,mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "F")])
def test_deep_greyscale_files_decode_to_the_8_bit_picture(
    photo: Image.Image, fmt: str, mode: str
) -> None:
    grey = np.asarray(photo.convert("L"))
    deep = (
        Image.fromarray(grey.astype(np.uint16) * 257)
        if mode == "I;16"
        else Image.fromarray(grey.astype(np.float32) / 255.0, "F")
    )
    data = _file(deep, fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode in ("I;16", "I", "F")  # how PIL decodes it, not 8-bit
    reference = _rgb_reference(Image.fromarray(grey, "L").convert("RGB"))
    assert np.abs(_pixels(load_image(data)) - reference).max() <= 1


# -- colour modes -----------------------------------------------------------------------------


def test_every_colour_mode_shows_as_the_8_bit_rgb_picture(photo: Image.Image) -> None:
    rgb = _rgb_reference(photo)
    opaque = photo.copy()
    opaque.putalpha(255)
    # (image in the mode, largest per-pixel difference allowed, from what PIL's conversion loses)
    cases = {
        "RGBA": (opaque, 0),
        "RGBa": (opaque.convert("RGBa"), 0),
        "RGBX": (photo.convert("RGBX"), 0),
        "CMYK": (photo.convert("CMYK"), 0),
        "YCbCr": (photo.convert("YCbCr"), 4),  # 8-bit YCbCr rounding
        "HSV": (photo.convert("HSV"), 8),  # 8-bit hue
    }
    for mode, (image, tol) in cases.items():
        assert image.mode == mode
        diff = np.abs(_pixels(to_rgb(image)) - rgb)
        assert diff.max() <= tol and diff.mean() < 1.5, mode
    # palette and 1-bit pictures: the same picture, as its own palette / bits say
    for image in (photo.quantize(64), photo.convert("1")):
        reference = _rgb_reference(image.convert("RGB"))
        assert np.array_equal(_pixels(to_rgb(image)), reference), image.mode
    assert np.abs(_pixels(to_rgb(photo.quantize(256))) - rgb).mean() < 6  # near the photo


def test_transparency_is_composited_onto_white(photo: Image.Image) -> None:
    rgb = np.asarray(photo, dtype=np.float64)
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))  # (H, W)
    rgba = Image.fromarray(np.dstack([np.asarray(photo), alpha]), "RGBA")
    a = alpha[..., None] / 255.0
    expected = a * rgb + (1 - a) * 255.0  # "over" onto opaque white
    assert np.abs(_pixels(to_rgb(rgba)) - expected).max() <= 1
    grey = np.asarray(photo.convert("L"), dtype=np.float64)
    la = Image.fromarray(np.dstack([grey.astype(np.uint8), alpha]), "LA")
    expected_grey = (alpha / 255.0) * grey + (1 - alpha / 255.0) * 255.0
    assert np.abs(_pixels(to_rgb(la))[..., 0] - expected_grey).max() <= 1
    pa = rgba.convert("PA")
    assert np.abs(_pixels(to_rgb(pa)) - expected).mean() < 6  # palette quantisation
    # a palette image with one transparent colour: that colour shows white
    pal = photo.quantize(16)
    pal.info["transparency"] = 0
    shown = _pixels(to_rgb(pal))
    assert np.all(shown[np.asarray(pal) == 0] == 255)
    assert np.array_equal(
        shown[np.asarray(pal) != 0], _pixels(pal.convert("RGB"))[np.asarray(pal) != 0]
    )


def test_every_accepted_mode_is_covered_here() -> None:
    covered = {"RGB", "L", "1", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
    covered |= {"HSV", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
    assert set(MODES) <= covered


def test_unaccepted_modes_and_non_images_are_one_line_errors() -> None:
    with pytest.raises(AlignkitError, match="mode 'LAB'.*accepted modes: RGB"):
        to_rgb(Image.new("LAB", (4, 4)))
    with pytest.raises(AlignkitError, match="expected a PIL image.*got str"):
        to_rgb("photo.jpg")


# -- EXIF orientation ---------------------------------------------------------------------------


def _sideways_jpeg(photo: Image.Image) -> bytes:
    """What a phone stores: the pixels turned a quarter left, with orientation 6 ("turn right
    to view") in the EXIF block."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _file(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def test_an_exif_orientation_6_jpeg_shows_upright(photo: Image.Image) -> None:
    upright = _pixels(load_image(_file(photo, "JPEG", quality=95)))
    data = _sideways_jpeg(photo)
    shown = _pixels(load_image(data))
    assert shown.shape == upright.shape == (160, 224, 3)
    assert np.abs(shown - upright).mean() < 2.5  # two JPEG encodings of the same picture
    with Image.open(io.BytesIO(data)) as stored:  # the stored pixels are the sideways ones
        assert stored.size == (160, 224)
    # a PIL image opened by the caller gets the same treatment, once (the tag is consumed)
    with Image.open(io.BytesIO(data)) as im:
        once = to_rgb(im)
    assert np.array_equal(_pixels(once), shown)
    assert np.array_equal(_pixels(to_rgb(once)), shown)


def test_probe_rows_encoders_and_checks_decode_the_same_way(
    photo: Image.Image, tmp_path: Path
) -> None:
    """One loader everywhere: a probe row, an encoder's preprocessing of a PIL image the user
    opened, and the random-features control all see the upright picture."""
    upright_path = tmp_path / "upright.png"
    photo.save(upright_path)
    sideways_path = tmp_path / "sideways.jpg"
    sideways_path.write_bytes(_sideways_jpeg(photo))
    deep_path = tmp_path / "deep.png"
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(deep_path)

    row = ProbeRow(id="r", image=sideways_path, captions=("a photo",))
    assert np.abs(_pixels(row.load_image()) - _rgb_reference(photo)).mean() < 2.5
    grey_row = ProbeRow(id="g", image=deep_path, captions=("a photo",))
    grey = _rgb_reference(photo.convert("L").convert("RGB"))
    assert np.abs(_pixels(grey_row.load_image()) - grey).max() <= 1

    transform = image_transform(resize=64, crop=56, mean=(0.5,) * 3, std=(0.5,) * 3)
    with Image.open(sideways_path) as im:
        from_user = transform(im)
    assert (from_user - transform(row.load_image())).abs().max() == 0
    with Image.open(deep_path) as im:
        assert np.array_equal(_pixels(ToRGB()(im)), _pixels(grey_row.load_image()))
    assert decode_check(sideways_path.read_bytes()) is None
    assert "mode 'LAB'" in decode_check(_file(Image.new("LAB", (4, 4)), "TIFF"))
