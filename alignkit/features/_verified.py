"""Which cache files this process has hashed already, so that an entry's sha256 is checked once
per process and not on every open (a 1,000,000 x 768 float16 entry is 1.5 GB: seconds of
reading each time; evaluation and training open entries several times).

A file counts as verified while its stat *stamp* (device, inode, size, mtime and ctime, in ns)
is the one it had when its bytes were hashed and found to match. Any change made through the
file system moves the stamp: a write, a truncation, a replacement (new inode) or a rename into
place, and also ``os.utime``, which can put back an old mtime but sets ctime to the present
(user code cannot set ctime). So a byte flipped in place with its mtime restored is caught at
the next open, as is a file swapped for another of the same size and mtime.

What a stamp cannot see, and only a full hash finds: bytes that change without the file system
knowing (bit rot on the disk, writes to the raw block device, a network file system's server
changing a file while this client caches its attributes). The next process hashes again.

Racy stamps (git's "racily clean" problem): file times come from a coarse clock (a few ms on
Linux; 1-2 s on some file systems), so a write just after a verification could leave the same
stamp. A stamp is remembered only when the file's ctime is more than :data:`SETTLE_NS` before
the verification began; a file changed that recently is hashed again at its next open.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from alignkit._files import file_hash

#: A file whose ctime is this recent (ns) when its hash is checked is not remembered as verified.
SETTLE_NS = 2_000_000_000

_Stamp = tuple[int, int, int, int]  # (size, mtime_ns, ctime_ns, inode)
_seen: dict[tuple[int, int], tuple[_Stamp, str]] = {}  # (device, inode) -> (stamp, sha256)


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256_matches(path: Path, expected: str) -> bool:
    """Whether the file at ``path`` has sha256 ``expected`` (hex). Hashes the whole file unless
    this process found that digest for the file at its present stamp (module docstring).

    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` when it is gone).
    """
    began = time.time_ns()
    st = os.stat(path)
    who, stamp = (st.st_dev, st.st_ino), _stamp(st)
    if _seen.get(who) == (stamp, expected):
        return True
    matches = file_hash(path, "sha256") == expected
    if not matches:
        _seen.pop(who, None)
        return False
    after = os.stat(path)
    if _stamp(after) == stamp and stamp[2] < began - SETTLE_NS:  # unchanged, and settled
        _seen[who] = (stamp, expected)
    return True


def forget() -> None:
    """Forget every verification of this process (the next open of each entry hashes it)."""
    _seen.clear()
