"""Embedding throughput (items/s) and peak memory of every offline encoder, on 64 real Flickr8k
images or captions.

Each encoder runs in its own fresh process (so its peak RSS is its own: the Python + torch baseline
plus the model and activations); the model is loaded, warmed up on 2 items, then the 64 items are
encoded ``--repeats`` times in batches of ``--batch-size`` and the best time is kept.

    python benchmarks/encoders.py                       # offline-all, 64 items
    python benchmarks/encoders.py --set offline-small --repeats 1 --json out.json

Numbers on shared 2-core machines are noisy; compare encoders within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path


def _items(modality: str, n: int, data_dir: Path) -> list:
    from alignkit.images import load_image

    rows = [
        json.loads(line)
        for line in (data_dir / "flickr8k" / "pairs.jsonl").read_text().splitlines()
    ][:n]
    if modality == "image":
        return [load_image(data_dir / "flickr8k" / r["image"]) for r in rows]
    return [r["captions"][0] for r in rows]


def _measure(
    spec: str, n: int, batch_size: int, repeats: int, data_dir: str, threads: int, queue: mp.Queue
) -> None:
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)

        from alignkit.encoders import create_encoder

        t0 = time.perf_counter()
        enc = create_encoder(spec, device="cpu")
        load_s = time.perf_counter() - t0
        items = _items(enc.modality, n, Path(data_dir))
        if enc.needs_fit:
            enc.fit(items)
        enc.encode(items[:2])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = [enc.encode(items[i : i + batch_size]) for i in range(0, n, batch_size)]
            best = min(best, time.perf_counter() - t0)
        shape = tuple(torch.cat(out, dim=-2).shape)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(
            {
                "spec": spec,
                "modality": enc.modality,
                "dim": enc.dim,
                "load_s": load_s,
                "seconds": best,
                "items_per_s": n / best,
                "peak_rss_mib": rss_mib,
                "shape": shape,
            }
        )
    except Exception as exc:  # report and carry on with the next encoder
        queue.put({"spec": spec, "error": f"{type(exc).__name__}: {exc}"})


def _baseline(queue: mp.Queue) -> None:
    import torch  # noqa: F401

    import alignkit.encoders  # noqa: F401

    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", default="offline-all", help="an ENCODER_SETS name")
    parser.add_argument("--specs", nargs="*", help="encoder specs (instead of --set)")
    parser.add_argument("-n", type=int, default=64, help="items per encoder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--data-dir", default=os.environ.get("ALIGNKIT_DATA_DIR", "../shared/data"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from alignkit.encoders import ENCODER_SETS

    specs = args.specs or list(ENCODER_SETS[args.set].specs)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_baseline, args=(queue,))
    proc.start()
    baseline = queue.get()
    proc.join()
    rows = []
    for spec in specs:
        proc = ctx.Process(
            target=_measure,
            args=(spec, args.n, args.batch_size, args.repeats, args.data_dir, args.threads, queue),
        )
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        print(f"  measured {spec}", file=sys.stderr)

    print(
        f"\n{args.n} real Flickr8k items per encoder, batch {args.batch_size}, "
        f"best of {args.repeats}, torch threads {args.threads or 'default'} on "
        f"{os.cpu_count()} cores; baseline RSS (python + torch + alignkit) {baseline:.0f} MiB\n"
    )
    header = (
        f"{'spec':55s} {'modality':8s} {'dim':>5s} {'load s':>7s} {'items/s':>9s} "
        f"{'peak RSS MiB':>13s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['spec']:55s} ERROR {r['error']}")
            continue
        print(
            f"{r['spec']:55s} {r['modality']:8s} {r['dim']:5d} {r['load_s']:7.1f} "
            f"{r['items_per_s']:9.1f} {r['peak_rss_mib']:13.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"baseline_rss_mib": baseline, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
