"""Cost of CKA scores and of their calibration, side by side (issues #8 item 3 and #13 item 1).

    python benchmarks/calibration.py            # every row (a few minutes on 2 busy cores)
    python benchmarks/calibration.py --quick    # smaller sizes (under a minute)
    python benchmarks/calibration.py --alignkit PATH   # time another checkout's alignkit

Rows:

* ``wide``: linear CKA (biased and unbiased) of n = 64 rows with d = 16,384 and 4,096 columns
  (a flattened conv activation against a wide embedding), and its 100-permutation null. Each case
  runs in a fresh subprocess; peak memory is the rise of its RSS high-water mark (VmHWM, reset by
  writing 5 to /proc/self/clear_refs just before the call) over the RSS with the inputs built.
* ``all-pairs``: ``score_pairs`` over V vision x T text encoders of widths 384-1,280 (ReLU
  features sharing a 16-d latent), linear CKA biased and unbiased, with no null, the analytic
  null and a B = 100 permutation null; and the default ranking's scoring step (n = 500, 3 x 3
  encoders, the default metrics, 10 subsamples), where mutual-kNN keeps its permutations.
  Issue #13 asks for 20 x 20 encoders at n = 5,000; on 2 shared cores that is hours for the
  permutation column, so the rows here are 6 x 6 at n = 1,000-2,000. Scaling: no-null and
  analytic cost grow as V·T·n·d² (pairs) + (V+T)·n·d² (self terms; analytic adds an n x n kernel
  and, for n <= 1,024, one n³ product per encoder for the skewness); the permutation null adds
  B·V·T·min(n·d1·d2, ~100·n²).

Torch runs with 1 thread by default (``--threads``); timings on a shared machine are noisy,
so compare ratios within a row.
"""

from __future__ import annotations

import argparse
import json
import math
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


def _features(widths: list[int], n: int, seed: int, shared) -> dict:
    """Encoders of the given widths that share part of a latent (so nulls are not trivial)."""
    import numpy as np
    import torch

    g = np.random.default_rng(seed)
    out = {}
    for i, d in enumerate(widths):
        mix = g.standard_normal((shared.shape[1], d)).astype(np.float32)
        x = np.maximum(shared @ mix + g.standard_normal((n, d)).astype(np.float32), 0.0)
        out[f"enc{seed}-{i}-{d}"] = torch.from_numpy(x)
    return out


def pairs_rows(alignkit_path: Path, quick: bool, which: str = "all-pairs") -> None:
    """score_pairs with no null, the analytic null and a B = 100 permutation null, in one process
    (the modes alternate, best of two)."""
    sys.path.insert(0, str(alignkit_path))
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", str(THREADS))))
    from alignkit.metrics import score_pairs

    cka = ("linear_cka", "linear_cka_unbiased")
    if which == "default":  # the scoring step of the default ranking (3 x 3 encoders, n = 500)
        cases = [("default run", 500, 3, ("linear_cka_unbiased", "linear_cka", "mutual_knn"), 10)]
    elif quick:
        cases = [("all-pairs 3x3", 300, 3, cka, 0)]
    else:
        cases = [("all-pairs 6x6", 1000, 6, cka, 0), ("all-pairs 6x6", 2000, 6, cka, 0)]
    print("\nall-pairs scoring: no null vs analytic null vs B=100 permutations (seconds)")
    print(f"{'case':>14} {'n':>5} {'metrics':>28} {'none':>8} {'analytic':>9} {'perm100':>9}")
    for label, n, k, metrics, subsamples in cases:
        g = np.random.default_rng(0)
        shared = g.standard_normal((n, 16)).astype(np.float32)
        widths = [384, 768, 1024, 1280, 512, 640][:k]
        vision = _features(widths, n, 1, shared)
        text = _features(widths[::-1], n, 2, shared)
        times: dict[str, float] = {}
        for _ in range(2):
            for mode in ("none", "analytic", "permutation"):
                t0 = time.perf_counter()
                score_pairs(
                    vision,
                    text,
                    metrics,
                    null=mode,
                    n_permutations=100,
                    n_subsamples=subsamples,
                    progress=False,
                )
                times[mode] = min(times.get(mode, math.inf), time.perf_counter() - t0)
        names = ",".join(m.replace("linear_cka", "lin").replace("_unbiased", "_u") for m in metrics)
        print(
            f"{label:>14} {n:>5} {names:>28} {times['none']:8.2f} {times['analytic']:9.2f} "
            f"{times['permutation']:9.2f}   analytic/none = {times['analytic'] / times['none']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--alignkit", type=Path, default=ROOT, help="checkout whose code to time")
    parser.add_argument("--rows", default="wide,all-pairs,default")
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
    for which in ("all-pairs", "default"):
        if which in rows:
            pairs_rows(args.alignkit.resolve(), args.quick, which)


if __name__ == "__main__":
    main()
