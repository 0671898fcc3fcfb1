"""Did the ranking predict the result? The offline encoders on Flickr8k (issue 12, item 5).

Every vision x text pair of the grid is scored before training on ``flickr8k:dev`` (500-row
seeded subsample; linear CKA biased and unbiased, mutual-kNN@10, each with its permutation-null
z), trained with one fixed recipe (linear projectors, InfoNCE, AdamW, early-stopped on the dev
rows) on a subset of ``flickr8k:train``, and evaluated on ``flickr8k:test`` retrieval and
``imagenet-samples`` zero-shot. The correlations of every pre-training metric with every result
(Spearman, Kendall, bootstrap intervals over pairs, leave-one-encoder-out) go to
``docs/predictivity_correlations.csv``, the per-pair table to ``docs/predictivity_pairs.csv`` and
the scatter plots to ``docs/predictivity.png``.

    python analyses/predictivity.py --grid reduced --out /tmp/pred    # what docs/ holds
    python analyses/predictivity.py --grid full --out runs/pred       # all offline-small encoders

Uses the public API only (``alignkit.predictivity``); every stage is cached, so a rerun after an
interruption continues.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from alignkit.predictivity import PredictivityConfig, run_predictivity

MOBILENET = "torchvision:mobilenet_v2"
MINILM = "st:sentence-transformers/all-MiniLM-L6-v2"
GRIDS = {
    # offline-small: 3 vision + the random-init control, 4 text + the random-init control
    "full": {
        "vision": (
            MOBILENET,
            "efficientnet-lite:efficientnet_lite0",
            "onnx:sscd_distilled",
            f"random-init:{MOBILENET}",
        ),
        "text": (
            MINILM,
            "st:sentence-transformers/all-mpnet-base-v2",
            "onnx:paraphrase-MiniLM-L3-v2",
            "wordllama:l2_supercat",
            f"random-init:{MINILM}",
        ),
    },
    # what 2 heavily shared cores allowed on the day (see docs/evaluation.md): EfficientNet-Lite0
    # and MPNet-base left out, both controls kept; retrieval only (no zero-shot)
    "reduced": {
        "zeroshot": (),
        "vision": (MOBILENET, "onnx:sscd_distilled", f"random-init:{MOBILENET}"),
        "text": (
            MINILM,
            "onnx:paraphrase-MiniLM-L3-v2",
            "wordllama:l2_supercat",
            f"random-init:{MINILM}",
        ),
    },
}
COMMON = {
    "score_probe": "flickr8k:dev",
    "score_n": 500,
    "train_probe": "flickr8k:train",
    "train_n": 1000,
    "val_probe": "flickr8k:dev",
    "val_n": 500,
    "train_captions": "first",
    "zeroshot": ("imagenet-samples",),
    "retrieval": ("flickr8k:test",),
    "eval_n": {"imagenet-samples": 300, "flickr8k:test": 500},
    "templates": "single",
    "metrics": ("linear_cka_unbiased", "linear_cka", "mutual_knn"),
    "permutations": 100,
    "train": {
        "projector": "linear",
        "loss": "clip",
        "width": 256,
        "epochs": 40,
        "batch_size": 128,
        "lr": 1e-3,
        "patience": 8,
    },
    "bootstrap": 1000,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="reduced")
    parser.add_argument("--out", type=Path, default=Path("runs/predictivity"))
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--no-docs", action="store_true", help="do not copy results into docs/")
    parser.add_argument("--scores-only", action="store_true", help="stop after scoring the pairs")
    parser.add_argument(
        "--finished-only", action="store_true", help="analyse the evaluated pairs, train no more"
    )
    parser.add_argument(
        "--only-vision", help="train and evaluate only this vision encoder's pairs (parallel runs)"
    )
    args = parser.parse_args()

    config = PredictivityConfig(**{**COMMON, **GRIDS[args.grid]})
    t0 = time.perf_counter()
    only = [(args.only_vision, t) for t in reversed(config.text)] if args.only_vision else None
    result = run_predictivity(
        config,
        args.out,
        device="cpu",
        progress=False,
        stop_after="scores" if args.scores_only else None,
        only=only,
        skip_unfinished=args.finished_only,
    )
    if only is not None:
        print(f"{len(only)} pairs of {args.only_vision} done in {time.perf_counter() - t0:.0f} s")
        return
    if result is None:
        print(f"scores written to {args.out / 'scores.csv'} in {time.perf_counter() - t0:.0f} s")
        return
    wall = time.perf_counter() - t0
    summary = {"grid": args.grid, "wall_s_this_call": round(wall, 1), **result.timings}
    (args.out / "timing.json").write_text(json.dumps(summary, indent=2))

    cols = ["pre", "kind", "post", "spearman", "spearman_low", "spearman_high", "kendall",
            "loeo_min", "rho_no_controls"]  # fmt: skip
    print(result.correlations[cols].round(2).to_string(index=False))
    print(json.dumps(summary))
    if not args.no_docs:
        args.docs.mkdir(exist_ok=True)
        shutil.copy(args.out / "pairs.csv", args.docs / "predictivity_pairs.csv")
        shutil.copy(args.out / "correlations.csv", args.docs / "predictivity_correlations.csv")
        shutil.copy(args.out / "predictivity.png", args.docs / "predictivity.png")


if __name__ == "__main__":
    main()
