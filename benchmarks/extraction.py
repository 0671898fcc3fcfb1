"""How much does ``extract_features`` add on top of the model itself?

On real Flickr8k images and captions (``$ALIGNKIT_DATA_DIR/flickr8k``), for MobileNetV2 and
MiniLM-L6, this times, side by side in one process and at the same batch size:

* ``bare``: the model forward alone on inputs prepared beforehand: images already decoded,
  preprocessed and stacked into batches (``encoder.forward``), captions already tokenised
  (the sentence-transformers module on the token tensors);
* ``extract``: ``extract_features(encoder, probe, cache=False)``: decoding, preprocessing in
  DataLoader workers (images), tokenisation (text), batching, copying out;
* ``cached``: ``extract_features`` again on a warm cache (no model work; includes the sha256 check).

Targets (issue #3): extract / bare <= 1.15 for images, <= 1.10 for text. Repetitions alternate
bare and extract so that both see the same machine load; the table gives the ratio of the medians
and the ratio of the minima. Peak memory is the largest proportional set size (PSS: this process
plus its DataLoader workers, shared pages split between them) above its level at the start of the
phase, sampled every 250 ms. The CPU ratio (CPU seconds of the process and its workers) is robust to
other jobs on the machine but blind to overlap; the wall-clock ratio is the target.

    python benchmarks/extraction.py [--n 512] [--batch-size 64] [--repeats 3] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignkit import _paths
from alignkit.encoders import create_encoder
from alignkit.features import FeatureCache, extract_features
from alignkit.probes.base import ProbeRow, ProbeSet

IMAGE_SPEC = "torchvision:mobilenet_v2"
TEXT_SPEC = "st:sentence-transformers/all-MiniLM-L6-v2"
TARGETS = {"image": 1.15, "text": 1.10}


def flickr8k_probe(n: int) -> ProbeSet:
    """The first ``n`` Flickr8k test rows (real photos, 5 human captions each)."""
    try:
        from alignkit.probes import load_probe

        return load_probe("flickr8k:test", n=n, progress=False)
    except ImportError:  # the probe loaders are not installed: read the manifest directly
        root = _paths.data_dir() / "flickr8k"
        rows = []
        with open(root / "pairs.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                if rec["split"] == "test":
                    rows.append(
                        ProbeRow(rec["source_id"], root / rec["image"], tuple(rec["captions"]))
                    )
                if len(rows) == n:
                    break
        return ProbeSet(f"flickr8k:test[n={n}]", tuple(rows))


class PeakMemory:
    """Largest memory of this process and its children above the level at ``__enter__``:
    ``peak`` (= ``pss``) is the proportional set size, ``rss`` the resident set size summed over
    the processes. Forked workers share the parent's pages, so the RSS sum counts the model once
    per worker; PSS is the fair number."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.rss = self.pss = 0
        self._stop = threading.Event()

    @property
    def peak(self) -> int:
        return self.pss

    def _now(self) -> tuple[int, int]:
        rss = pss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except Exception:  # noqa: BLE001 - a worker exited meanwhile
                continue
            rss, pss = rss + info.rss, pss + info.pss
        return rss, pss

    def _watch(self) -> None:
        while not self._stop.wait(0.25):  # reading smaps is not free: sample sparsely
            rss, pss = self._now()
            self.rss = max(self.rss, rss - self.base[0])
            self.pss = max(self.pss, pss - self.base[1])

    def __enter__(self) -> PeakMemory:
        self.base = self._now()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], Any]) -> tuple[float, int, float]:
    """(wall seconds, peak extra resident bytes, CPU seconds incl. workers) of ``fn()``."""
    with PeakMemory() as mem:
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        took, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return took, mem.peak, cpu


def image_bare(encoder: Any, probe: ProbeSet, batch_size: int) -> Callable[[], None]:
    """Forward passes over batches decoded and preprocessed beforehand."""
    tensors = [encoder.preprocess(row.load_image()) for row in probe.rows]
    batches = [
        encoder.collate(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)
    ]

    def run() -> None:
        for batch in batches:
            encoder.forward(batch)

    return run


