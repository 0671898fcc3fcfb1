"""Images as a viewer shows them: the one place where alignkit turns image files and PIL images
into 8-bit RGB.

Every path that decodes a picture goes through here (probe rows, the encoders' preprocessing, the
image checks of probe loading), so an image gets the same pixels whichever way it reaches a model:

* the EXIF orientation tag is applied (a phone photo stored sideways with orientation 6 is
  turned upright, as a viewer shows it);
* 16-bit and 32-bit greyscale are scaled to 8 bits over their range instead of being clipped
  to 255 (see :func:`to_rgb` for the rule);
* transparency is composited onto white (as browsers on a white page and transformers'
  ``convert_to_rgb`` do), palettes are expanded, CMYK and YCbCr are converted.

A change to the pixels given here changes image features: bump
:data:`alignkit.features.cache.IMAGE_FEATURES_VERSION` with it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from alignkit.errors import AlignkitError

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_DIRECT = ("1", "L", "P", "CMYK", "YCbCr", "RGBX", "HSV")
#: The PIL modes :func:`to_rgb` accepts.
MODES = ("RGB", *_DIRECT, *_ALPHA, *_SIXTEEN_BIT, "I", "F")


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation tag says (1-8); unchanged when it has none.

    Idempotent: the returned image carries no orientation tag.
    """
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block is treated as no EXIF  # noqa: BLE001
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _grey_to_uint8(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit greyscale image as 8-bit ``L``.

    ``I;16*``: the full 16-bit range, ``v * 255 / 65535`` rounded (so an 8-bit picture stored as
    16 bits, ``v8 * 257``, comes back exactly). ``I`` (32-bit integer, which is also how Pillow
    decodes some 16-bit files): the same 16-bit scaling when every value lies in [0, 65535], else
    a linear stretch of [min, max] to [0, 255]. ``F`` (32-bit float): ``v * 255`` when every value
    lies in [0, 1], else the same linear stretch. NaN and infinite values count as the minimum.
    """
    values = np.asarray(image).astype(np.float64)  # (H, W)
    finite = np.isfinite(values)
    if not finite.all():
        low = values[finite].min() if finite.any() else 0.0
        values = np.where(finite, values, low)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and lo >= 0 and hi <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255.0
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Any) -> Image.Image:
    """A PIL image of any mode in :data:`MODES` -> upright 8-bit RGB, as a viewer shows it.

    EXIF orientation applied; ``1``/``L`` repeated into three channels; ``P`` expanded through
    its palette; alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) composited
    onto white; ``CMYK``/``YCbCr``/``HSV`` converted by PIL; 16- and 32-bit greyscale scaled as
    :func:`_grey_to_uint8` says. An ``RGB`` image with no orientation tag is returned as is.

    Raises:
        AlignkitError: ``image`` is not a PIL image, or its mode is not one of :data:`MODES`.
    """
    if not isinstance(image, Image.Image):
        raise AlignkitError(
            f"expected a PIL image (PIL.Image.open(path)): got {type(image).__name__}"
        )
    mode = image.mode
    if mode not in MODES:
        raise AlignkitError(
            f"cannot show an image of PIL mode {mode!r} as RGB; accepted modes: {', '.join(MODES)}"
            " (convert it with PIL first)"
        )
    image = upright(image)
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _grey_to_uint8(image).convert("RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in image.info):
        return _on_white(image)
    return image.convert("RGB")


def load_image(source: str | os.PathLike[str] | bytes | IO[bytes]) -> Image.Image:
    """Decode an image file (a path, its bytes, or an open binary file) into upright 8-bit RGB
    (:func:`to_rgb`). The file is closed before this returns.

    Raises:
        AlignkitError: the mode is not one of :data:`MODES`.
        OSError / PIL.UnidentifiedImageError: the file cannot be read or decoded.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        source = Path(source)
    with Image.open(source) as img:
        img.load()
        rgb = to_rgb(img)
        return rgb.copy() if rgb is img else rgb


__all__ = ["MODES", "load_image", "to_rgb", "upright"]
