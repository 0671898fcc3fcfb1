"""Are webdataset shards as fast to extract from as image files? (issue 18, item 4)

The same real Flickr8k images (the first ``--n`` rows of ``$ALIGNKIT_DATA_DIR/flickr8k``,
default 2,000) are written once as image files listed in a manifest and once as webdataset
shards in img2dataset's layout (``<key>.jpg``, ``<key>.txt``, ``<key>.json``; ``--per-shard``
samples a shard). Both probes are loaded without decoding (``check="none"``: the comparison is of
extraction), checked to hold the same rows, and extracted with the same encoder (MobileNetV2),
batch size and DataLoader workers, each time into a fresh temporary feature cache (so shards
are written as a real run writes them). Repetitions alternate which side goes first, so both see
the same machine load. Reported per side: images/s (median over repeats, and best), peak memory
above the start of the side (RSS and PSS of this process plus its workers, sampled every 250 ms;
forked workers share the parent's pages, so the RSS sum counts them once per worker and PSS is
the fair number), and the ratio shards / files of images/s (>= 1: shards are not slower). The
features of both sides are compared (bitwise). The last line is one JSON object.

    python benchmarks/extraction_shards.py [--n 2000] [--per-shard 500] [--batch-size 64]
        [--workers W] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from alignkit import _paths
from alignkit.encoders import create_encoder
from alignkit.features import FeatureCache, extract_features
from alignkit.features.extract import default_num_workers
from alignkit.probes import load_probe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction import PeakMemory  # noqa: E402  (benchmarks/extraction.py: peak RSS and PSS)

SPEC = "torchvision:mobilenet_v2"


def flickr_rows(n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of Flickr8k's manifest, ids ``000000000``.. (img2dataset's keys)."""
    root = _paths.data_dir() / "flickr8k"
    rows = []
    with open(root / "pairs.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i == n:
                break
            rec = json.loads(line)
            rows.append(
                {"id": f"{i:09d}", "image": str(root / rec["image"]), "captions": rec["captions"]}
            )
    if len(rows) < n:
        raise SystemExit(f"--n {n}: flickr8k has only {len(rows)} rows")
    return rows


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_inputs(rows: list[dict[str, Any]], folder: Path, per_shard: int) -> tuple[Path, Path]:
    """A manifest of the image files, and the same samples as shards ``folder/shards/*.tar``."""
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    shards = folder / "shards"
    shards.mkdir()
    for s in range(0, len(rows), per_shard):
        with tarfile.open(shards / f"{s // per_shard:05d}.tar", "w") as tf:
            for r in rows[s : s + per_shard]:
                _member(tf, f"{r['id']}.jpg", Path(r["image"]).read_bytes())
                _member(tf, f"{r['id']}.txt", "\n".join(r["captions"]).encode())
                meta = {"key": r["id"], "status": "success", "caption": r["captions"][0]}
                _member(tf, f"{r['id']}.json", json.dumps(meta).encode())
    return manifest, shards


def extract_once(encoder: Any, probe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One extraction into a fresh cache: seconds, peak memory, the features."""
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as peak:
        t0 = time.perf_counter()
        fs = extract_features(
            encoder,
            probe,
            batch_size=args.batch_size,
            num_workers=args.workers,
            cache=FeatureCache(tmp),
            progress=False,
        )
        seconds = time.perf_counter() - t0
    return {"s": seconds, "rss": peak.rss, "pss": peak.pss, "features": fs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images (default 2,000)")
    parser.add_argument("--per-shard", type=int, default=500, help="samples a shard")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: alignkit's default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.workers = default_num_workers("cpu") if args.workers is None else args.workers
    encoder = create_encoder(SPEC, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest, shards = write_inputs(flickr_rows(args.n), Path(tmp), args.per_shard)
        write_s = time.perf_counter() - t0
        load_s = {}
        probes = {}
        for side, spec in (("shards", str(shards)), ("files", str(manifest))):
            t0 = time.perf_counter()
            probes[side] = load_probe(spec, check="none", progress=False)
            load_s[side] = time.perf_counter() - t0
        if probes["shards"].fingerprint != probes["files"].fingerprint:
            raise SystemExit("the shards and the manifest do not hold the same rows")
        # warm-up: first-call allocations and kernel selection, outside the timings
        extract_features(
            encoder, probes["files"].subset(range(min(64, args.n))), cache=False, progress=False
        )
        runs: dict[str, list[dict[str, Any]]] = {"shards": [], "files": []}
        for r in range(args.repeats):  # alternate which side goes first
            for side in ("shards", "files") if r % 2 == 0 else ("files", "shards"):
                runs[side].append(extract_once(encoder, probes[side], args))
                print(f"  repeat {r + 1} {side}: {runs[side][-1]['s']:.2f} s", file=sys.stderr)
    same = torch.equal(
        runs["shards"][0]["features"].features, runs["files"][0]["features"].features
    )
    result: dict[str, Any] = {
        "benchmark": "extraction_shards",
        "n": args.n,
        "encoder": SPEC,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "per_shard": args.per_shard,
        "write_inputs_s": round(write_s, 2),
        "probe_load_s": {k: round(v, 3) for k, v in load_s.items()},
        "features_equal": same,
    }
    for side, done in runs.items():
        secs = [d["s"] for d in done]
        result[f"{side}_images_per_s"] = round(args.n / statistics.median(secs), 2)
        result[f"{side}_images_per_s_best"] = round(args.n / min(secs), 2)
        result[f"{side}_peak_rss_mib"] = round(max(d["rss"] for d in done) / 2**20, 1)
        result[f"{side}_peak_pss_mib"] = round(max(d["pss"] for d in done) / 2**20, 1)
    result["ratio_shards_over_files"] = round(
        result["shards_images_per_s"] / result["files_images_per_s"], 3
    )
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }
    print(
        f"{args.n} images, {SPEC}, batch {args.batch_size}, {args.workers} workers, "
        f"{args.repeats} repeats: shards {result['shards_images_per_s']} img/s, files "
        f"{result['files_images_per_s']} img/s, ratio {result['ratio_shards_over_files']}; "
        f"features equal: {same}",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
