"""Resumable, verified downloads for named probes (``coco-val2017``).

A file is fetched into ``<dest>.part``; an interrupted transfer (a dropped connection, a killed
process) resumes from the bytes already there with an HTTP ``Range`` request, the finished file is
checked against its expected size and checksum, and only then renamed into place (atomic), so a
file at ``dest`` is always complete and verified. A checksum mismatch deletes the partial file and
fails with one line naming the file, the expected and the actual value.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from alignkit._files import file_hash
from alignkit._files import file_lock as file_lock  # re-exported for probes.registry
from alignkit.errors import AlignkitError

log = logging.getLogger("alignkit.probes")

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: ``url``, its size in bytes (``None`` = unknown) and a checksum
    ``"<hashlib algorithm>:<hex>"`` (``"sha256:..."``, ``"sha1:..."``; ``None`` = unchecked)."""

    url: str
    size: int | None = None
    checksum: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


def file_checksum(path: Path, algorithm: str) -> str:
    return file_hash(path, algorithm)


def _fetch_once(remote: RemoteFile, part: Path, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "alignkit"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # the server ignored Range: start over
            log.info("server does not resume %s; downloading it again from the start", remote.url)
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else remote.size
        with (
            part.open("ab" if have else "wb") as out,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=remote.filename,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    expected = total if total is not None else got
    if got < expected:
        raise ConnectionError(f"connection closed after {got} of {expected} bytes")


def download(
    remote: RemoteFile,
    dest: Path,
    *,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``remote`` to ``dest`` (resuming ``dest.part``), verify size and checksum, then
    rename into place. Returns ``dest``; a verified ``dest`` that already exists is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(remote, part, progress, timeout)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # Range past the end: the part is complete
                break
            raise AlignkitError(
                f"download of {remote.url} failed: HTTP {exc.code} {exc.reason}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError, resets, IncompleteRead
            last = exc
            have = part.stat().st_size if part.exists() else 0
            log.warning(
                "download of %s interrupted at %d bytes (%s); resuming (%d/%d)",
                remote.url,
                have,
                exc,
                attempt + 1,
                retries,
            )
            time.sleep(min(2.0**attempt * 0.1, 5.0))
    else:
        raise AlignkitError(
            f"download of {remote.url} failed after {retries + 1} tries: {last}; "
            "run again to resume "
            f"from {part}"
        )
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        if size > remote.size:
            part.unlink()
        raise AlignkitError(
            f"download of {remote.url} has the wrong size: expected {remote.size} bytes, got {size}"
            + (
                " (deleted; run again)"
                if size > remote.size
                else f"; run again to resume from {part}"
            )
        )
    if remote.checksum:
        algorithm, _, expected = remote.checksum.partition(":")
        actual = file_checksum(part, algorithm)
        if actual.lower() != expected.lower():
            part.unlink()
            raise AlignkitError(
                f"checksum mismatch for {remote.url}: expected {algorithm} {expected}, "
                f"got {actual} "
                f"(the partial file was deleted; run again to download it afresh)"
            )
    os.replace(part, dest)
    return dest
