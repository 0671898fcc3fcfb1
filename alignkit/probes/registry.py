"""``load_probe`` and ``list_probes``: probe specs (a named probe or a path) to a validated
:class:`ProbeSet`."""

from __future__ import annotations

import fnmatch
import functools
import gc
import inspect
import logging
import numbers
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from alignkit._paths import data_dir as default_data_dir
from alignkit.errors import AlignkitError, unknown_key
from alignkit.probes.base import ProbeRow, ProbeSet, hash_order
from alignkit.probes.checks import CHECKS, FileCheck, check_images
from alignkit.probes.classnames import DEFAULT_TEMPLATES, check_label
from alignkit.probes.containers import read_container
from alignkit.probes.download import RemoteFile, download, file_lock
from alignkit.probes.formats import detect_format, read_path
from alignkit.probes.layouts import read_coco
from alignkit.probes.manifest import read_manifest
from alignkit.probes.members import check_members, is_member
from alignkit.probes.raw import Entry, RawProbe
from alignkit.probes.synthetic import read_synthetic

log = logging.getLogger("alignkit.probes")

SYNTHETIC_DEFAULT_N = 1000
#: ``check="auto"`` checks images at load up to this many selected rows; above it, extraction
#: finds bad images as it reads them (a first load of 50,000 decoded JPEGs takes about 30 s).
EAGER_CHECK_ROWS = 50_000
#: The ``check=`` levels of :func:`load_probe`.
LOAD_CHECKS = ("auto", *CHECKS, "none")

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


# ----------------------------------------------------------------------------- validation


def _bad(entry: Entry, reason: str) -> str:
    return f"bad probe row {entry.id!r} ({entry.where}): {reason}"


def _cheap_problem(entry: Entry, class_names: tuple[str, ...] | None) -> str | None:
    if entry.problem:
        return entry.problem
    label_problem = check_label(entry.label, class_names)
    if label_problem:
        return label_problem
    if not entry.captions:
        return "no caption"
    for k, caption in enumerate(entry.captions):
        if not caption.strip():
            return f"empty caption (caption {k} of {len(entry.captions)})"
    return None


def _checked(raw: RawProbe, image: object) -> bool:
    """Whether load checks this row's image: a file, or an image inside a shard or table
    (rendered rows are not checked)."""
    return raw.needs_checks and (not callable(image) or is_member(image))


def _check_rows(images: Sequence[Any], level: str, progress: bool) -> list[FileCheck]:
    """Check image files and images inside containers, in order."""
    inside = [i for i, im in enumerate(images) if is_member(im)]
    if not inside:
        return check_images(images, level=level, progress=progress)
    out: list[FileCheck | None] = [None] * len(images)
    files = [i for i, im in enumerate(images) if not is_member(im)]
    for i, res in zip(files, check_images([images[i] for i in files], level=level), strict=True):
        out[i] = res
    members = check_members([images[i] for i in inside], level=level, progress=progress)
    for i, res in zip(inside, members, strict=True):
        out[i] = res
    return [r for r in out if r is not None]


