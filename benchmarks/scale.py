"""alignkit at a million rows: write a float16 feature store, train one epoch reading it
memory-mapped, load a probe manifest of the same size.

    python benchmarks/scale.py --rows 1000000 --dim 768     # the issue's size (~3 GB in --work)
    python benchmarks/scale.py --quick                      # 20,000 rows: a smoke run
    python benchmarks/scale.py --quick --rows 2000 --dim 32 # what the test runs (seconds)

Three stages, the last two each in a fresh child process (so that one stage's memory does not
hide or inflate another's):

1. Store write: synthetic image and text features, N x D each (text = the image features with
   their columns permuted plus noise: a relation a linear projector can learn), written as
   float16 shards with ``FeatureCache.put_shard`` (the call an extraction makes for each shard)
   and committed with ``FeatureCache.commit_shards`` (streamed, one shard in memory).
   ``store_write_rows_per_s``: image-caption pairs per second over both stores' shard writes
   and commits (generating the random numbers is not timed).
2. Training: the two entries read back with ``FeatureCache.get`` (memory maps), paired by
   ``paired_features``, and one epoch of a linear projector (D -> 512, both towers) with InfoNCE
   (``loss="clip"``), ``--batch`` images a step, no validation, through ``train_projector``.
   ``train_rows_per_s``: images trained per wall second (full batches; the last short batch is
   dropped by the schedule). ``train_floor_ratio``: the time the epoch's matrix products alone
   take at the rate measured in the same process, on the same shapes (each step: two tower
   forwards (B x D)(D x 512), the (B x 512)(512 x B) logits, two logit gradients
   (B x B)(B x 512), two weight gradients (D x B)(B x 512); each run for a while before and
   after the epoch, the mean taken), divided by the epoch's wall time: 1.0 means nothing but
   GEMMs. ``train_floor_ratio_cpu``: the same in CPU seconds of this process (GEMMs' CPU time
   over the epoch's), the fairer reading when other processes share the cores.
   Memory, sampled every 10 ms from ``/proc/self/status`` during the epoch:
   ``train_rss_growth_mb`` is the growth of **anonymous** RSS (RssAnon: the process's own heap,
   what the store must not grow) over its value just before training; ``file_rss_growth_mb`` is
   the growth of **file-backed** RSS (RssFile: the store's mapped pages, which are page cache
   the kernel reclaims under pressure; at most the store's size).
3. Probe load: ``load_probe`` on an N-row JSONL manifest built by ``benchmarks/probe_load.py``'s
   ``write_manifest`` (8 real Flickr8k photos from ``$ALIGNKIT_DATA_DIR``, reused row after row),
   timed in that script's child process. ``probe_load_s``: its wall time.

Ends with one JSON line (``rows, dim, probe_load_s, store_write_rows_per_s, train_rows_per_s,
train_floor_ratio, train_rss_growth_mb`` and more: the batch, threads, store size, peaks, the
machine's load average). The machines this is run on are shared: compare the ratios, and read
the load average beside every rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import probe_load  # noqa: E402  (benchmarks/probe_load.py: the manifest builder and its timer)

from alignkit.features import FeatureCache  # noqa: E402

WIDTH = 512  # the projectors' output width
KEYS = {"image": "5ca1e1" + "0" * 26, "text": "5ca1e2" + "0" * 26}  # fixed keys of the two stores


def _ids(n: int) -> tuple[str, ...]:
    return tuple(f"r{i:07d}" for i in range(n))  # the manifest's ids (probe_load.write_manifest)


def write_store(root: Path, rows: int, dim: int, shard_rows: int, seed: int = 0) -> dict:
    """Both stores, written shard by shard as float16; returns timings and sizes."""
    store = FeatureCache(root)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(dim, generator=g)
    writing = 0.0
    for a in range(0, rows, shard_rows):
        b = min(rows, a + shard_rows)
        image = torch.randn(b - a, dim, generator=g)
        text = image[:, perm] + 0.5 * torch.randn(b - a, dim, generator=g)
        t = time.perf_counter()
        store.put_shard(KEYS["image"], a, b, image, "float16")
        store.put_shard(KEYS["text"], a, b, text, "float16")
        writing += time.perf_counter() - t
    ids = _ids(rows)
    t = time.perf_counter()
    for side, key in KEYS.items():
        provenance = {"encoder": f"synthetic:{side}", "modality": side, "probe": "scale"}
        store.commit_shards(key, ids, provenance, dtype="float16")
    writing += time.perf_counter() - t
    size = sum(store.path(k).stat().st_size for k in KEYS.values())
    return {"store_write_s": writing, "store_mb": size / 2**20}


_TRAIN_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
from scale import train_stage
print(json.dumps(train_stage(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
"""


def _status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def gemm_seconds(batch: int, dim: int, seconds: float = 0.3) -> tuple[float, float]:
    """(wall, CPU) seconds of one step's matrix products (module docstring): each shape run
    again and again for about ``seconds`` and its mean taken, so that the rate includes the
    machine's load as the epoch does (a best-of timing would not)."""
    shapes = [(batch, dim, WIDTH)] * 2 + [(batch, WIDTH, batch)]  # tower forwards, logits
    shapes += [(batch, batch, WIDTH)] * 2 + [(dim, batch, WIDTH)] * 2  # logit and weight grads
    wall = cpu = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm
        count, t, c = 0, time.perf_counter(), time.process_time()
        while count < 2 or time.perf_counter() - t < seconds:
            a @ b
            count += 1
        wall += (time.perf_counter() - t) / count
        cpu += (time.process_time() - c) / count
    return wall, cpu