def text_bare(encoder: Any, probe: ProbeSet, batch_size: int) -> Callable[[], None]:
    """The sentence-transformers module on token tensors prepared beforehand."""
    captions = [row.captions[0] for row in probe.rows]
    model = encoder.model  # the SentenceTransformer inside alignkit's st: encoder
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    batches = [tokenize(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]

    def run() -> None:
        with torch.inference_mode():
            for feats in batches:
                model(dict(feats))["sentence_embedding"]

    return run


def bench(
    modality: str, spec: str, probe: ProbeSet, args: argparse.Namespace
) -> list[dict[str, Any]]:
    encoder = create_encoder(spec, device="cpu")
    bare = (image_bare if modality == "image" else text_bare)(encoder, probe, args.batch_size)
    bare()  # warm-up: first-call allocations and kernel selection
    worker_counts = args.workers if modality == "image" else [0]
    results = []
    for workers in worker_counts:

        def extract(workers: int = workers) -> Any:
            return extract_features(
                encoder,
                probe,
                batch_size=args.batch_size,
                num_workers=workers,
                cache=False,
                progress=False,
            )

        bare_t, ext_t, bare_m, ext_m, bare_c, ext_c = [], [], [], [], [], []
        for _ in range(args.repeats):  # alternate, so both see the same load
            t, m, c = timed(bare)
            bare_t.append(t), bare_m.append(m), bare_c.append(c)
            t, m, c = timed(extract)
            ext_t.append(t), ext_m.append(m), ext_c.append(c)
        results.append(
            {
                "modality": modality,
                "encoder": spec,
                "workers": workers,
                "bare_s": statistics.median(bare_t),
                "extract_s": statistics.median(ext_t),
                "ratio_median": statistics.median(ext_t) / statistics.median(bare_t),
                "ratio_min": min(ext_t) / min(bare_t),
                # CPU work ratio: robust to other jobs on the machine, blind to overlap
                "cpu_ratio": statistics.median(ext_c) / statistics.median(bare_c),
                "bare_peak_mib": max(bare_m) / 2**20,
                "extract_peak_mib": max(ext_m) / 2**20,
            }
        )
        print(
            f"  {modality} workers={workers}: wall bare {bare_t} extract {ext_t}; "
            f"cpu bare {bare_c} extract {ext_c}",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureCache(tmp)
        fill, _, _ = timed(
            lambda: extract_features(
                encoder, probe, batch_size=args.batch_size, cache=store, progress=False
            )
        )
        hit, hit_mem, _ = timed(
            lambda: extract_features(
                encoder, probe, batch_size=args.batch_size, cache=store, progress=False
            )
        )
    for r in results:
        r.update(cached_fill_s=fill, cached_hit_s=hit, cached_peak_mib=hit_mem / 2**20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", choices=["image", "text"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    probe = flickr8k_probe(args.n)
    print(
        f"{probe.name}: {len(probe)} rows; torch threads {torch.get_num_threads()}, "
        f"cores {len(os.sched_getaffinity(0))}",
        file=sys.stderr,
    )
    rows = []
    for modality, spec in (("image", IMAGE_SPEC), ("text", TEXT_SPEC)):
        if args.only in (None, modality):
            rows += bench(modality, spec, probe, args)

    header = (
        "encoder",
        "workers",
        "bare s",
        "extract s",
        "ratio (median)",
        "ratio (min)",
        "CPU ratio",
        "target",
        "peak MiB bare/extract",
        "cached s",
    )
    lines = [header]
    for r in rows:
        target = TARGETS[r["modality"]]
        verdict = "ok" if r["ratio_median"] <= target else "MISSED"
        lines.append(
            (
                r["encoder"],
                str(r["workers"]) if r["modality"] == "image" else "-",
                f"{r['bare_s']:.2f}",
                f"{r['extract_s']:.2f}",
                f"{r['ratio_median']:.3f}",
                f"{r['ratio_min']:.3f}",
                f"{r['cpu_ratio']:.3f}",
                f"<= {target} {verdict}",
                f"{r['bare_peak_mib']:.0f} / {r['extract_peak_mib']:.0f}",
                f"{r['cached_hit_s']:.3f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(
        f"\nextract_features vs bare forward, n={len(probe)}, batch {args.batch_size}, "
        f"{args.repeats} alternating repeats"
    )
    for i, line in enumerate(lines):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
