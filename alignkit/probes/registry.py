"""``load_probe``: a probe spec (a named probe of :mod:`alignkit.probes.named`, a path, shards or
an HF dataset) to a validated :class:`ProbeSet`."""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignkit._paths import data_dir as default_data_dir
from alignkit.errors import AlignkitError, unknown_key
from alignkit.probes.base import ProbeRow, ProbeSet, hash_order
from alignkit.probes.checks import CHECKS, FileCheck, check_images
from alignkit.probes.classnames import check_label
from alignkit.probes.containers import read_container
from alignkit.probes.formats import read_path
from alignkit.probes.members import check_members, is_member
from alignkit.probes.named import NAMED_PROBES, _load_synthetic, list_probes
from alignkit.probes.raw import Entry, RawProbe

log = logging.getLogger("alignkit.probes")

#: ``check="auto"`` checks images at load up to this many selected rows; above it, extraction
#: finds bad images as it reads them (a first load of 50,000 decoded JPEGs takes about 30 s).
EAGER_CHECK_ROWS = 50_000
#: The ``check=`` levels of :func:`load_probe`.
LOAD_CHECKS = ("auto", *CHECKS, "none")

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


def _cheap_checks(raw: RawProbe) -> tuple[list[int], list[tuple[int, str]]]:
    """The positions of the entries that pass the cheap checks, and (position, reason) of those
    that do not, in file order; a repeated id is bad after its first good row."""
    first_seen: dict[str, str] = {}  # id -> where its first good row is
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, e in enumerate(raw.entries):
        problem = _cheap_problem(e, raw.class_names)
        if problem is None and e.id in first_seen:
            problem = f"duplicate id {e.id!r} (first at {first_seen[e.id]})"
        if problem is None:
            first_seen[e.id] = e.where
            good.append(i)
        else:
            bad.append((i, problem))
    return good, bad


def _take_rows(
    entries: list[Entry], selected: Sequence[int], digests: dict[int, str]
) -> tuple[ProbeRow, ...]:
    """The rows of the candidates at ``selected``, in that order. Each candidate is dropped from
    ``entries`` once its row is made: a million candidates and their million rows are never
    held together (a third of a 10^6-row manifest load's peak memory)."""
    rows = []
    for i in selected:
        e = entries[i]
        entries[i] = None  # type: ignore[call-overload]  # consumed: see the docstring
        rows.append(
            ProbeRow(
                id=e.id,
                image=e.image,
                captions=tuple(e.captions),
                label=e.label,
                attributes=e.attributes,
                digest=e.digest or digests.get(i, ""),
            )
        )
    return tuple(rows)


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
    the first bad row (in file order) raises. ``raw.entries`` is consumed: the selected
    candidates are let go of as their rows are made.
    """
    entries = raw.entries
    good, bad = _cheap_checks(raw)  # bad: (position in entries, message)
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
            f"n={n} is more rows than probe {name.split('[n=')[0]} has: got {len(order)} rows"
            + (f" after dropping {len(bad)} bad rows" if bad else "")
            + "; ask for fewer rows (n), or leave it out for every row"
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
            f"n={n} is more rows than probe {name.split('[n=')[0]} has: got {len(selected)} good "
            f"rows after dropping {len(bad)} bad rows; ask for fewer rows (n), or leave it out "
            "for every row"
        )
    dropped = tuple({"id": entries[i].id, "where": entries[i].where, "reason": r} for i, r in bad)
    if dropped:
        log.warning(
            "probe %s: dropped %d bad row(s) (skip_bad=True); first: %s",
            name,
            len(dropped),
            _bad(entries[bad[0][0]], bad[0][1]),
        )
    rows = _take_rows(entries, selected, digests)
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
        progress: show progress bars (image checks over 200 files, downloads); under torchrun
            on rank 0 only (``RANK``), as extraction does.
        **options: format options: ``images`` (image folder), ``class_names``, ``templates``,
            ``allow_duplicate_class_names`` (else two labels with one name are an error),
            ``id_column``, ``format``; for ``coco-val2017``: ``download_missing``, ``images_zip``,
            ``annotations_zip``, ``keep_archives``.

    Returns:
        A :class:`ProbeSet` whose rows all passed validation.
    """
    if check not in LOAD_CHECKS:
        raise unknown_key("image check", check, LOAD_CHECKS)
    progress = progress and os.environ.get("RANK", "0") == "0"  # under torchrun: rank 0's bars
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
    if container is not None:  # "wds_flickr30k/:test" keeps its split in the name, as a manifest's
        raw, name = container, container.name + ("" if str(spec) == name else f":{split}")
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