def train_stage(root: str, batch: int, threads: int) -> dict:
    """Stage 2, in the child process: the mapped store, one epoch, the GEMM floor, memory."""
    import threading

    from alignkit.features import paired_features
    from alignkit.training import PairedFeatures, TrainConfig, train_projector

    torch.set_num_threads(threads)
    ids = [str(i) for i in range(64)]  # a warm-up run: the first optimizer imports torch._dynamo
    warm = PairedFeatures(torch.randn(64, 8), torch.randn(64, 8), torch.arange(64), ids)
    train_projector(TrainConfig(width=8, batch_size=32, epochs=1), warm, progress=False)
    opened = _status()
    store = FeatureCache(Path(root))
    image, text = (store.get(KEYS[side]) for side in ("image", "text"))
    data = paired_features(image, text)  # float16 maps: nothing read yet
    n, dim = data.n_images, data.image_dim
    config = TrainConfig(
        projector="linear", width=WIDTH, loss="clip", captions="one", batch_size=batch, epochs=1,
        eval_every=10**9, patience=None, lr=1e-3, seed=0,
    )  # fmt: skip
    floor_before = gemm_seconds(batch, dim)
    base = _status()
    peak = dict(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = _status()
            for k in peak:
                peak[k] = max(peak[k], now[k])
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_projector(config, data, progress=False, device="cpu")
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    done.set()
    sampler.join()
    floor_after = gemm_seconds(batch, dim)
    steps = result.steps
    floor_s = steps * (floor_before[0] + floor_after[0]) / 2
    floor_cpu_s = steps * (floor_before[1] + floor_after[1]) / 2
    return {
        "n": n,
        "steps": steps,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "floor_s": floor_s,
        "floor_cpu_s": floor_cpu_s,
        "gemm_step_s": [floor_before[0], floor_after[0]],
        "anon_open_mb": base["RssAnon"] - opened["RssAnon"],
        "anon_base_mb": base["RssAnon"],
        "anon_peak_mb": peak["RssAnon"],
        "file_base_mb": base["RssFile"],
        "file_peak_mb": peak["RssFile"],
        "final_loss": float(result.history["train_loss"].iloc[-1]),
    }


def _child(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"a benchmark stage failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=int, default=None, help="rows (default 1,000,000; --quick 20,000)"
    )
    ap.add_argument("--dim", type=int, default=768, help="feature width of both stores")
    ap.add_argument("--quick", action="store_true", help="20,000 rows: a smoke run")
    ap.add_argument("--batch", type=int, default=1024, help="images per training step")
    ap.add_argument("--shard-rows", type=int, default=8192, help="rows per store shard")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machines: 1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/alignkit-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the store (removed by default)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ALIGNKIT_DATA_DIR", ".")))
    args = ap.parse_args(argv)
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    batch = min(args.batch, rows)
    torch.set_num_threads(args.threads)
    photos = probe_load._photos(args.data_dir)  # fail before writing gigabytes
    args.work.mkdir(parents=True, exist_ok=True)
    root = args.work / f"store-{rows}x{args.dim}"
    shutil.rmtree(root, ignore_errors=True)
    try:
        wrote = write_store(root, rows, args.dim, args.shard_rows)
        trained = _child(_TRAIN_CHILD, str(ROOT), str(root), str(batch), str(args.threads))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    manifest = probe_load.write_manifest(args.work, rows, photos)
    loaded = _child(probe_load._CHILD, json.dumps(str(manifest)), json.dumps(None))
    result = {
        "rows": rows,
        "dim": args.dim,
        "probe_load_s": loaded["load_s"],
        "store_write_rows_per_s": round(rows / wrote["store_write_s"]),
        "train_rows_per_s": round(trained["steps"] * batch / trained["train_s"]),
        "train_floor_ratio": round(trained["floor_s"] / trained["train_s"], 3),
        "train_rss_growth_mb": round(trained["anon_peak_mb"] - trained["anon_base_mb"], 1),
        "train_floor_ratio_cpu": round(trained["floor_cpu_s"] / trained["train_cpu_s"], 3),
        "file_rss_growth_mb": round(trained["file_peak_mb"] - trained["file_base_mb"], 1),
        "store_mb": round(wrote["store_mb"], 1),
        "anon_rss_peak_mb": round(trained["anon_peak_mb"], 1),
        "open_store_anon_mb": round(trained["anon_open_mb"], 1),
        "batch": batch,
        "steps": trained["steps"],
        "threads": args.threads,
        "train_s": round(trained["train_s"], 2),
        "train_cpu_s": round(trained["train_cpu_s"], 2),
        "floor_s": round(trained["floor_s"], 2),
        "final_loss": round(trained["final_loss"], 4),
        "probe_peak_rss_mb": loaded["peak_rss_mb"],
        "store_write_s": round(wrote["store_write_s"], 2),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
