"""Cost of the held-out alignability metrics beside linear CKA, in one run (issue 19 item 1).

    python benchmarks/alignability.py            # n = 5,000, d1 = 1,280, d2 = 384 and 768
    python benchmarks/alignability.py --quick    # n = 1,000: a smoke run

Synthetic float32 features with a shared 16-d latent (x: d1 = 1,280 columns; y: d2 = 384 and
768), the registry defaults (5 folds, top 256 principal directions per side). Each case runs
in a fresh child process with one torch thread: on a shared 2-core machine a second thread
mostly spins while it waits, which inflates CPU seconds and makes wall seconds noise, so the
ratios are of CPU seconds of one thread (wall seconds are printed beside them). The cases of a
shape alternate between the metrics, best of ``--repeats``.

Per case:
* ``score``: one call on a new pair (both sides prepared: for the held-out metrics the per-side
  PCA, a (d, d) eigendecomposition, dominates);
* ``per permutation``: (permutation_null with B permutations - score) / B, the cost each
  re-pairing adds (linear CKA: one n·d1·d2 GEMM; held-out metrics: y's per-fold training
  moments re-decomposed, the training cross-covariances and the retrievals);
* peak memory: the high-water mark of the child's RSS above its RSS before the call (VmHWM,
  reset through /proc/self/clear_refs), which sees torch's allocations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit.metrics import METRICS, permutation_null  # noqa: E402

NAMES = ("linear_cka", "ridge_alignability", "procrustes_alignability", "cca_alignability")
B = 5


def inputs(n: int, d1: int, d2: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 16, generator=g)
    x = 0.2 * (z @ torch.randn(16, d1, generator=g)) + torch.randn(n, d1, generator=g)
    y = 0.2 * (z @ torch.randn(16, d2, generator=g)) + torch.randn(n, d2, generator=g)
    return x, y


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(fn) -> tuple[float, float, int, float]:  # noqa: ANN001
    """(wall s, CPU s, peak extra bytes, result) of one call."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS") * 1024
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return wall, cpu, _status_kib("VmHWM") * 1024 - before, out


def run_case(name: str, n: int, d1: int, d2: int) -> dict:
    """Child process: score once and with a B-permutation null."""
    torch.set_num_threads(1)
    x, y = inputs(n, d1, d2)
    metric = METRICS[name]
    wall, cpu, peak, score = _measure(lambda: metric(x, y))
    nwall, ncpu, npeak, _ = _measure(lambda: permutation_null(name, x, y, n_permutations=B))
    return {
        "case": name,
        "score": score,
        "wall": wall,
        "cpu": cpu,
        "peak": peak,
        "perm_wall": (nwall - wall) / B,
        "perm_cpu": (ncpu - cpu) / B,
        "perm_peak": npeak,
    }


def in_child(name: str, n: int, d1: int, d2: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", name, "--n", str(n), "--d1", str(d1)]
        + ["--d2", str(d2)],
        check=True,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(quick: bool, repeats: int) -> None:
    n, d1 = (1000, 1280) if quick else (5000, 1280)
    for d2 in (384, 768):
        best: dict[str, dict] = {}
        for _ in range(repeats):
            for name in NAMES:
                r = in_child(name, n, d1, d2)
                if name not in best or r["cpu"] < best[name]["cpu"]:
                    best[name] = r
        base = best["linear_cka"]
        print(f"\nn = {n}, d1 = {d1}, d2 = {d2}; one thread; best of {repeats}")
        print(
            f"{'metric':<26}{'score':>8}{'CPU s':>8}{'x CKA':>7}{'wall s':>8}{'peak MiB':>10}"
            f"{'x CKA':>7}{'perm CPU s':>12}{'x CKA':>7}"
        )
        for name in NAMES:
            r = best[name]
            print(
                f"{name:<26}{r['score']:>8.4f}{r['cpu']:>8.3f}{r['cpu'] / base['cpu']:>7.2f}"
                f"{r['wall']:>8.2f}{r['peak'] / 2**20:>10.1f}{r['peak'] / base['peak']:>7.2f}"
                f"{r['perm_cpu']:>12.3f}{r['perm_cpu'] / base['perm_cpu']:>7.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case")
    parser.add_argument("--n", type=int)
    parser.add_argument("--d1", type=int)
    parser.add_argument("--d2", type=int)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.d1, args.d2)))
    else:
        main(args.quick, args.repeats)
