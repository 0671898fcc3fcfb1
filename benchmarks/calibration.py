"""Cost of CKA scores and of their calibration, side by side (issues #8 item 3 and #13 item 1).

    python benchmarks/calibration.py            # every row (a few minutes on 2 busy cores)
    python benchmarks/calibration.py --quick    # smaller sizes (under a minute)
    python benchmarks/calibration.py --alignkit PATH   # time another checkout's alignkit

Rows:

* ``wide``: linear CKA (biased and unbiased) of n = 64 rows with d = 16,384 and 4,096 columns
  (a flattened conv activation against a wide embedding), and its 100-permutation null. Each case
  runs in a fresh subprocess; peak memory is the rise of its RSS high-water mark (VmHWM, reset by
  writing 5 to /proc/self/clear_refs just before the call) over the RSS with the inputs built.
* ``all-pairs``: ``score_pairs`` over V vision x T text encoders of widths 384-1,280 with the
  default metrics, with no null, with the analytic null and with a B = 100 permutation null.

Torch runs with 1 thread by default (``--threads``); timings on a shared machine are noisy,
so compare ratios within a row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
"""Torch threads (``--threads``). 1 by default: on a machine shared with other jobs a second
OpenMP thread spin-waits for a core and makes small cases 5-10x slower."""


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _wide_case(spec: dict) -> dict:
    """Runs in the child: one linear CKA (or its null) of (n, d1) x (n, d2) float32 inputs."""
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", str(THREADS))))
    from alignkit.metrics import linear_cka, permutation_null

    g = np.random.default_rng(0)
    n, d1, d2 = spec["n"], spec["d1"], spec["d2"]
    x = torch.from_numpy(g.standard_normal((n, d1), dtype=np.float32))
    y = torch.from_numpy(g.standard_normal((n, d2), dtype=np.float32))

    def call() -> float:
        if spec["what"] == "null":
            return permutation_null("linear_cka", x, y, n_permutations=100, seed=0).p
        return linear_cka(x, y, unbiased=spec["what"] == "unbiased")

    linear_cka(x[:8, :8], y[:8, :8])  # load torch's kernels outside the timing
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    times = []
    for _ in range(spec.get("repeats", 3)):  # best of a few: the machine is shared
        t0 = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - t0)
        if times[-1] > 5.0:
            break
    peak = (_status_kib("VmHWM") - base) * 1024
    return {"seconds": min(times), "peak_extra_bytes": max(peak, 0), "value": float(value)}


def in_subprocess(spec: dict, alignkit_path: Path) -> dict:
    threads = os.environ.get("BENCH_THREADS", str(THREADS))
    env = {**os.environ, "PYTHONPATH": str(alignkit_path), "OMP_NUM_THREADS": threads}
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def wide_rows(alignkit_path: Path, quick: bool) -> None:
    n = 64
    threads = os.environ.get("BENCH_THREADS", str(THREADS))
    print(f"\nlinear CKA, features wider than the probe (n={n}, float32, {threads} threads)")
    print(f"{'d1 x d2':>14} {'what':>9} {'seconds':>9} {'peak MB':>9}  value")
    shapes = [(4096, 1024)] if quick else [(16384, 4096), (4096, 1024)]
    for d1, d2 in shapes:
        for what in ("biased", "unbiased", "null"):
            r = in_subprocess({"n": n, "d1": d1, "d2": d2, "what": what}, alignkit_path)
            print(
                f"{f'{d1}x{d2}':>14} {what:>9} {r['seconds']:9.3f} "
                f"{r['peak_extra_bytes'] / 2**20:9.1f}  {r['value']:.6f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--alignkit", type=Path, default=ROOT, help="checkout whose code to time")
    parser.add_argument("--rows", default="wide,all-pairs")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["BENCH_THREADS"] = str(args.threads)
    if args.child:
        print(json.dumps(_wide_case(json.loads(args.child))))
        return
    rows = args.rows.split(",")
    if "wide" in rows:
        wide_rows(args.alignkit.resolve(), args.quick)


if __name__ == "__main__":
    main()
