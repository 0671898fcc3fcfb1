"""Cost of CKA scores and of their calibration, side by side (issues #8 item 3 and #13 item 1).

    python benchmarks/calibration.py            # every row (a few minutes on 2 busy cores)
    python benchmarks/calibration.py --quick    # smaller sizes (under a minute)
    python benchmarks/calibration.py --alignkit PATH   # time another checkout's alignkit
    python benchmarks/calibration.py --rows issue13    # 20 x 20 encoders, n = 5,000 (~15 CPU min)

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
* ``issue13``: issue #13's table: all pairs of 20 vision x 20 text encoders of widths
  384-1,280 at n = 5,000 (and at n = 1,000, where the analytic null adds the skewness, and
  6 x 6 at n = 1,000), linear CKA biased and unbiased, with no null, the analytic null and a
  B = 100 permutation null. Each mode runs in a fresh child: CPU and wall seconds of
  ``score_pairs``, peak memory (VmHWM rise over the RSS with the features built), and the
  float32 GEMM rate measured in that child right before the call, from which each row's floor
  (its GEMM FLOPs over that rate) is computed. The permutation null is timed with B = 2 and
  extrapolated: B = 100 costs the no-null time plus 50x the two permutations' extra time
  (each permutation repeats every pair's cross GEMM, nothing else); its memory is B = 2's plus
  100 permutations of n int64 indices. For n <= 4,096 permuted pairs of these widths take
  the Gram form (O(n²) gathered products, not a GEMM), so those rows have no GEMM floor.

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
    (the modes alternate, best of two; CPU seconds: wall time on a shared machine is noise)."""
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
    print("\nall-pairs scoring: no null vs analytic null vs B=100 permutations (CPU seconds)")
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
                t0 = time.process_time()
                score_pairs(
                    vision,
                    text,
                    metrics,
                    null=mode,
                    n_permutations=100,
                    n_subsamples=subsamples,
                    progress=False,
                )
                times[mode] = min(times.get(mode, math.inf), time.process_time() - t0)
        names = ",".join(m.replace("linear_cka", "lin").replace("_unbiased", "_u") for m in metrics)
        print(
            f"{label:>14} {n:>5} {names:>28} {times['none']:8.2f} {times['analytic']:9.2f} "
            f"{times['permutation']:9.2f}   analytic/none = {times['analytic'] / times['none']:.2f}"
        )


def _issue13_widths(count: int) -> list[int]:
    """``count`` widths spread over 384-1,280 in steps of 32."""
    return [384 + round(i * (1280 - 384) / max(count - 1, 1) / 32) * 32 for i in range(count)]


def _gemm_rate_cpu(n: int) -> float:
    """Float32 FLOP per CPU second of a (768 x n) @ (n x 768) product, the cross term's shape."""
    import torch

    a, b = torch.randn(n, 768), torch.randn(n, 768)
    best = math.inf
    for _ in range(3):
        t0 = time.process_time()
        b.T @ a
        best = min(best, time.process_time() - t0)
    return 2 * n * 768 * 768 / best


