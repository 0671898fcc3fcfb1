"""webdataset tar shards as probes, read where they lie (img2dataset's and CLIP_benchmark's layout).

A shard is an uncompressed tar whose members are grouped into samples by their key, the member
name up to the first dot of its base name (webdataset's rule, ``webdataset.tariterators``):
``000031234.jpg``, ``000031234.txt``, ``000031234.json`` are one sample with key ``000031234``.
A probe row is one sample:

- ``id``: the key;
- image: the first member with an image extension (``jpg``, ``jpeg``, ``png``, ``webp``, ...),
  read lazily (:class:`ShardImage`: offset and size in the tar, found by :mod:`tarfile`);
- captions: the ``.txt`` member, one caption a line (img2dataset writes one; CLIP_benchmark's
  retrieval sets one per line);
- label: the ``.cls`` member (an integer), indexing the class names.

Shards are given as a webdataset pattern (``shards/{00000..00099}.tar``, several joined by
``::``), a folder of ``.tar`` files, or a list of paths. Reading a shard scans its tar headers
and reads the small text members; images stay in the shard until a worker asks for them
(random access by offset, so any subsample or resume point reads exactly its own rows).

Why not the ``webdataset`` package's reader: it streams a shard from start to end (no random
access, so no exact resume or seeded subsample without reading everything before it), and
importing it imports torch; ``wids``, its random-access variant, writes an index file beside
each shard (read-only data fails) and needs sample counts up front. The tar headers are read by
:mod:`tarfile`; patterns are expanded by ``braceexpand``, the package webdataset expands them
with, and keys follow webdataset's rule (:func:`split_key`), so a pattern and a key mean what
they mean there (docs/probes.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from alignkit._files import atomic_write_text
from alignkit._paths import cache_dir
from alignkit.errors import AlignkitError
from alignkit.probes.formats import (
    DEFAULT_TEMPLATES,
    Entry,
    RawProbe,
    resolve_class_names,
)
from alignkit.probes.members import decode_member

#: Member extensions read as the sample's image, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_TEXT_EXTENSIONS = ("txt", "cls")

log = logging.getLogger("alignkit.probes")


@dataclass(frozen=True, slots=True)  # one a row, kept in the probe: no __dict__ each
class ShardImage:
    """One image member of a tar shard: ``size`` bytes at ``offset`` of ``shard``. Picklable, so
    rows travel to DataLoader workers; each call opens the shard, so workers share nothing."""

    shard: str
    offset: int
    size: int
    key: str

    def read_bytes(self) -> bytes:
        """The member's bytes, exactly as stored.

        Raises:
            AlignkitError: the shard is shorter than its header says (truncated) or unreadable.
        """
        try:
            with open(self.shard, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(self.size)
        except OSError as exc:
            raise AlignkitError(
                f"cannot read shard {self.shard} (key {self.key}): {exc.strerror or exc}"
            ) from None
        if len(data) != self.size:
            raise AlignkitError(
                f"shard {self.shard} is truncated: key {self.key} needs {self.size} bytes at "
                f"offset {self.offset}, got {len(data)}; re-download or re-write the shard"
            )
        return data

    def __call__(self) -> Image.Image:
        return decode_member(self)

    def __str__(self) -> str:
        return f"{self.shard} key {self.key}"


@dataclass(slots=True)
class Sample:
    """What one shard holds for one key (before validation). ``problem`` is a reason it is bad."""

    key: str
    shard: str
    image: ShardImage | None = None
    captions: list[str] | None = None
    label: int | None = None
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"shard {self.shard} key {self.key}"


# ----------------------------------------------------------------------------- shard lists


def _expand(pattern: str) -> list[str]:
    """webdataset's pattern syntax: ``::`` joins lists, braces expand (``{000..099}``)."""
    from braceexpand import braceexpand

    return [name for part in pattern.split("::") if part for name in braceexpand(part)]


