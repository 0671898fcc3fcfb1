"""The default training recipe against a small sweep, at 500 to 6,000 Flickr8k training images.

    python benchmarks/small_data.py                 # both pairs, every size (about 2 h, 1 core)
    python benchmarks/small_data.py --pairs best --sizes 500 1000

For each pair and each size N (the seeded subsample ``flickr8k:train`` ``.subsample(N)``, the rows
``alignkit train --n N`` trains on; the sizes are nested), this trains

* the default recipe: ``TrainConfig()`` (``batch_size``/``epochs`` ``"auto"``, resolved for N by
  :func:`alignkit.training.recipe.resolve_recipe`), and
* a sweep of batch x epochs at lr 1e-3 (batches of N/16 to N/2 images, schedules of at most
  MAX_SWEEP_STEPS steps), then lr 5e-4 and 2e-3 at the best (batch, epochs) of that stage,

every run with the other defaults (linear projector, InfoNCE, every caption, patience 5 on
``flickr8k:dev`` mean recall, seed 0), on cached pooled features, one thread. Model selection
uses dev only; ``flickr8k:test`` recall is measured for the default runs (and reported, not used).

Writes ``--out``/small_data.jsonl (one JSON line a run, appended as it finishes: a rerun skips the
runs already there), small_data.csv and small_data.md (the summary table: per pair and size, the
best sweep entry, the default and the gap), and prints the table and one JSON summary line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import torch

PAIRS = {
    "best": ("torchvision:mobilenet_v2", "onnx:paraphrase-MiniLM-L3-v2"),
    "minilm-l6": ("torchvision:mobilenet_v2", "st:sentence-transformers/all-MiniLM-L6-v2"),
}
SIZES = (500, 1000, 2000, 6000)
BATCHES = (32, 64, 128, 256, 512)  # those within [n / 16, n / 2] at n images
EPOCHS = (10, 20)
LRS = (5e-4, 2e-3)  # stage 2, around stage 1's 1e-3
MAX_SWEEP_STEPS = 600  # sweep entries with a longer schedule are left out (cost)


def pair_features(vision: str, text: str, split: str, n: int | None = None):
    """PairedFeatures (pooled; text: every caption) of one Flickr8k split, or of its seeded
    subsample of ``n`` rows (the rows ``alignkit train --n`` takes; smaller subsamples are its
    prefixes), through the feature cache."""
    from alignkit.features import extract_features, paired_features
    from alignkit.probes import load_probe

    probe = load_probe(f"flickr8k:{split}")
    if n is not None and n < len(probe):
        probe = probe.subsample(n)
    img = extract_features(vision, probe, progress=False)
    txt = extract_features(text, probe, caption_policy="all", batch_size=128, progress=False)
    return paired_features(img, txt)


def take_images(data, ids: list[str]):
    """The PairedFeatures of the images ``ids`` (in that order) with their captions."""
    from alignkit.training import PairedFeatures

    row_of = {k: i for i, k in enumerate(data.image_ids)}
    rows = torch.tensor([row_of[k] for k in ids])
    new_row = torch.full((data.n_images,), -1, dtype=torch.int64)
    new_row[rows] = torch.arange(len(rows))
    keep = new_row[data.text_to_image] >= 0
    return PairedFeatures(
        data.image[rows], data.text[keep], new_row[data.text_to_image[keep]], list(ids)
    )


def sweep_stage1(n: int) -> list[tuple[int, int, float]]:
    """(batch, epochs, lr) of the first stage at ``n`` images."""
    out = []
    for b in BATCHES:
        if not n / 16 <= b <= n / 2:
            continue
        for e in EPOCHS:
            if e * (n // b) <= MAX_SWEEP_STEPS:
                out.append((b, e, 1e-3))
    return out


def run_one(config, train, val, test) -> dict:
    from alignkit.training import train_projector
    from alignkit.training.validation import embed, retrieval_recall

    t0 = time.perf_counter()
    result = train_projector(config, train, val, None, device="cpu", progress=False)
    row = {
        "batch_size": result.config.batch_size,
        "epochs": result.config.epochs,
        "lr": result.config.lr,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_s": round(time.perf_counter() - t0, 1),
        "dev_mean_recall": round(result.metrics["mean_recall"], 2),
    }
    if test is not None:
        cpu = torch.device("cpu")
        img = embed(result.model, test.image, "image", cpu, torch.float32)
        txt = embed(result.model, test.text, "text", cpu, torch.float32)
        row.update(
            {
                f"test_{k}": round(v, 2)
                for k, v in retrieval_recall(img, txt, test.text_to_image).items()
            }
        )
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Per (pair, n): the best sweep entry on dev, the default, and the gap."""
    out = []
    keys = sorted({(r["pair"], r["n"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for pair, n in keys:
        mine = [r for r in rows if r["pair"] == pair and r["n"] == n]
        sweep = [r for r in mine if r["kind"] == "sweep"]
        default = [r for r in mine if r["kind"] == "default"]
        if not sweep or not default:
            continue
        best, d = max(sweep, key=lambda r: r["dev_mean_recall"]), default[0]
        before = next((r for r in mine if r["kind"] == "before"), {})
        out.append(
            {
                "pair": pair,
                "n": n,
                "sweep_runs": len(sweep),
                "best_batch": best["batch_size"],
                "best_epochs": best["epochs"],
                "best_lr": best["lr"],
                "best_dev": best["dev_mean_recall"],
                "default_batch": d["batch_size"],
                "default_epochs": d["epochs"],
                "default_lr": d["lr"],
                "default_best_step": d["best_step"],
                "default_dev": d["dev_mean_recall"],
                "gap": round(best["dev_mean_recall"] - d["dev_mean_recall"], 2),
                "default_test_i2t_r5": d.get("test_i2t_r5"),
                "default_test_t2i_r5": d.get("test_t2i_r5"),
                "before_dev": before.get("dev_mean_recall"),
                "before_test_i2t_r5": before.get("test_i2t_r5"),
                "before_test_t2i_r5": before.get("test_t2i_r5"),
            }
        )
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| pair | N | sweep runs | best (batch / epochs / lr) | best dev | default (batch / "
        "epochs / lr) | default dev | gap | default test R@5 i2t / t2i | before dev | before "
        "test R@5 i2t / t2i |",
        "|" + "---|" * 11,
    ]
    for s in summary:
        lines.append(
            f"| {s['pair']} | {s['n']:,} | {s['sweep_runs']} | {s['best_batch']} / "
            f"{s['best_epochs']} / {s['best_lr']:g} | {s['best_dev']:.1f} | "
            f"{s['default_batch']} / {s['default_epochs']} / {s['default_lr']:g} | "
            f"{s['default_dev']:.1f} | {s['gap']:+.1f} | {s['default_test_i2t_r5']:.1f} / "
            f"{s['default_test_t2i_r5']:.1f} | {s['before_dev']:.1f} | "
            f"{s['before_test_i2t_r5']:.1f} / {s['before_test_t2i_r5']:.1f} |"
        )
    return "\n".join(lines)


def sweep_markdown(rows: list[dict]) -> str:
    """Every run: dev mean recall per (pair, n) and (batch, epochs, lr)."""
    lines = ["| pair | N | kind | batch | epochs | lr | best step / steps | dev mean | s |"]
    lines.append("|" + "---|" * 9)
    for r in sorted(
        rows, key=lambda r: (r["pair"], r["n"], r["kind"], r["batch_size"], r["epochs"], r["lr"])
    ):
        lines.append(
            f"| {r['pair']} | {r['n']} | {r['kind']} | {r['batch_size']} | {r['epochs']} | "
            f"{r['lr']:g} | {r['best_step']} / {r['steps']} | {r['dev_mean_recall']:.2f} | "
            f"{r['train_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--default-only", action="store_true", help="no sweep")
    parser.add_argument("--sweep-only", action="store_true", help="no default run")
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("ALIGNKIT_THREADS", 1)))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from alignkit.probes import load_probe
    from alignkit.training import TrainConfig

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "small_data.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    done = {(r["pair"], r["n"], r["kind"], r["batch_size"], r["epochs"], r["lr"]) for r in rows}
    probe = load_probe("flickr8k:train")

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")

    for pair in args.pairs:
        vision, text = PAIRS[pair]
        # one extraction for every size: the largest subsample (the others are its prefixes)
        full = pair_features(vision, text, "train", max(args.sizes))
        val = pair_features(vision, text, "dev")
        test = None if args.sweep_only else pair_features(vision, text, "test")
        for n in args.sizes:
            train = take_images(full, list(probe.subsample(n, seed=args.subset_seed).ids))
            base = {"pair": pair, "vision": vision, "text": text, "n": n}
            has = {r["kind"] for r in rows if r["pair"] == pair and r["n"] == n}
            if not args.sweep_only and "before" not in has:  # the old default: 512 x 10 epochs
                config = TrainConfig(batch_size=min(512, n), epochs=10)
                record({**base, "kind": "before", **run_one(config, train, val, test)})
            if not args.sweep_only and "default" not in has:
                record({**base, "kind": "default", **run_one(TrainConfig(), train, val, test)})
            if args.default_only:
                continue
            stage1 = sweep_stage1(n)
            for b, e, lr in stage1:
                if (pair, n, "sweep", b, e, lr) not in done:
                    config = TrainConfig(batch_size=b, epochs=e, lr=lr)
                    record({**base, "kind": "sweep", **run_one(config, train, val, None)})
            first = [
                r
                for r in rows
                if r["pair"] == pair and r["n"] == n and r["kind"] == "sweep" and r["lr"] == 1e-3
            ]
            top = sorted(first, key=lambda r: -r["dev_mean_recall"])[:1]
            for r in top:
                for lr in LRS:
                    key = (pair, n, "sweep", r["batch_size"], r["epochs"], lr)
                    if key not in done and not math.isnan(r["dev_mean_recall"]):
                        config = TrainConfig(batch_size=r["batch_size"], epochs=r["epochs"], lr=lr)
                        record({**base, "kind": "sweep", **run_one(config, train, val, None)})
                        done.add(key)

    summary = summarise(rows)
    with (args.out / "small_data.csv").open("w", newline="") as f:
        if summary:
            w = csv.DictWriter(f, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    table = markdown(summary)
    (args.out / "small_data.md").write_text(table + "\n\n" + sweep_markdown(rows) + "\n")
    print(table)
    worst = max((s["gap"] for s in summary), default=float("nan"))
    print(
        json.dumps(
            {"benchmark": "small_data", "rows": len(rows), "worst_gap": worst, "summary": summary}
        )
    )


if __name__ == "__main__":
    main()
