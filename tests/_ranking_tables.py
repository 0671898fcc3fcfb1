"""Score tables with a known structure, for the ranking, plot and CLI tests (no models)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from alignkit.metrics import SCORE_COLUMNS

VISION = (
    "torchvision:mobilenet_v2",
    "efficientnet-lite:efficientnet_lite0",
    "onnx:sscd",
    "random-init:torchvision:mobilenet_v2",
)
TEXT = (
    "st:sentence-transformers/all-MiniLM-L6-v2",
    "st:sentence-transformers/all-mpnet-base-v2",
    "wordllama:l2_supercat",
)
METRICS = ("linear_cka_unbiased", "linear_cka", "mutual_knn")


def make_scores(
    seed: int = 0, vision=VISION, text=TEXT, metrics=METRICS, n: int = 200, null: bool = True
) -> pd.DataFrame:
    """Long-form scores: real pairs well above a null, random-init pairs at the null.

    Each metric gets its own noise so the metrics disagree on some close pairs.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for v in vision:
        for t in text:
            signal = 0.0 if v.startswith("random") else rng.uniform(0.05, 0.4)
            for m in metrics:
                floor = {"linear_cka": 0.3, "mutual_knn": 10 / (n - 1)}.get(m, 0.0)
                sd = 0.01
                score = floor + signal + rng.normal(0, 0.03 if signal else sd)
                z = (score - floor) / sd if null else np.nan
                p = (1 / 101 if z > 3 else min(1.0, 0.5 + 0.1 * abs(z))) if null else np.nan
                rows.append(
                    {
                        "vision": v,
                        "text": t,
                        "metric": m,
                        "score": score,
                        "null_mean": floor if null else np.nan,
                        "null_std": sd if null else np.nan,
                        "z": z,
                        "p": p,
                        "log10_p": np.log10(p),
                        "null_method": "permutation" if null else "none",
                        "ci_low": score - 0.02,
                        "ci_high": score + 0.02,
                        "chance": 10 / (n - 1) if m == "mutual_knn" else np.nan,
                        "n": n,
                        "k": 10 if m == "mutual_knn" else np.nan,
                        "vision_layer": -1,
                        "text_layer": -1,
                        "options": json.dumps({"k": 10} if m == "mutual_knn" else {}),
                    }
                )
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