def split_key(name: str) -> tuple[str | None, str]:
    """(key, extension) of a member name by webdataset's rule: the key runs to the first dot of
    the base name (``a/b/000123.seg.png`` -> ``a/b/000123``, ``seg.png``); no dot -> no key."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{folder}/{stem}" if folder else stem), ext


def shard_paths(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The shard files a spec names: a brace pattern (``shards/{00000..00099}.tar``; several
    joined by ``::``), a folder (its ``*.tar`` files, sorted), a file, or a list of those.

    Raises:
        AlignkitError: a pattern or folder that names no existing ``.tar`` file (listing what is
            missing), or a compressed shard (``.tar.gz``: no random access).
    """
    if isinstance(spec, (list, tuple)):
        return [p for item in spec for p in shard_paths(item)]
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
        if not found:
            raise AlignkitError(f"no .tar shards in folder {path}")
        return found
    names = _expand(text) if ("{" in text or "::" in text) else [text]
    paths = [Path(n).expanduser() for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        head = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise AlignkitError(
            f"shard pattern {text!r} names {len(paths)} file(s) and {len(missing)} do not exist "
            f"({head}); check the pattern's range and folder"
        )
    for p in paths:
        if p.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            raise AlignkitError(
                f"shard {p} is compressed: alignkit reads images by offset and needs plain .tar "
                f"shards (decompress it: gunzip -k)"
            )
    return paths


def is_shard_spec(spec: object) -> bool:
    """Whether a probe spec names webdataset shards: a ``.tar`` path or pattern, a list of them,
    or a folder holding ``.tar`` files and no other probe."""
    if isinstance(spec, (list, tuple)):
        return bool(spec) and all(is_shard_spec(s) for s in spec)
    if not isinstance(spec, (str, os.PathLike)):
        return False
    text = os.fspath(spec)
    return text.endswith(".tar") or ("::" in text and ".tar" in text)


# ----------------------------------------------------------------------------- reading


def _decode_text(data: bytes, sample: Sample, ext: str) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        sample.problem = sample.problem or (
            f".{ext} is not UTF-8 text (byte 0x{data[exc.start]:02X} at offset {exc.start}); "
            "save captions as UTF-8"
        )
        return None


def _take_text(sample: Sample, ext: str, data: bytes) -> None:
    text = _decode_text(data, sample, ext)
    if text is None:
        return
    if ext == "txt":
        # one caption a line; CLIP_benchmark writes a newline inside a caption as a literal \n
        sample.captions = [line.strip() for line in text.splitlines() if line.strip()]
        return
    value = text.strip()
    try:
        sample.label = int(value)
    except ValueError:
        sample.problem = sample.problem or f".cls {value[:40]!r} is not an integer class index"


def _check_end(fh: Any, offset: int, size: int, shard: str, last_key: str) -> None:
    """A tar ends with zero blocks after its last member; :mod:`tarfile` takes a header cut
    short for the end, so a shard cut between members is caught here."""
    fh.seek(offset)
    tail = fh.read(512)
    if len(tail) < 512 or tail.strip(b"\0"):
        raise AlignkitError(
            f"shard {shard} is truncated or damaged after key {last_key} (no end-of-archive "
            f"block at byte {offset} of {size}); re-download or re-write the shard"
        )


def _scan_shard(path: Path) -> list[Sample]:
    """The samples of one shard, in the order their first member appears, read from its tar
    headers and text members.

    Problems of one sample (no image, non-UTF-8 text, a ``.cls`` that is not an integer) are set
    on that sample; a shard that is not a tar, or is truncated, raises.

    Raises:
        AlignkitError: not a tar file, or truncated (naming the shard and the last key read).
    """
    shard = str(path.absolute())
    size = path.stat().st_size
    samples: dict[str, Sample] = {}
    last_key = "(none)"
    try:
        with open(path, "rb") as data_fh, tarfile.open(path, "r:") as tf:
            while True:
                try:
                    member = tf.next()
                except tarfile.ReadError as exc:
                    raise AlignkitError(
                        f"shard {shard} is truncated or damaged after key {last_key} ({exc}); "
                        "re-download or re-write the shard"
                    ) from None
                if member is None:
                    _check_end(data_fh, tf.offset, size, shard, last_key)
                    break
                if not member.isfile():
                    continue
                key, ext = split_key(member.name)
                if key is None:
                    continue
                ext = ext.lower()
                if member.offset_data + member.size > size:
                    raise AlignkitError(
                        f"shard {shard} is truncated: key {key} ({member.name}) ends past the "
                        f"end of the file; re-download or re-write the shard"
                    )
                last_key = key
                sample = samples.get(key)
                if sample is None:
                    sample = samples[key] = Sample(key, shard)
                if ext in IMAGE_EXTENSIONS and sample.image is None:
                    sample.image = ShardImage(shard, member.offset_data, member.size, key)
                elif ext in _TEXT_EXTENSIONS:
                    data_fh.seek(member.offset_data)
                    _take_text(sample, ext, data_fh.read(member.size))
    except tarfile.ReadError as exc:
        raise AlignkitError(
            f"shard {shard} is not a tar file ({exc}); expected webdataset .tar shards"
        ) from None
    except OSError as exc:
        raise AlignkitError(f"cannot read shard {shard}: {exc.strerror or exc}") from None
    for sample in samples.values():
        if sample.image is None and sample.problem is None:
            sample.problem = f"no image member (.{', .'.join(IMAGE_EXTENSIONS[:4])})"
    return list(samples.values())


def samples_to_entries(
    samples: Iterable[Sample],
    class_names: tuple[str, ...] | None,
    templates: Sequence[str],
    attributes: dict[str, str] | None = None,
) -> list[Entry]:
    """Candidate probe rows of shard samples: captions from ``.txt``, else prompt ``templates``
    of the ``.cls`` label's class name (as a labelled manifest without captions gets)."""
    entries = []
    for s in samples:
        captions = s.captions
        problem = s.problem
        if captions is None:
            if s.label is not None and class_names is not None:
                in_range = 0 <= s.label < len(class_names)  # out of range: check_label says so
                captions = [t.format(class_names[s.label]) for t in templates] if in_range else []
            elif problem is None:
                problem = "no caption (.txt member)" + (
                    "" if s.label is None else " and no class names for its .cls label"
                )
        entries.append(
            Entry(
                id=s.key,
                image=s.image,
                captions=list(captions or []),
                where=s.where,
                label=s.label,
                attributes=dict(attributes or {}),
                problem=problem,
            )
        )
    return entries


def read_shards(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    class_names: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> RawProbe:
    """webdataset shards (a pattern, a folder of ``.tar`` files, or a list) as candidate probe
    rows, in shard order then sample order. ``class_names`` name the ``.cls`` labels (a list, a
    text file, ``"imagenet"``; else a ``classnames.txt`` beside the shards); samples without a
    ``.txt`` get ``templates`` captions of their class name.

    Raises:
        AlignkitError: a pattern matching nothing, a shard that is not a tar or is truncated.
    """
    paths = shard_paths(spec)
    folder = paths[0].parent
    names = resolve_class_names(class_names, folder)
    samples = read_shard_list(paths)
    name = (
        os.fspath(spec)
        if not isinstance(spec, (list, tuple))
        else f"{paths[0]} (+{len(paths) - 1} shards)"
    )
    entries = samples_to_entries(_drain(samples), names, templates)
    return RawProbe(name, folder.absolute(), entries, names)


def _drain(items: list[Sample]) -> Iterator[Sample]:
    """The items of ``items`` in order, each let go of by the list as it is handed out: a
    million samples and their million candidate rows are never held together."""
    for i in range(len(items)):
        item, items[i] = items[i], None  # type: ignore[call-overload]
        yield item


# ----------------------------------------------------------------------------- shard index

_INDEX_VERSION = 1
#: Unindexed shards scanned in parallel processes from this many on (a fork costs more than a
#: small shard's scan).
PARALLEL_SCAN_MIN = 4


def _index_file(shard: str) -> Path:
    return cache_dir() / "shard-index" / f"{hashlib.sha256(shard.encode()).hexdigest()[:24]}.json"


def _record(s: Sample) -> list[Any]:
    where = [s.image.offset, s.image.size] if s.image is not None else [None, None]
    return [s.key, *where, s.captions, s.label, s.problem]


def _sample(shard: str, r: list[Any]) -> Sample:
    key, offset, size, captions, label, problem = r
    image = ShardImage(shard, offset, size, key) if offset is not None else None
    return Sample(key, shard, image, captions, label, problem)


def _stamp(path: Path) -> tuple[str, list[int]]:
    shard = str(path.absolute())
    try:
        st = path.stat()
    except OSError as exc:
        raise AlignkitError(f"cannot read shard {shard}: {exc.strerror or exc}") from None
    return shard, [st.st_size, st.st_mtime_ns]


def _from_index(path: Path) -> list[Sample] | None:
    """The shard's samples from its index in the cache, or ``None`` when there is none for the
    shard's present size and mtime."""
    shard, stamp = _stamp(path)
    try:
        blob = json.loads(_index_file(shard).read_text("utf-8"))
        if blob["version"] == _INDEX_VERSION and blob["shard"] == shard and blob["stamp"] == stamp:
            return [_sample(shard, r) for r in blob["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def read_shard(path: Path) -> list[Sample]:
    """The samples of one shard (see :func:`_scan_shard`), from the shard index in the cache
    when the shard's size and mtime match it; else scanned, and the index written (atomically;
    a read-only cache only costs the scan next time). A scan reads every tar header, about
    30 us a member; the index reads back 10,000 samples in a few milliseconds.

    Raises:
        AlignkitError: not a tar file, or truncated (naming the shard and the last key read).
    """
    found = _from_index(path)
    if found is not None:
        return found
    shard, stamp = _stamp(path)
    samples = _scan_shard(path)
    index = _index_file(shard)
    blob = {"version": _INDEX_VERSION, "shard": shard, "stamp": stamp}
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(index, json.dumps({**blob, "samples": [_record(x) for x in samples]}))
    except OSError as exc:
        log.debug("could not save shard index %s: %s", index, exc)
    return samples


def read_shard_list(paths: Sequence[Path]) -> list[Sample]:
    """The samples of every shard, in order. Shards without an index are scanned, in parallel
    processes (one per core) when there are :data:`PARALLEL_SCAN_MIN` or more of them."""
    found = [_from_index(p) for p in paths]
    todo = [i for i, f in enumerate(found) if f is None]
    workers = min(len(todo), os.cpu_count() or 1)
    if len(todo) >= PARALLEL_SCAN_MIN and workers > 1:
        with ProcessPoolExecutor(workers, mp_context=_fork()) as pool:
            for i, samples in zip(
                todo, pool.map(read_shard, [paths[i] for i in todo]), strict=True
            ):
                found[i] = samples
    else:
        for i in todo:
            found[i] = read_shard(paths[i])
    return [s for samples in found if samples is not None for s in samples]


def _fork() -> Any:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)
