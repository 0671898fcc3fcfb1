"""Projector training throughput against this machine's GEMM floor, and memory on a memmapped cache.

    python benchmarks/training.py            # full run (a few minutes on 2 busy cores)
    python benchmarks/training.py --quick    # smoke run at small sizes

Everything runs in one process with torch limited to ``--threads`` threads (default 1: the
machines this is developed on are shared; the memory case runs in a fresh subprocess), CPU,
float32, synthetic features, ``progress=False`` and no validation:

1. GEMM rate: float32 (m x k) @ (k x n) products run for a few seconds before and after the
   training cases (their mean is the rate), in FLOP per wall second and per CPU second of this
   process; the CPU-time ratio is the fair one when other processes share the cores.
2. Pooled features: images/s (one caption each, a pair per image) of ``train_projector`` for a
   linear and an MLP projector. The floor is the least matrix-multiply work of one step over the
   measured GEMM rate: projector forward 2·B·(d_in·d_out) per layer; backward: weight gradients for
   every layer (the same again) and input gradients for every layer but the first (the frozen
   features need none); the loss's (B x B) score matrix 2·B²·D forward and 4·B²·D backward.
3. Token-level features: the same with a residual per-token projector on T_v image tokens plus a
   CLS projection, and T_t text tokens then an MLP head (freeze-align's layout).
4. Memory: a float16 token cache written as a .npy file, memory-mapped, trained on for one epoch in
   a subprocess; a sampler thread records the peak anonymous RSS (the process's own memory) and the
   peak file-backed RSS (cache pages mapped in, which the kernel can drop at will) against the
   cache's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit.training import PairedFeatures, TokenFeatures, TrainConfig, train_projector  # noqa: E402

THREADS = 1  # the default; --threads changes it


class Clock:
    """Wall time and this process's CPU time (the fair measure on a machine shared with others)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def gemm_rate(seconds: float, m: int = 1024, k: int = 1024, n: int = 512) -> tuple[float, float]:
    """Sustained float32 GEMM rate over about ``seconds``: (FLOP per wall s, FLOP per CPU s)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    count = 0
    with Clock() as c:
        while time.perf_counter() - c.wall < seconds:
            a @ b
            count += 1
    flops = 2.0 * m * k * n * count
    return flops / c.wall, flops / c.cpu


def _time_run(config: TrainConfig, data: PairedFeatures) -> Clock:
    with Clock() as c:
        train_projector(config, data, progress=False, device="cpu")
    return c


def _linear_flops(layers: list[tuple[int, int]], rows: int) -> float:
    """Forward + weight grads of every layer + input grads of all layers but the first."""
    fwd = [2 * rows * a * b for a, b in layers]
    return sum(fwd) * 2 + sum(fwd[1:])


def pooled_case(args, rate: float) -> list[dict]:
    n, dv, dt, width, bs = args.n_pooled, 1280, 384, 512, 512
    g = torch.Generator().manual_seed(0)
    data = PairedFeatures(
        torch.randn(n, dv, generator=g),
        torch.randn(n, dt, generator=g),
        torch.arange(n),
        [str(i) for i in range(n)],
    )
    out = []
    for kind, layers_v, layers_t in (
        ("linear", [(dv, width)], [(dt, width)]),
        ("mlp", [(dv, width), (width, width)], [(dt, width), (width, width)]),
    ):
        config = TrainConfig(
            projector=kind,
            width=width,
            batch_size=bs,
            epochs=args.epochs,
            eval_every=10**9,
            patience=None,
        )
        clock = _time_run(config, data)
        steps = config.epochs * (n // bs)
        flops = steps * (
            _linear_flops(layers_v, bs) + _linear_flops(layers_t, bs) + 6 * bs * bs * width
        )
        pairs = steps * bs
        out.append(_row(f"pooled {kind} {dv}/{dt}->{width}, batch {bs}", pairs, clock, flops, rate))
    return out


def token_case(args, rate: float) -> list[dict]:
    n, tv, tt, dv, dt, width, bs = args.n_tokens, 49, 16, 768, 384, 512, 256
    g = torch.Generator().manual_seed(0)
    image = TokenFeatures(
        torch.randn(n, tv, dv, generator=g).half(),
        torch.ones(n, tv, dtype=torch.bool),
        torch.randn(n, dv, generator=g).half(),
    )
    text = TokenFeatures(
        torch.randn(n, tt, dt, generator=g).half(), torch.ones(n, tt, dtype=torch.bool)
    )
    data = PairedFeatures(image, text, torch.arange(n), [str(i) for i in range(n)])
    config = TrainConfig(
        projector="residual",
        text_head="mlp_head",
        width=width,
        batch_size=bs,
        epochs=args.epochs,
        eval_every=10**9,
        patience=None,
    )
    clock = _time_run(config, data)
    steps = config.epochs * (n // bs)

    def residual(d_in: int, rows: int) -> float:  # linear + fc1 read the input, fc2 reads fc1's
        return _linear_flops([(d_in, width), (width, width)], rows) + _linear_flops(
            [(d_in, width)], rows
        )

    flops = steps * (
        residual(dv, bs * tv)
        + residual(dv, bs)
        + residual(dt, bs * tt)
        + 3 * 2 * bs * 2 * width * width  # the text head after pooling (its input has a gradient)
        + 6 * bs * bs * width
    )
    label = f"token residual img {tv}x{dv} + cls, text {tt}x{dt} -> {width}, batch {bs}"
    return [_row(label, steps * bs, clock, flops, rate)]


def _row(label: str, pairs: int, clock: Clock, flops: float, rate: tuple[float, float]) -> dict:
    return {
        "case": label,
        "pairs_per_s": pairs / clock.wall,
        "floor_pairs_per_s": pairs / (flops / rate[0]),
        "time_over_floor": clock.wall / (flops / rate[0]),
        "pairs_per_cpu_s": pairs / clock.cpu,
        "floor_pairs_per_cpu_s": pairs / (flops / rate[1]),
        "cpu_time_over_floor": clock.cpu / (flops / rate[1]),
        "seconds": clock.wall,
    }


MEMORY_CHILD = r"""
import json, sys, threading, time
import numpy as np, torch
torch.set_num_threads({threads})
sys.path.insert(0, {repo!r})
from alignkit.training import PairedFeatures, TokenFeatures, TrainConfig, train_projector

