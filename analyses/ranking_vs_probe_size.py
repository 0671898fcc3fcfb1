"""How many probe rows does a ranking need? Rank the offline-small pairs on random subsets of
a probe and compare each ranking with the one on the whole probe.

Question: at which probe size n does the order of vision x text pairs stop changing, per metric?
The features are extracted once on the full probe (and come from the cache after the first run);
each subset is scored with ``alignkit.score_pairs`` and ranked with ``alignkit.Ranking``.

    python analyses/ranking_vs_probe_size.py --probe flickr8k:test --n 500

Prints, for each metric and subset size: the mean (and min) Kendall τ between the subset ranking
and the full-probe ranking over repeats, how often the top pair is the full-probe top pair, and
how often every control pair ranks below every real pair.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

import alignkit
from alignkit.features import FeatureSet


def subset(fs: FeatureSet, rows: np.ndarray) -> FeatureSet:
    return FeatureSet(fs.features[rows], tuple(fs.ids[i] for i in rows), fs.provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--probe", default=None, help="probe spec (default: flickr8k:test or synthetic)"
    )
    parser.add_argument("--n", type=int, default=500, help="rows of the full probe")
    parser.add_argument("--set", default="offline-small", help="encoder set")
    parser.add_argument("--sizes", default="25,50,100,200", help="subset sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="random subsets per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    full = alignkit.rank_encoders(
        encoder_set=args.set,
        probe=args.probe,
        n=args.n,
        permutations=0,
        subsamples=0,
        seed=args.seed,
        progress=False,
    )
    metrics = full.metrics
    vision = [full.features[v] for v in full.vision]
    text = [full.features[t] for t in full.text]
    n_full = len(full.probe)
    print(
        f"probe {full.metadata['probe']['name']}  n={n_full}  "
        f"{len(vision)} vision x {len(text)} text encoders  ({time.perf_counter() - start:.0f} s)"
    )

    rng = np.random.default_rng(args.seed)
    refs = {m: alignkit.Ranking(full.scores, metric=m).table for m in metrics}
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for _ in range(args.repeats):
            pick = np.sort(rng.choice(n_full, size=size, replace=False))
            scores = alignkit.score_pairs(
                [subset(fs, pick) for fs in vision],
                [subset(fs, pick) for fs in text],
                metrics,
                progress=False,
            )
            for m in metrics:
                r = alignkit.Ranking(scores, metric=m, metadata=full.metadata)
                ref = refs[m]
                merged = ref.merge(r.table, on=["vision", "text"], suffixes=("_full", "_sub"))
                tau = kendalltau(merged[f"{m}_full"], merged[f"{m}_sub"]).statistic
                t = r.table
                controls_last = (
                    t.loc[t["control"], "rank"].min() > t.loc[~t["control"], "rank"].max()
                    if t["control"].any()
                    else np.nan
                )
                top, ref_top = t.iloc[0], ref.iloc[0]
                same_top = top["vision"] == ref_top["vision"] and top["text"] == ref_top["text"]
                rows.append(
                    {
                        "metric": m,
                        "n": size,
                        "tau": tau,
                        "same_top": same_top,
                        "controls_last": controls_last,
                    }
                )
    df = pd.DataFrame(rows)
    summary = df.groupby(["metric", "n"]).agg(
        tau_mean=("tau", "mean"),
        tau_min=("tau", "min"),
        same_top=("same_top", "mean"),
        controls_last=("controls_last", "mean"),
    )
    print(summary.round(3).to_string())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