def _issue13_case(spec: dict) -> dict:
    """Runs in the child: score_pairs of V x T encoders with one null mode."""
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", str(THREADS))))
    from alignkit.metrics import score_pairs

    n, count = spec["n"], spec["encoders"]
    g = np.random.default_rng(0)
    shared = g.standard_normal((n, 16)).astype(np.float32)
    widths = _issue13_widths(count)
    vision = _features(widths, n, 1, shared)
    text = _features(widths[::-1], n, 2, shared)
    metrics = ("linear_cka", "linear_cka_unbiased")
    score_pairs(  # load torch's kernels and the moment tables outside the timing
        {k: v[:64] for k, v in list(vision.items())[:1]},
        {k: v[:64] for k, v in list(text.items())[:1]},
        metrics,
        progress=False,
    )
    rate = _gemm_rate_cpu(n)
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0, c0 = time.perf_counter(), time.process_time()
    table = score_pairs(
        vision, text, metrics, null=spec["null"], n_permutations=spec["b"], progress=False
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = (_status_kib("VmHWM") - base) * 1024
    pair_flops = sum(2 * n * dv * dt for dv in widths for dt in widths)
    self_flops = 2 * sum(2 * n * d * d for d in widths)
    return {
        "wall": wall,
        "cpu": cpu,
        "peak": max(peak, 0),
        "rate": rate,
        "pair_flops": pair_flops,
        "self_flops": self_flops,
        "methods": sorted(set(table["null_method"])),
    }


def issue13_rows(
    alignkit_path: Path, quick: bool, cases: list[tuple[int, int]], permutations: bool = True
) -> None:
    """Issue #13's all-pairs calibration table (see the module docstring); ``cases`` are
    (n, encoders per side); ``permutations=False`` leaves out the permutation rows."""
    cases = [(500, 4)] if quick else cases
    threads = os.environ.get("BENCH_THREADS", str(THREADS))
    print(f"\nall-pairs calibrated scoring, linear CKA biased + unbiased, {threads} thread(s)")
    print(
        "| encoders | n | null | CPU s | wall s | CPU floor s | floor / CPU | peak MiB "
        "| x no-null CPU | null_method |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for n, count in cases:
        runs = {}
        for label, null, b in (("none", "none", 0), ("analytic", "analytic", 0)) + (
            (("permutation", "permutation", 2),) if permutations else ()
        ):
            spec = {"kind": "issue13", "n": n, "encoders": count, "null": null, "b": b}
            runs[label] = in_subprocess(spec, alignkit_path)
        none = runs["none"]
        perm = runs.get("permutation", none)
        per_perm = (perm["cpu"] - none["cpu"]) / 2
        perm100 = {
            **perm,
            "cpu": none["cpu"] + 100 * per_perm,
            "wall": none["wall"] + 50 * (perm["wall"] - none["wall"]),
            "peak": perm["peak"] + 100 * n * 8,
        }
        for label, r, flops in (
            ("none", none, none["pair_flops"] + none["self_flops"]),
            ("analytic", runs["analytic"], none["pair_flops"] + none["self_flops"]),
            (
                "B=100 permutations (from B=2)",
                perm100,
                101 * none["pair_flops"] + none["self_flops"],
            ),
        )[: 3 if permutations else 2]:
            floor = flops / r["rate"]
            floors = f"{floor:.1f} | {floor / r['cpu']:.0%}"
            if label.startswith("B=") and n <= 4096:  # permuted pairs take the Gram form there
                floors = "— | —"
            print(
                f"| {count} x {count} | {n:,} | {label} | {r['cpu']:.1f} | {r['wall']:.1f} "
                f"| {floors} | {r['peak'] / 2**20:.0f} "
                f"| {r['cpu'] / none['cpu']:.2f} | {', '.join(r['methods'])} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--alignkit", type=Path, default=ROOT, help="checkout whose code to time")
    parser.add_argument("--rows", default="wide,all-pairs,default")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 1)")
    parser.add_argument(
        "--issue13-cases",
        default="1000x6,1000x20,5000x20",
        help="issue13 rows: comma-separated n x encoders per side",
    )
    parser.add_argument(
        "--no-permutations", action="store_true", help="issue13 rows without the permutation null"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["BENCH_THREADS"] = str(args.threads)
    if args.child:
        spec = json.loads(args.child)
        case = _issue13_case if spec.get("kind") == "issue13" else _wide_case
        print(json.dumps(case(spec)))
        return
    rows = args.rows.split(",")
    if "wide" in rows:
        wide_rows(args.alignkit.resolve(), args.quick)
    for which in ("all-pairs", "default"):
        if which in rows:
            pairs_rows(args.alignkit.resolve(), args.quick, which)
    if "issue13" in rows:
        cases = [tuple(int(v) for v in c.split("x")) for c in args.issue13_cases.split(",")]
        issue13_rows(args.alignkit.resolve(), args.quick, cases, not args.no_permutations)


if __name__ == "__main__":
    main()
