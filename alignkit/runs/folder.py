"""Run folders: where a command writes its results, all at once or not at all.

Every command that writes results (``rank-encoders``, ``train``, ``evaluate``) writes one folder
with the same rules::

    from alignkit.runs import RunFolder, write_run_json

    run = RunFolder(out, overwrite=False)     # checks now: before any expensive work
    ...                                       # the work
    with run as tmp:                          # a hidden temporary sibling of `out`
        table.to_csv(tmp / "scores.csv")
        write_run_json(tmp, {"command": argv, "config": cfg.to_dict()})
    # the block succeeded: tmp has been swapped in as `out` (an earlier run there is replaced);
    # the block raised: tmp is deleted and `out` is untouched.

Rules (:meth:`RunFolder.check`): a new or empty folder is fine; a folder holding an earlier run
(a ``run.json``) is replaced only with ``overwrite=True``; a non-empty folder without ``run.json``
is never replaced (it is not ours); ``out`` must not be a file, and its parent must be writable.
``run.json`` records the command, the configuration, package versions and the time.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from alignkit._files import atomic_write_text, temp_sibling
from alignkit.errors import AlignkitError

RUN_FILE = "run.json"

#: the packages whose versions every run.json records (those not installed are left out)
VERSION_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "transformers",
    "sentence-transformers",
    "timm",
    "onnxruntime",
    "matplotlib",
)


class OutputExistsError(AlignkitError):
    """``out`` holds an earlier run's results and ``overwrite`` was not given.

    The CLI words the fix as its own flag (``--overwrite``); the library as the argument.
    """


class RunFolder:
    """A results folder written atomically: a temporary sibling, swapped in on success.

    Args:
        out: the folder to write (created with its parents).
        overwrite: replace a folder that holds an earlier run (one with a ``run.json``).

    Raises (at construction, so callers fail before their work):
        OutputExistsError: ``out`` holds a run and ``overwrite`` is false.
        AlignkitError: ``out`` is a file, a non-empty folder that is not a run folder, or its
            parent cannot be written.

    ``with run as tmp:`` yields the temporary folder; on success it becomes ``out`` (the old
    folder is removed only after the swap). If the swap itself fails, the error names the
    temporary folder, which then still holds the finished results.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False) -> None:
        self.out = Path(out).absolute()
        self.overwrite = overwrite
        self.check()
        self._tmp: Path | None = None

    def check(self) -> None:
        """Refuse an unusable ``out`` (see the class docstring). Cheap; safe to call again."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise AlignkitError(f"the output folder {out} is a file; give a folder path")
        if out.is_dir() and any(out.iterdir()):
            if not (out / RUN_FILE).is_file():
                raise AlignkitError(
                    f"the output folder {out} is not empty and holds no {RUN_FILE}, so it is not "
                    "an alignkit run folder; choose an empty or new folder"
                )
            if not self.overwrite:
                raise OutputExistsError(
                    f"the output folder {out} already holds a run's results; "
                    "pass overwrite=True to replace them"
                )
        parent = _existing_ancestor(out.parent)
        if not parent.is_dir():
            raise AlignkitError(
                f"cannot create the output folder {out}: {parent} is a file; choose another folder"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise AlignkitError(
                f"cannot write the output folder {out}: {parent} is not writable; "
                "choose another folder"
            )

    def __enter__(self) -> Path:
        self.check()  # the world may have changed while the work ran
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.out)
        self._tmp.mkdir()
        return self._tmp

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tmp, self._tmp = self._tmp, None
        assert tmp is not None
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = temp_sibling(self.out, "old")
        try:
            if self.out.exists():
                self.out.rename(old)
            tmp.rename(self.out)
        except OSError as err:
            if old.exists() and not self.out.exists():
                old.rename(self.out)
            raise AlignkitError(
                f"could not move the results into {self.out} ({err.strerror or err}); "
                f"they are complete in {tmp}"
            ) from err
        shutil.rmtree(old, ignore_errors=True)


def check_writable(folder: str | Path, what: str = "the results") -> None:
    """Refuse an output folder that cannot be written, before any work: a file in the way, no
    permission, an immutable (``chattr +i``) or read-only folder, a full disk. Creates and
    removes a small file in ``folder`` or its nearest existing ancestor (``os.access`` alone
    says yes to root on an immutable folder).

    Raises:
        AlignkitError: one line naming the folder and the reason.
    """
    folder = Path(folder)
    target = _existing_ancestor(folder)
    if not target.is_dir():
        raise AlignkitError(f"cannot write {what} into {folder}: {target} is a file; give a folder")
    probe = target / f".alignkit-write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"\0" * 4096)
    except OSError as exc:
        raise AlignkitError(
            f"cannot write {what} into {folder}: {exc.strerror or exc} ({target}); choose "
            "another folder, or free space / fix its permissions"
        ) from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def versions(packages: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """``{"alignkit": ..., "python": ..., "platform": ..., package: version}`` of this process."""
    import importlib.metadata as im

    from alignkit import __version__

    out = {
        "alignkit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for pkg in packages:
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            pass
    return out


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers, NaN/inf as ``None``, tuples as lists and
    anything else unknown as its ``str`` (so ``json.dumps`` never fails on a run's metadata)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalar
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    return str(obj)


def write_run_json(folder: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``folder/run.json``: ``metadata`` plus ``versions`` and ``created`` when absent.

    Conventional keys: ``command`` (argv list), ``config`` (the config's ``to_dict()``),
    ``files`` (what the folder holds). Returns the file's path.
    """
    meta = {
        **metadata,
        "versions": metadata.get("versions") or versions(),
        "created": metadata.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(folder) / RUN_FILE
    atomic_write_text(path, json.dumps(jsonable(meta), indent=2) + "\n")
    return path


def read_run_json(folder: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder; an ``AlignkitError`` when there is none."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise AlignkitError(f"{folder} is not an alignkit run folder: it has no {RUN_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))


def default_run_dir(kind: str, now: float | None = None, root: str | Path = "runs") -> Path:
    """``runs/<kind>-<YYYYmmdd-HHMMSS>``: a new folder per run, so nothing is ever replaced.

    ``kind`` is made filename-safe (``"flickr8k:test"`` -> ``flickr8k-test``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path(root) / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', kind).strip('-')}-{stamp}"


__all__ = [
    "RUN_FILE",
    "OutputExistsError",
    "RunFolder",
    "check_writable",
    "default_run_dir",
    "jsonable",
    "read_run_json",
    "versions",
    "write_run_json",
]