def _validate(
    raw: RawProbe,
    name: str,
    *,
    n: int | None,
    seed: int,
    skip_bad: bool,
    check: str,
    progress: bool,
) -> ProbeSet:
    """Validate candidate rows and build the ProbeSet.

    Cheap checks (parse problems, label range, empty captions, duplicate ids) run on every row
    first, in file order. Then the selected rows (all, or the first ``n`` in seeded-hash order) get
    their image files checked; with ``skip_bad`` a failed image is replaced by the next row in hash
    order, so the first ``n`` good rows stay a prefix of the first ``n + k``. Without ``skip_bad``
    the first bad row (in file order) raises.
    """
    entries = raw.entries
    bad: list[tuple[int, str]] = []  # (position in entries, message)
    first_seen: dict[str, Entry] = {}
    good: list[int] = []
    for i, e in enumerate(entries):
        problem = _cheap_problem(e, raw.class_names)
        if problem is None and e.id in first_seen:
            problem = f"duplicate id {e.id!r} (first at {first_seen[e.id].where})"
        if problem is None:
            first_seen[e.id] = e
            good.append(i)
        else:
            bad.append((i, problem))
    if bad and not skip_bad:
        i, problem = bad[0]
        raise AlignkitError(_bad(entries[i], problem) + "; pass skip_bad=True to drop bad rows")

    order = (
        good if n is None else [good[j] for j in hash_order([entries[i].id for i in good], seed)]
    )
    want = len(order) if n is None else n
    level = check if check != "auto" else "decode" if want <= EAGER_CHECK_ROWS else "none"
    if level == "none" and check == "auto":
        log.info(
            "probe %s: %d rows, more than %d: images are checked when extraction reads them "
            "(check='decode' checks them now)",
            name,
            want,
            EAGER_CHECK_ROWS,
        )
    if n is not None and n > len(order):
        raise AlignkitError(
            f"n={n} is more rows than probe {name} has: got {len(order)} rows"
            + (f" after dropping {len(bad)} bad rows" if bad else "")
        )
    selected: list[int] = []
    digests: dict[int, str] = {}
    pos = 0
    while len(selected) < want and pos < len(order):
        chunk = order[pos : pos + (want - len(selected))]
        pos += len(chunk)
        file_rows = [i for i in chunk if level != "none" and _checked(raw, entries[i].image)]
        if file_rows:
            results = _check_rows([entries[i].image for i in file_rows], level, progress)
            failed = []
            for i, res in zip(file_rows, results, strict=True):
                if res.error is not None:
                    failed.append((i, res.error))
                else:
                    digests[i] = res.digest
            if failed and not skip_bad:
                i, problem = min(failed)  # the first in file order among this batch
                raise AlignkitError(
                    _bad(entries[i], problem) + "; pass skip_bad=True to drop bad rows"
                )
            bad.extend(failed)
            failed_set = {i for i, _ in failed}
            selected.extend(i for i in chunk if i not in failed_set)
        else:
            selected.extend(chunk)
    if n is not None and len(selected) < want:
        raise AlignkitError(
            f"n={n} is more rows than probe {name} has: got {len(selected)} good rows after "
            f"dropping {len(bad)} bad rows"
        )
    dropped = tuple({"id": entries[i].id, "where": entries[i].where, "reason": r} for i, r in bad)
    if dropped:
        log.warning(
            "probe %s: dropped %d bad row(s) (skip_bad=True); first: %s",
            name,
            len(dropped),
            _bad(entries[bad[0][0]], bad[0][1]),
        )
    rows = tuple(
        ProbeRow(
            id=entries[i].id,
            image=entries[i].image,
            captions=tuple(entries[i].captions),
            label=entries[i].label,
            attributes=entries[i].attributes,
            digest=entries[i].digest or digests.get(i, ""),
        )
        for i in selected
    )
    available = len(order) if n is not None else None  # good rows the n were drawn from
    return ProbeSet(
        name, rows, raw.class_names, dropped, raw.content_key, raw.root, raw.templates, available
    )


def _filter_split(raw: RawProbe, name: str, split: str) -> RawProbe:
    available = sorted({str(e.attributes["split"]) for e in raw.entries if "split" in e.attributes})
    if not available:
        raise AlignkitError(
            f"probe {name} has no splits (no 'split' column or split files): got split={split!r}"
        )
    if split not in available:
        raise unknown_key(f"split of probe {name}", split, available)
    kept = [e for e in raw.entries if str(e.attributes.get("split")) == split]
    return RawProbe(
        raw.name, raw.root, kept, raw.class_names, raw.content_key, raw.needs_checks, raw.templates
    )


def _loader_options(loader: Callable[..., RawProbe], skip: Sequence[str]) -> set[str]:
    params = list(inspect.signature(loader).parameters.values())[1:]
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in skip}


# ----------------------------------------------------------------------------- public


def _without_gc(fn: Callable[..., ProbeSet]) -> Callable[..., ProbeSet]:
    """Run ``fn`` with the cyclic garbage collector paused. A load of 10^6 rows makes about
    10^7 objects that all live on; the collector would walk them again and again as they are
    made (60% of a 1M-row load's CPU time, measured in benchmarks/probe_load.py), and none of
    them needs collecting before the load returns."""

    @functools.wraps(fn)
    def paused(*args: Any, **kwargs: Any) -> ProbeSet:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return paused


