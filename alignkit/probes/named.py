"""The named probes: specs resolved under the data folder (``flickr8k``, ``imagenet-samples``,
``coco-val2017``, the built-in ``synthetic``), each a :class:`NamedProbe` whose loader returns the
unvalidated :class:`~alignkit.probes.raw.RawProbe` that :func:`alignkit.probes.load_probe`
validates."""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from alignkit.errors import AlignkitError
from alignkit.probes.classnames import DEFAULT_TEMPLATES
from alignkit.probes.download import RemoteFile, download, file_lock
from alignkit.probes.formats import detect_format, read_path
from alignkit.probes.layouts import read_coco
from alignkit.probes.manifest import read_manifest
from alignkit.probes.raw import RawProbe
from alignkit.probes.synthetic import read_synthetic

log = logging.getLogger("alignkit.probes")

SYNTHETIC_DEFAULT_N = 1000
# Official COCO 2017 files (cocodataset.org); sizes and SHA-1 as published alongside them.
COCO_VAL2017_IMAGES = RemoteFile(
    "http://images.cocodataset.org/zips/val2017.zip",
    size=815_585_330,
    checksum="sha1:4950dc9d00dbe1c933ee0170f5797584351d2a41",
)
COCO_ANNOTATIONS_2017 = RemoteFile(
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    size=252_907_541,
    checksum="sha1:8551ee4bb5860311e79dace7e79cb91e432e78b3",
)


# ----------------------------------------------------------------------------- named loaders


def _missing(name: str, looked: Path, how: str) -> AlignkitError:
    return AlignkitError(f"named probe {name!r} not found: looked in {looked}; {how}")


def _load_synthetic(root: Path, *, n: int | None, seed: int) -> RawProbe:
    return read_synthetic(SYNTHETIC_DEFAULT_N if n is None else n, seed)


def _load_flickr8k(root: Path) -> RawProbe:
    folder = root / "flickr8k"
    if (folder / "pairs.jsonl").is_file():
        return read_manifest(folder / "pairs.jsonl", id_column="source_id")
    if folder.is_dir():
        try:
            fmt, target = detect_format(folder)
        except AlignkitError:
            fmt, target = None, None
        if fmt == "flickr":
            return read_path(target, format="flickr")
    raise _missing(
        "flickr8k",
        folder,
        "expected pairs.jsonl or Flickr8k.token.txt with its images; set ALIGNKIT_DATA_DIR (or "
        "data_dir=) to the folder holding flickr8k/ (Flickr8k: Hodosh et al. 2013, research use)",
    )


def _load_imagenet_samples(
    root: Path,
    *,
    class_names: Sequence[str] | str | Path = "imagenet",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    allow_duplicate_class_names: bool = False,
) -> RawProbe:
    folder = root / "imagenet-samples"
    if not (folder / "labels.jsonl").is_file():
        raise _missing(
            "imagenet-samples",
            folder,
            "expected labels.jsonl and images/; set ALIGNKIT_DATA_DIR (or data_dir=) to the folder "
            "holding imagenet-samples/",
        )
    return read_manifest(
        folder / "labels.jsonl",
        id_column="synset",
        class_names=class_names,
        templates=templates,
        allow_duplicate_class_names=allow_duplicate_class_names,
    )


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        if member not in zf.namelist():
            raise AlignkitError(
                f"{archive} does not hold {member}: got {', '.join(zf.namelist()[:5])}, ..."
            )
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(member) as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(tmp, dest)


def _extract_folder(archive: Path, folder: str, dest: Path, progress: bool) -> None:
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if m.filename.startswith(folder + "/")]
        if not members:
            raise AlignkitError(f"{archive} holds no {folder}/ folder")
        for m in tqdm(
            members, desc=f"extracting {folder}", unit="file", disable=not progress, leave=False
        ):
            zf.extract(m, tmp)
    os.replace(tmp / folder, dest)  # atomic: a present val2017/ is always complete
    shutil.rmtree(tmp, ignore_errors=True)


def _load_coco_val2017(
    root: Path,
    *,
    download_missing: bool = True,
    images_zip: RemoteFile = COCO_VAL2017_IMAGES,
    annotations_zip: RemoteFile = COCO_ANNOTATIONS_2017,
    keep_archives: bool = False,
    progress: bool = True,
) -> RawProbe:
    """COCO 2017 val (5,000 images, 5-7 captions each) under ``<data_dir>/coco-val2017``,
    downloaded (about 1 GB) on first use unless ``download_missing=False``."""
    folder = root / "coco-val2017"
    captions = folder / "annotations" / "captions_val2017.json"
    images = folder / "val2017"
    if not (captions.is_file() and images.is_dir()):
        if not download_missing:
            raise _missing(
                "coco-val2017",
                folder,
                "expected annotations/captions_val2017.json and val2017/; load it with "
                "download_missing=True to fetch it from cocodataset.org (about 1 GB)",
            )
        with file_lock(folder / ".lock"):
            downloads = folder / "downloads"
            if not captions.is_file():
                log.info("downloading COCO 2017 caption annotations into %s", folder)
                archive = download(
                    annotations_zip, downloads / annotations_zip.filename, progress=progress
                )
                _extract_member(archive, "annotations/captions_val2017.json", captions)
                if not keep_archives:
                    archive.unlink(missing_ok=True)
            if not images.is_dir():
                log.info("downloading COCO 2017 val images into %s", folder)
                archive = download(images_zip, downloads / images_zip.filename, progress=progress)
                _extract_folder(archive, "val2017", images, progress)
                if not keep_archives:
                    archive.unlink(missing_ok=True)
    return read_coco(captions, images=images)


@dataclass(frozen=True)
class NamedProbe:
    """A probe resolved by name under the data folder. ``loader(data_dir, **options)``."""

    name: str
    description: str
    loader: Callable[..., RawProbe]
    splits: tuple[str, ...] = ()


NAMED_PROBES: dict[str, NamedProbe] = {
    "synthetic": NamedProbe(
        "synthetic",
        "procedurally rendered shapes with captions from the same scene description (built in)",
        _load_synthetic,
    ),
    "flickr8k": NamedProbe(
        "flickr8k",
        "Flickr8k photos with 5 human captions each (Hodosh et al. 2013); 8,091 rows",
        _load_flickr8k,
        splits=("train", "dev", "test", "none"),
    ),
    "imagenet-samples": NamedProbe(
        "imagenet-samples",
        "one ImageNet-1k photo per class, captions 'a photo of a {class name}.'; 1,000 rows",
        _load_imagenet_samples,
    ),
    "coco-val2017": NamedProbe(
        "coco-val2017",
        "COCO 2017 val, 5,000 photos with 5-7 captions each; downloaded on first use",
        _load_coco_val2017,
    ),
}


def list_probes(pattern: str = "*") -> list[str]:
    """Named probe specs matching ``pattern`` (fnmatch), with their split variants
    (``flickr8k:test``), sorted."""
    names = []
    for probe in NAMED_PROBES.values():
        names.append(probe.name)
        names.extend(f"{probe.name}:{s}" for s in probe.splits if s != "none")
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))