def status():
    out = {{}}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024  # MiB
    return out

peak = {{"RssAnon": 0.0, "RssFile": 0.0}}
done = False
def sample():
    while not done:
        s = status()
        for k in peak:
            peak[k] = max(peak[k], s[k])
        time.sleep(0.01)

warm = PairedFeatures(torch.randn(64, 8), torch.randn(64, 8), torch.arange(64),
                      [str(i) for i in range(64)])
train_projector(TrainConfig(width=8, batch_size=32, epochs=1), warm, progress=False, device="cpu")
tokens = np.load({path!r}, mmap_mode="r")
n, t, d = tokens.shape
base = status()
threading.Thread(target=sample, daemon=True).start()
image = TokenFeatures(torch.from_numpy(tokens), torch.ones(n, t, dtype=torch.bool))
g = torch.Generator().manual_seed(0)
text = torch.randn(n, 64, generator=g)
data = PairedFeatures(image, text, torch.arange(n), [str(i) for i in range(n)])
config = TrainConfig(projector="linear", width=256, batch_size=256, epochs=1, eval_every=10**9,
                     patience=None)
t0 = time.perf_counter()
train_projector(config, data, progress=False, device="cpu")
secs = time.perf_counter() - t0
done = True
time.sleep(0.05)
print(json.dumps({{"base": base, "peak": peak, "end": status(), "seconds": secs}}))
"""


def memory_case(args) -> dict:
    d, t = 768, 50
    n = int(args.cache_gb * 2**30 / (t * d * 2))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "tokens.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, t, d))
        rng = np.random.default_rng(0)
        for s in range(0, n, 1024):  # written in blocks: this process stays small too
            arr[s : s + 1024] = rng.standard_normal((min(1024, n - s), t, d), dtype=np.float32)
        arr.flush()
        del arr
        size_mib = path.stat().st_size / 2**20
        code = MEMORY_CHILD.format(
            threads=THREADS, repo=str(Path(__file__).resolve().parents[1]), path=str(path)
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        got = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "cache_mib": size_mib,
        "rows": n,
        "anon_rss_before_mib": got["base"]["RssAnon"],
        "anon_rss_peak_mib": got["peak"]["RssAnon"],
        "file_rss_before_mib": got["base"]["RssFile"],
        "file_rss_peak_mib": got["peak"]["RssFile"],
        "cache_over_anon_growth": size_mib
        / max(1.0, got["peak"]["RssAnon"] - got["base"]["RssAnon"]),
        "seconds": got["seconds"],
    }


def _rescore(row: dict, old: tuple[float, float], new: tuple[float, float]) -> dict:
    return {
        "floor_pairs_per_s": row["floor_pairs_per_s"] * new[0] / old[0],
        "time_over_floor": row["time_over_floor"] * new[0] / old[0],
        "cpu_time_over_floor": row["cpu_time_over_floor"] * new[1] / old[1],
        "floor_pairs_per_cpu_s": row["floor_pairs_per_cpu_s"] * new[1] / old[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--cache-gb", type=float, default=None, help="memmapped cache size (GiB)")
    parser.add_argument("--tmp", default=None, help="folder for the cache file (default: $TMPDIR)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    args = parser.parse_args()
    args.n_pooled = 4096 if args.quick else 16384
    args.n_tokens = 512 if args.quick else 2048
    args.epochs = 1
    if args.cache_gb is None:
        args.cache_gb = 0.25 if args.quick else 3.0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # warm-up: the first optimizer pulls in torch._dynamo (seconds); keep that out of the timings
    warm = PairedFeatures(
        torch.randn(64, 8), torch.randn(64, 8), torch.arange(64), [str(i) for i in range(64)]
    )
    train_projector(
        TrainConfig(width=8, batch_size=32, epochs=1), warm, progress=False, device="cpu"
    )

    seconds = 1.0 if args.quick else 4.0
    before = gemm_rate(seconds)
    rows = pooled_case(args, before) + token_case(args, before)
    after = gemm_rate(seconds)
    rate = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
    rows = [  # re-scored with the mean of the rates measured before and after
        {**r, **_rescore(r, before, rate)} for r in rows
    ]
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), float32 GEMM rate "
        f"{before[0] / 1e9:.1f} -> {after[0] / 1e9:.1f} GFLOP/s per wall s, "
        f"{before[1] / 1e9:.1f} -> {after[1] / 1e9:.1f} GFLOP/s per CPU s (before -> after)"
    )
    head = ("case", "pairs/s", "floor", "x floor", "pairs/cpu-s", "floor", "x floor")
    print("{:68s} {:>8s} {:>8s} {:>7s} {:>11s} {:>8s} {:>7s}".format(*head))
    for r in rows:
        print(
            f"{r['case']:68s} {r['pairs_per_s']:8.0f} {r['floor_pairs_per_s']:8.0f} "
            f"{r['time_over_floor']:7.2f} {r['pairs_per_cpu_s']:11.0f} "
            f"{r['floor_pairs_per_cpu_s']:8.0f} {r['cpu_time_over_floor']:7.2f}"
        )
    if not args.skip_memory:
        m = memory_case(args)
        print(
            f"memmapped token cache {m['cache_mib']:.0f} MiB ({m['rows']} rows x 50 x 768 fp16),"
            f" one epoch in {m['seconds']:.1f} s: anonymous RSS {m['anon_rss_before_mib']:.0f}"
            f" -> peak {m['anon_rss_peak_mib']:.0f} MiB (cache / growth ="
            f" {m['cache_over_anon_growth']:.1f}x); file-backed RSS {m['file_rss_before_mib']:.0f}"
            f" -> peak {m['file_rss_peak_mib']:.0f} MiB (libraries + mapped cache pages, which the"
            " kernel reclaims under pressure)"
        )


if __name__ == "__main__":
    main()
