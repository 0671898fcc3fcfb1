"""How long opening a large feature-cache entry takes, the first time and the times after.

    python benchmarks/cache_open.py                        # 200,000 x 768 float16 (293 MiB)
    python benchmarks/cache_open.py --rows 1000000         # 1.5 GB

Writes one synthetic float16 entry with ``FeatureCache.put`` under ``--work`` (default
``/tmp/alignkit-cache-open``, reused), waits until the file is a few seconds old, then in a
fresh process opens it ``--opens`` times with ``FeatureCache.get`` (memory-mapped: no feature is
read) and reports each open's wall time. An open checks the entry's sidecar, size and sha256;
the sha256 of the whole file is what makes an open slow. ``first_open_s`` runs on a page cache
that holds the file already (it was just written), so it is the hashing alone, not the disk.
The first open notes its verification beside the entry (``.verified``), so a second run of this
script, on the reused entry, measures a new process's first open with that note (no hash).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignkit.features import FeatureCache, FeatureSet  # noqa: E402

KEY = "c0ffee" + "0" * 26

_CHILD = r"""
import json, sys, time
from alignkit.features import FeatureCache
store, opens = FeatureCache(sys.argv[1]), int(sys.argv[2])
times = []
for _ in range(opens):
    t = time.perf_counter()
    fs = store.get(sys.argv[3])
    times.append(time.perf_counter() - t)
    assert fs is not None, "the entry did not open"
print(json.dumps({"open_s": [round(x, 4) for x in times]}))
"""


def write_entry(work: Path, rows: int, dim: int) -> Path:
    store = FeatureCache(work / f"cache-{rows}x{dim}")
    if store.get(KEY) is None:
        features = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
        ids = tuple(f"r{i:07d}" for i in range(rows))
        store.put(KEY, FeatureSet(features, ids, {"encoder": "synthetic"}), dtype="float16")
    return store.root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--opens", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/alignkit-cache-open"))
    args = ap.parse_args()
    root = write_entry(args.work, args.rows, args.dim)
    path = FeatureCache(root).path(KEY)
    age = time.time() - path.stat().st_ctime
    time.sleep(max(0.0, 3.0 - age))  # settled: see alignkit.features._verified
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(args.opens), KEY],
        capture_output=True,
        text=True,
        check=False,
        cwd=args.work,  # not the repository: the child imports the alignkit of PYTHONPATH
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))},
    )
    if out.returncode != 0:
        sys.exit(f"open failed:\n{out.stderr[-3000:]}")
    times = json.loads(out.stdout.splitlines()[-1])["open_s"]
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "first_open_s": times[0],
        "later_open_s": max(times[1:]) if len(times) > 1 else None,
        "open_s": times,
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
