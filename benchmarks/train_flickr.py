"""Projector training on real Flickr8k features: the projector x loss table and the baseline.

    python benchmarks/train_flickr.py                       # full table (features from the cache)
    python benchmarks/train_flickr.py --n-train 1000 --grid linear:clip   # a quick look

Trains on cached pooled features of ``flickr8k:train`` (6,000 images, 30,000 captions), stops
early on ``flickr8k:dev`` (mean recall, patience 5), and reports Recall@1/5/10 on the 1,000-image
``flickr8k:test`` split: image->text (a hit when any of the image's 5 captions is in its top k)
and text->image (each of the 5,000 captions against the 1,000 images), the CLIP_benchmark
semantics. Features come from ``extract_features`` (the cache under ``$ALIGNKIT_CACHE_DIR``;
text with ``caption_policy="all"``, one row per caption), so the second run costs only training.

Rows:
* ``baseline``: the issue's reference recipe, outside-the-project numbers about R@5 49 / 44:
  linear projector, MobileNetV2 x all-MiniLM-L6-v2, one random caption per image per step,
  InfoNCE, AdamW, batch 512, early stopping on dev.
* the grid on ``--vision`` x ``--text`` (default: the best offline pair of the README ranking,
  MobileNetV2 x paraphrase-MiniLM-L3-v2): every projector x loss, all captions as positives.

Writes a markdown table to stdout and every row as JSON to ``--out`` (default
``benchmarks/results/train_flickr.json``; the folder is git-ignored if present).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

BASELINE_PAIR = ("torchvision:mobilenet_v2", "st:sentence-transformers/all-MiniLM-L6-v2")
BEST_PAIR = ("torchvision:mobilenet_v2", "onnx:paraphrase-MiniLM-L3-v2")
GRID = [f"{p}:{lo}" for p in ("linear", "mlp", "residual", "glu") for lo in ("clip", "siglip")]


def features(vision: str, text: str, split: str, n: int | None, cache_only: bool):
    """PairedFeatures of one Flickr8k split (cached extraction)."""
    from alignkit.features import extract_features, paired_features
    from alignkit.probes import load_probe

    probe = load_probe(f"flickr8k:{split}")
    if n is not None and n < len(probe):
        probe = probe.subset(range(n), name=f"{probe.name}[:{n}]")  # a prefix: cache reuse
    kw = dict(progress=False, cache=True)
    if cache_only:
        from alignkit.training.pair import require_cached

        require_cached([vision, text], probe)
    img = extract_features(vision, probe, **kw)
    txt = extract_features(text, probe, caption_policy="all", batch_size=128, **kw)
    return paired_features(img, txt)


def run(name: str, config, train, val, test) -> dict:
    from alignkit.training import train_projector
    from alignkit.training.trainer import embed, retrieval_recall

    t0 = time.perf_counter()
    result = train_projector(config, train, val, None, device="cpu", progress=False)
    seconds = time.perf_counter() - t0
    model = result.model
    img = embed(model, test.image, "image", torch.device("cpu"), torch.float32)
    txt = embed(model, test.text, "text", torch.device("cpu"), torch.float32)
    rec = retrieval_recall(img, txt, test.text_to_image)
    row = {
        "run": name,
        "projector": config.projector,
        "loss": config.loss,
        "captions": config.captions,
        "epochs": config.epochs,
        "seed": config.seed,
        "patience": config.patience,
        "params": model.num_parameters(),
        "best_step": result.best_step,
        "steps": result.steps,
        "train_s": round(seconds, 1),
        **{k: round(v, 1) for k, v in rec.items()},
        "dev_mean_recall": round(result.metrics.get("mean_recall", float("nan")), 1),
        "n_train": train.n_images,
        "n_val": val.n_images,
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| run | projector | loss | captions | params | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | "
        "R@10 | mean | best step / steps | train s |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['projector']} | {r['loss']} | {r['captions']} | "
            f"{r['params']:,} | {r['i2t_r1']} | {r['i2t_r5']} | {r['i2t_r10']} | {r['t2i_r1']} | "
            f"{r['t2i_r5']} | {r['t2i_r10']} | {r['mean_recall']} | {r['best_step']} / "
            f"{r['steps']} | {r['train_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vision", default=BEST_PAIR[0])
    parser.add_argument("--text", default=BEST_PAIR[1])
    parser.add_argument("--grid", nargs="*", default=GRID, help="projector:loss entries")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--baseline-pair",
        nargs=2,
        default=list(BASELINE_PAIR),
        metavar=("VISION", "TEXT"),
        help="pair of the baseline recipe (default: the issue's MobileNetV2 x MiniLM-L6)",
    )
    parser.add_argument("--n-train", type=int, default=None, help="first N train images only")
    parser.add_argument("--n-val", type=int, default=None, help="first N dev images only")
    parser.add_argument("--only-baseline", action="store_true")
    parser.add_argument("--captions", default="all", choices=("one", "all"), help="grid rows")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=5, help="0: never stop early")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-only", action="store_true")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_flickr.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from alignkit.training import TrainConfig

    rows = []
    base = tuple(args.baseline_pair)
    pairs = [] if args.no_baseline else [("baseline", base, ["linear:clip"], "one")]
    if not args.only_baseline:
        pairs.append(("grid", (args.vision, args.text), args.grid, args.captions))
    for label, (vision, text), grid, captions in pairs:
        t0 = time.perf_counter()
        train = features(vision, text, "train", args.n_train, args.cache_only)
        val = features(vision, text, "dev", args.n_val, args.cache_only)
        test = features(vision, text, "test", None, args.cache_only)
        print(
            f"# {label}: {vision} x {text}: train {train.n_images} images / {train.n_texts} "
            f"captions, features ready in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        for entry in grid:
            projector, loss = entry.split(":")
            config = TrainConfig(
                projector=projector,
                loss=loss,
                captions=captions,
                batch_size=512,
                epochs=args.epochs,
                patience=args.patience or None,
                lr=args.lr,
                width=args.width,
                seed=args.seed,
            )
            name = (
                label if label == "baseline" else f"{vision.split(':')[-1]} x {text.split(':')[-1]}"
            )
            rows.append(run(name, config, train, val, test))
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