@_without_gc
def load_probe(
    spec: str | Path,
    *,
    n: int | None = None,
    split: str | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    data_dir: Path | None = None,
    check: str = "auto",
    progress: bool = True,
    **options: Any,
) -> ProbeSet:
    """Load a probe set: a named probe (:func:`list_probes`) or a path to a manifest, a COCO
    captions JSON, a Flickr token file, a class-folder set, or a folder holding one.

    Args:
        spec: ``"synthetic"``, ``"flickr8k:test"``, ``"imagenet-samples"``, ``"coco-val2017"``,
            or a path; ``"PATH:SPLIT"`` is the same as ``split="SPLIT"`` on the path.
        n: a seeded, stable subsample of ``n`` rows, in seeded-hash order of the row ids: the
            first 500 rows of ``n=1000`` are the ``n=500`` rows. For ``synthetic``, the number of
            scenes (default 1,000); row ``i`` depends only on ``(seed, i)``.
        split: keep the rows of one split (``train``/``dev``/``test`` for Flickr8k, or a manifest's
            ``split`` column); ``"flickr8k:test"`` is the same as ``split="test"``.
        seed: seeds the subsample (and the synthetic scenes).
        skip_bad: drop bad rows (missing/unreadable image, empty caption, duplicate id, label out
            of range) instead of failing; they are recorded in ``ProbeSet.dropped``, logged, and
            change the fingerprint, so every modality's features describe the same rows.
        data_dir: where named probes live (default ``$ALIGNKIT_DATA_DIR``).
        check: ``"decode"`` fully decodes every selected image at load (cached per file by size
            and mtime); ``"read"`` only reads and hashes the bytes; ``"none"`` reads no image
            at load (extraction reports a bad image with its row); ``"auto"`` is ``"decode"``
            up to :data:`EAGER_CHECK_ROWS` selected rows and ``"none"`` above.
        progress: show progress bars (image checks over 200 files, downloads).
        **options: format options: ``images`` (image folder), ``class_names``, ``templates``,
            ``allow_duplicate_class_names`` (else two labels with one name are an error),
            ``id_column``, ``format``; for ``coco-val2017``: ``download_missing``, ``images_zip``,
            ``annotations_zip``, ``keep_archives``.

    Returns:
        A :class:`ProbeSet` whose rows all passed validation.
    """
    if check not in LOAD_CHECKS:
        raise unknown_key("image check", check, LOAD_CHECKS)
    if n is not None and (not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1):
        raise AlignkitError(f"n must be a positive number of rows or None: got {n!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    name = str(spec)
    base, _, spec_split = name.partition(":")
    named = NAMED_PROBES.get(base) if isinstance(spec, str) else None
    path, _, path_split = name.rpartition(":")  # "rows.jsonl:train": a manifest's split column
    if named is None and path and not Path(spec).expanduser().exists():
        if Path(path).expanduser().exists() and split in (None, path_split):
            spec, split = path, path_split
    container = read_container(spec, options) if named is None else None  # shards, HF datasets
    if container is not None:
        raw, name = container, container.name
    elif named is None and not Path(spec).expanduser().exists():
        raise AlignkitError(
            f"probe {name!r} is neither a named probe ({', '.join(list_probes())}) "
            "nor an existing path"
        )
    if named is not None:
        if spec_split:
            if split is not None and split != spec_split:
                raise AlignkitError(
                    f"probe {name!r} names split {spec_split!r} but split={split!r} was passed"
                )
            split = spec_split
        accepted = _loader_options(named.loader, ("n", "seed", "progress"))
        extra = sorted(set(options) - accepted)
        if extra:
            raise AlignkitError(
                f"option(s) {', '.join(extra)} do not apply to probe {base!r}; expected: "
                f"{', '.join(sorted(accepted)) or '(none)'}"
            )
        kwargs = dict(options)
        params = inspect.signature(named.loader).parameters
        if "progress" in params:
            kwargs["progress"] = progress
        if base == "synthetic":
            if split is not None:
                raise AlignkitError(f"the synthetic probe has no splits: got split={split!r}")
            raw = _load_synthetic(root, n=n, seed=seed)
            return _validate(
                raw,
                "synthetic" if n is None else f"synthetic[n={n},seed={seed}]",
                n=None,
                seed=seed,
                skip_bad=skip_bad,
                check=check,
                progress=progress,
            )
        raw = named.loader(root, **kwargs)
        name = base if split is None else f"{base}:{split}"
    elif container is None:
        raw = read_path(Path(spec), **options)
    if split is not None:
        raw = _filter_split(raw, name, split)
    if n is not None:
        n = int(n)
        name = f"{name}[n={n},seed={seed}]"
    return _validate(raw, name, n=n, seed=seed, skip_bad=skip_bad, check=check, progress=progress)
