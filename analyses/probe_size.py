"""How many probe rows does a ranking need? Each metric's ranking of the pairs on random subsets
of the probe against its ranking on the whole probe (issue 19, item 4).

Question: a user with 200 rows, which metric should they trust? For each metric and size n
(default 100, 250, 500 and 1,000 rows of ``flickr8k:dev``, which the issue-19 grid scores), R
seeded random subsets of n rows (default 5; the whole probe once) are scored with
``alignkit.score_pairs`` (raw scores, no null) and ranked against the full probe:

* Kendall tau-b to the full-probe scores over the pairs, mean and min..max over the draws, and
  how often the draw's top pair is the full-probe top pair;
* with a finished predictivity grid (``--grid``: its pairs.csv, with per-seed results, and
  noise.csv), decision accuracy at each n: the grid's ``pre/<metric>`` columns are replaced by
  the draw's scores and ``decisions_table`` (alignkit.evaluation.predictivity.decisions) is
  called per draw; its accuracy is averaged over the draws per metric, result, scope and n.

The features are extracted once on the full probe (after the grid's scoring stage: cache hits),
so the study costs only the scoring, which the held-out fits dominate.

    python analyses/probe_size.py --grid /work/runs/grid42      # docs/probe_size.{csv,png}
    python analyses/probe_size.py --set offline-small --probe flickr8k:test --n 500 \\
        --sizes 25,50,100,200,500 --no-docs                     # any encoder set, tau only

``docs/probe_size.csv``: metric, n, draws, pairs (ranked), kendall_tau_mean, kendall_tau_min,
kendall_tau_max, same_top (fraction of draws), controls_last (when controls are scored: fraction
of draws where every control pair ranks below every real pair), and with decisions
``accuracy/<scope>/<result>`` (mean over draws). ``docs/probe_size.png``: tau vs n per metric,
and accuracy vs n per scope. ``docs/probe_size_scores.csv``: every draw's raw scores (a later
run with the same settings scores only the metrics it lacks). ``docs/probe_size.json``: what
they were computed from, and each run's scored metrics and wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

import alignkit
from alignkit.errors import AlignkitError, unknown_key
from alignkit.evaluation.predictivity import CONTROL_PREFIXES, decisions_table
from alignkit.metrics import get_metric

SIZES = (100, 250, 500, 1000)
DRAWS = 5
#: the metrics issue 19 compares (a grid's own list replaces them)
METRICS = ("linear_cka_unbiased", "linear_cka", "mutual_knn", "cknna", "ridge_alignability",
           "procrustes_alignability", "cca_alignability")  # fmt: skip
DOCS = Path(__file__).resolve().parents[1] / "docs"


# -- the study ------------------------------------------------------------------------------------
def draw_rows(
    n_rows: int, sizes: Sequence[int], draws: int = DRAWS, seed: int = 0
) -> dict[int, list[np.ndarray]]:
    """The probe rows each draw scores: ``{size: [sorted (size,) int64 row indices, ...]}``.

    A size below ``n_rows`` gets ``draws`` subsets without replacement from
    ``np.random.default_rng((seed, size))``: the same for a given (seed, size) whatever other
    sizes are asked for, distinct from each other (a subset drawn twice is drawn again), and NOT
    nested (the 250-row draws are drawn afresh, not grown from the 100-row ones), so the draws of
    each size are plain random probes of that size. The size ``n_rows`` is the whole probe, once
    (it is always included: it is the reference every draw is compared with).

    Raises:
        AlignkitError: a size outside 2..n_rows, draws < 1, or fewer distinct subsets of a size
            than ``draws``.
    """
    if type(draws) is not int or draws < 1:
        raise AlignkitError(f"draws must be a positive integer: got {draws!r}")
    bad = [s for s in sizes if type(s) is not int or not 2 <= s <= n_rows]  # no bools
    if bad:
        raise AlignkitError(
            f"sizes must be integers from 2 to the probe's {n_rows} rows: got {bad}; give "
            "smaller sizes or a larger probe"
        )
    out: dict[int, list[np.ndarray]] = {}
    for size in sorted({*sizes, n_rows}):
        if size == n_rows:
            out[size] = [np.arange(n_rows, dtype=np.int64)]
            continue
        if math.comb(n_rows, size) < draws:
            raise AlignkitError(
                f"only {math.comb(n_rows, size)} distinct subsets of {size} of {n_rows} rows: "
                f"got draws={draws}; ask for fewer draws"
            )
        rng = np.random.default_rng((seed, size))
        picked: list[np.ndarray] = []
        while len(picked) < draws:
            rows = np.sort(rng.choice(n_rows, size=size, replace=False)).astype(np.int64)
            if not any(np.array_equal(rows, p) for p in picked):
                picked.append(rows)
        out[size] = picked
    return out


def score_draws(
    vision: Mapping[str, Any],
    text: Mapping[str, Any],
    metrics: Sequence[str],
    rows: Mapping[int, Sequence[np.ndarray]],
    *,
    log: Callable[[str], None] | None = None,
    **metric_options: Any,
) -> pd.DataFrame:
    """Raw scores of every pair on every draw: columns vision, text, metric, n, draw, score.

    Args:
        vision, text: ``{encoder name: (n_rows, d) features}`` of the same probe rows.
        metrics: :data:`alignkit.METRICS` names. rows: :func:`draw_rows`' subsets.
        log: called with one line per size (its wall time). metric_options: e.g. ``k=10``.
    """
    frames = []
    for size, subsets in rows.items():
        start = time.perf_counter()
        for draw, idx in enumerate(subsets):
            pick = torch.as_tensor(idx, dtype=torch.long)
            scores = alignkit.score_pairs(
                {name: torch.as_tensor(f)[pick] for name, f in vision.items()},
                {name: torch.as_tensor(f)[pick] for name, f in text.items()},
                list(metrics),
                null="none",
                progress=False,
                **metric_options,
            )
            frames.append(scores[["vision", "text", "metric", "score"]].assign(n=size, draw=draw))
        if log is not None:
            log(f"n={size}: {len(subsets)} draw(s) in {time.perf_counter() - start:.0f} s")
    return pd.concat(frames, ignore_index=True)[["vision", "text", "metric", "n", "draw", "score"]]


def per_draw(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, n, draw): pairs (ranked), kendall_tau (tau-b over the pairs, draw vs
    the largest n, which must have one draw), same_top (the draw's best pair is the reference's;
    ties go to the first pair in table order) and controls_last (every pair with a control
    encoder scores below every real pair; NaN without controls)."""
    ref_n = scores["n"].max()
    ref = scores[scores["n"] == ref_n]
    if ref["draw"].nunique() != 1:
        raise AlignkitError(f"the reference size n={ref_n} must have one draw (the whole probe)")
    ref = ref.set_index(["metric", "vision", "text"])["score"]
    out = []
    for (metric, n, draw), group in scores.groupby(["metric", "n", "draw"], sort=True):
        g = group.set_index(["vision", "text"])["score"]
        r = ref.loc[metric].reindex(g.index)
        if r.isna().any():
            raise AlignkitError(f"{metric} at n={n} draw {draw} scores pairs the reference lacks")
        control = np.array([v.startswith(CONTROL_PREFIXES) or t.startswith(CONTROL_PREFIXES)
                            for v, t in g.index])  # fmt: skip
        both = control.any() and (~control).any()
        controls_last = float(g[control].max() < g[~control].min()) if both else math.nan
        out.append(
            {
                "metric": metric,
                "n": n,
                "draw": draw,
                "pairs": len(g),
                "kendall_tau": kendalltau(g.to_numpy(), r.to_numpy()).statistic,
                "same_top": float(g.idxmax() == r.idxmax()),
                "controls_last": controls_last,
            }
        )
    return pd.DataFrame(out)


def tau_table(draws: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_draw` summarised per (metric, n): draws, pairs, kendall_tau_mean/_min/_max,
    same_top, controls_last (means over the draws; the column is left out when no draw has
    controls)."""
    table = (
        draws.groupby(["metric", "n"], sort=True)
        .agg(
            draws=("draw", "size"),
            pairs=("pairs", "first"),
            kendall_tau_mean=("kendall_tau", "mean"),
            kendall_tau_min=("kendall_tau", "min"),
            kendall_tau_max=("kendall_tau", "max"),
            same_top=("same_top", "mean"),
            controls_last=("controls_last", "mean"),
        )
        .reset_index()
    )
    return table.dropna(axis=1, how="all")


def decision_accuracy(
    scores: pd.DataFrame,
    pairs: pd.DataFrame,
    noise: Mapping[str, float],
    *,
    decide: Callable[..., pd.DataFrame] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Decision accuracy of each draw's scores, averaged over the draws of each size.

    Args:
        scores: :func:`score_draws`' table. pairs: a predictivity pairs.csv frame (vision, text,
            control, n_seeds, pre/<metric>, post/<result>); its real pairs are kept and their
            ``pre/<metric>`` columns replaced by each draw's scores (every real pair must have
            been scored). noise: ``{result: seed sd}`` (noise.csv).
        decide: the decision table function (default
            :func:`alignkit.evaluation.predictivity.decisions_table`).
        options: passed to ``decide`` (``results``, ``scopes``, ``bootstrap``, ``level``, ``seed``).

    Returns:
        One row per (metric, result, scope, n): draws, n_decisions (the same for every draw: it
        depends on the results and the noise only), accuracy (mean over draws), accuracy_min,
        accuracy_max.

    Raises:
        AlignkitError: a real pair of ``pairs`` has no score (and decisions_table's errors).
    """
    decide = decisions_table if decide is None else decide
    real = pairs[~pairs["control"].astype(bool)].reset_index(drop=True)
    metrics = sorted(scores["metric"].unique())
    keys = pd.MultiIndex.from_frame(real[["vision", "text"]])
    frames = []
    for (n, draw), group in scores.groupby(["n", "draw"], sort=True):
        table = real.copy()
        for metric in metrics:
            mine = group[group["metric"] == metric].set_index(["vision", "text"])["score"]
            values = mine.reindex(keys)
            if values.isna().any():
                missing = [f"{v} x {t}" for v, t in keys[values.isna().to_numpy()]]
                raise AlignkitError(
                    f"{metric} at n={n} has no score for the real pair(s) {missing[:3]} of the "
                    "grid: score every real pair of pairs.csv"
                )
            table[f"pre/{metric}"] = values.to_numpy()
        result = decide(table, noise, metrics=metrics, **options)
        frames.append(result.assign(n=n, draw=draw))
    both = pd.concat(frames, ignore_index=True)
    return (
        both.groupby(["metric", "result", "scope", "n"], sort=True)
        .agg(
            draws=("draw", "size"),
            n_decisions=("n_decisions", "first"),
            accuracy=("accuracy", "mean"),
            accuracy_min=("accuracy", "min"),
            accuracy_max=("accuracy", "max"),
        )
        .reset_index()
    )


def study_table(taus: pd.DataFrame, decisions: pd.DataFrame | None = None) -> pd.DataFrame:
    """docs/probe_size.csv: :func:`tau_table` with, given decisions, one ``accuracy/<scope>/
    <result>`` column of mean accuracy per scope and result."""
    if decisions is None or decisions.empty:
        return taus
    wide = decisions.pivot_table(
        index=["metric", "n"], columns=["scope", "result"], values="accuracy"
    )
    wide.columns = [f"accuracy/{scope}/{result}" for scope, result in wide.columns]
    return taus.merge(wide.reset_index(), on=["metric", "n"], how="left")


# -- the figure -----------------------------------------------------------------------------------
def plot_study(table: pd.DataFrame) -> Any:
    """From :func:`study_table`'s table: tau vs n per metric (mean, min..max bars), and one
    panel per scope of its ``accuracy/<scope>/<result>`` columns (mean over the results) vs n.
    Returns the figure."""
    import matplotlib.pyplot as plt

    accuracy = [c.split("/", 2) for c in table if c.startswith("accuracy/")]
    scopes = list(dict.fromkeys(scope for _, scope, _ in accuracy))
    fig, axes = plt.subplots(1, 1 + len(scopes), figsize=(5 * (1 + len(scopes)), 4), squeeze=False)
    ax = axes[0, 0]
    groups = list(table.groupby("metric", sort=True))
    for i, (metric, g) in enumerate(groups):
        shift = 1.03 ** (i - (len(groups) - 1) / 2)  # side by side on the log axis
        mean = g["kendall_tau_mean"].to_numpy()
        spread = [mean - g["kendall_tau_min"].to_numpy(), g["kendall_tau_max"].to_numpy() - mean]
        ax.errorbar(g["n"] * shift, mean, yerr=spread, marker="o", ms=4, capsize=2, label=metric)
    ax.set(xscale="log", xlabel="probe rows n", ylabel="Kendall τ to the full-probe ranking")
    n_pairs = int(table["pairs"].max())
    ax.set_title(f"ranking of {n_pairs} pairs (mean, min..max over draws)", fontsize=10)
    ax.legend(fontsize=7)
    for ax, scope in zip(axes[0, 1:], scopes, strict=True):
        columns = ["/".join(c) for c in accuracy if c[1] == scope]
        for metric, g in groups:
            ax.plot(g["n"], g[columns].mean(axis=1), marker="o", label=metric)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="probe rows n", ylabel="decision accuracy")
        ax.set_title(f"scope {scope} (mean over {len(columns)} results)", fontsize=10)
    fig.tight_layout()
    return fig


# -- inputs ---------------------------------------------------------------------------------------
def grid_inputs(grid: Path, decisions: bool) -> dict[str, Any]:
    """What the study takes from a predictivity grid folder: its scoring probe and n, its real
    encoders (controls left out), metrics and k, its scores.csv, and (``decisions``) its
    pairs.csv and noise.csv. Checked before any feature is read.

    Raises:
        AlignkitError: no grid config; no scores.csv yet (the features may not be cached: the
            study would extract them); with ``decisions``, no pairs.csv or noise.csv yet.
    """
    path = grid / "config.json"
    if not path.is_file():
        raise AlignkitError(f"{grid} holds no predictivity config.json; give --grid a grid folder")
    config = json.loads(path.read_text(encoding="utf-8"))["config"]
    if not (grid / "scores.csv").is_file():
        raise AlignkitError(
            f"{grid} has no scores.csv yet, so its features of {config['score_probe']} may not "
            "be cached; wait for the grid's scoring stage"
        )

    def control(spec: str) -> bool:  # as PredictivityConfig.is_control
        return spec in config.get("controls", ()) or spec.startswith(CONTROL_PREFIXES)

    out = {
        "probe": config["score_probe"],
        "n": config["score_n"],
        "vision": [v for v in config["vision"] if not control(v)],
        "text": [t for t in config["text"] if not control(t)],
        "metrics": list(config["metrics"]),
        "k": int(config.get("k", 10)),
        "scores": pd.read_csv(grid / "scores.csv"),
    }
    if decisions:
        missing = [f for f in ("pairs.csv", "noise.csv") if not (grid / f).is_file()]
        if missing:
            raise AlignkitError(
                f"{grid} has no {' or '.join(missing)} yet (the grid has not finished training "
                "its seeds): wait for it, or pass --no-decisions for the Kendall tau only"
            )
        out["pairs"] = pd.read_csv(grid / "pairs.csv")
        noise = pd.read_csv(grid / "noise.csv")
        out["noise"] = dict(zip(noise["result"], noise["sd"].astype(float), strict=True))
    return out


def full_probe_check(scores: pd.DataFrame, grid_scores: pd.DataFrame) -> float:
    """Largest |difference| of the study's full-probe scores from the grid's (should be ~0)."""
    ref = scores[scores["n"] == scores["n"].max()]
    merged = ref.merge(grid_scores, on=["vision", "text", "metric"], suffixes=("", "_grid"))
    return float((merged["score"] - merged["score_grid"]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--grid", type=Path, help="a predictivity grid folder (issue 19's)")
    source.add_argument("--set", help="an encoder set (alignkit.ENCODER_SETS), controls included")
    source.add_argument("--vision", help="comma-separated vision specs (with --text)")
    parser.add_argument("--text", help="comma-separated text specs (with --vision)")
    parser.add_argument("--probe", default="flickr8k:dev", help="probe without --grid")
    parser.add_argument("--n", type=int, default=None, help="rows of that probe (all)")
    parser.add_argument("--metrics", help="comma-separated (default: the grid's, or the 7 of #19)")
    parser.add_argument("--k", type=int, default=10, help="k of the neighbour metrics (no grid)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="subset sizes")
    parser.add_argument("--draws", type=int, default=DRAWS, help="random subsets per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-decisions", action="store_true", help="Kendall tau only")
    parser.add_argument("--bootstrap", type=int, default=0, help="decisions_table's resamples")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder of probe_size.csv/.png")
    parser.add_argument("--no-docs", action="store_true", help="print only, write nothing")
    parser.add_argument("--rescore", action="store_true", help="ignore the scores --out holds")
    args = parser.parse_args()
    if (args.vision is None) != (args.text is None):
        parser.error("--vision and --text go together")
    try:
        run(args)
    except AlignkitError as exc:
        raise SystemExit(f"error: {exc}") from None


def encoder_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The probe, encoders, metrics and k of a run without a grid (``--set`` or ``--vision``)."""
    if args.set is not None:
        if args.set not in alignkit.ENCODER_SETS:
            raise unknown_key("encoder set", args.set, list(alignkit.ENCODER_SETS))
        chosen = alignkit.ENCODER_SETS[args.set]
        vision, text = list(chosen.all_vision), list(chosen.all_text)
    else:
        vision, text = args.vision.split(","), args.text.split(",")
    return {"probe": args.probe, "n": args.n, "vision": vision, "text": text, "k": args.k,
            "metrics": list(METRICS)}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """The study as the command line asks for it: every check first, then the scoring (of the
    metrics that ``--out`` does not hold yet for the same study, unless ``--rescore``)."""
    start = time.perf_counter()
    decisions = args.grid is not None and not args.no_decisions
    inputs = grid_inputs(args.grid, decisions) if args.grid is not None else encoder_inputs(args)
    if decisions:  # the grid's own table first: its noise and columns checked before any scoring
        decisions_table(inputs["pairs"], inputs["noise"], bootstrap=0)
    metrics = args.metrics.split(",") if args.metrics else inputs["metrics"]
    for m in metrics:
        get_metric(m)  # an unknown name fails here, listing the metrics
    probe = alignkit.load_probe(inputs["probe"], n=inputs["n"], progress=False)
    rows = draw_rows(len(probe), [int(s) for s in args.sizes.split(",")], args.draws, args.seed)
    # fmt: off
    about = {"format": "alignkit.probe_size/1", "probe": probe.name,
             "fingerprint": probe.fingerprint, "rows": len(probe), "vision": inputs["vision"],
             "text": inputs["text"], "k": inputs["k"], "sizes": sorted(rows), "draws": args.draws,
             "seed": args.seed, "grid": args.grid and str(args.grid)}
    # fmt: on
    scores, runs = (None, []) if args.no_docs or args.rescore else saved_study(args.out, about)
    todo = [m for m in metrics if scores is None or m not in set(scores["metric"])]
    print(
        f"probe {probe.name}  n={len(probe)}  {len(inputs['vision'])} vision x "
        f"{len(inputs['text'])} text encoders  sizes {sorted(rows)}  draws {args.draws}  "
        f"scoring: {', '.join(todo) or 'none'} ({time.perf_counter() - start:.0f} s)"
    )
    if todo:
        vision, text = (
            {s: alignkit.extract_features(s, probe, progress=False).features for s in specs}
            for specs in (inputs["vision"], inputs["text"])
        )
        knn = {"k": inputs["k"]} if {"mutual_knn", "cknna"} & set(todo) else {}
        new = score_draws(vision, text, todo, rows, log=print, **knn)
        scores = new if scores is None else pd.concat([scores, new], ignore_index=True)
    if "scores" in inputs:
        diff = full_probe_check(scores, inputs["scores"])
        print(f"full-probe scores vs the grid's scores.csv: max |diff| {diff:.2g}")
    taus = tau_table(per_draw(scores))
    accuracy = None
    if decisions:
        accuracy = decision_accuracy(
            scores, inputs["pairs"], inputs["noise"], bootstrap=args.bootstrap, seed=args.seed
        )
    table = study_table(taus, accuracy)
    print(taus.round(3).to_string(index=False))
    if accuracy is not None:  # per result and scope in the csv; here the mean over results
        mean = accuracy.pivot_table(index=["metric", "n"], columns="scope", values="accuracy")
        print("decision accuracy, mean over results:\n" + mean.round(3).to_string())
    wall = time.perf_counter() - start
    print(f"wall time {wall:.0f} s")
    if not args.no_docs:
        this = {"scored": todo, "decisions": decisions, "wall_s": round(wall),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        write(table, scores, {**about, "runs": [*runs, this]}, args.out)


#: what must agree for a run to reuse (and add to) the per-draw scores a folder holds
SAME_STUDY = ("probe", "fingerprint", "rows", "vision", "text", "k", "sizes", "draws", "seed")


def saved_study(out: Path, about: dict[str, Any]) -> tuple[pd.DataFrame | None, list[Any]]:
    """The per-draw scores (probe_size_scores.csv) and run records of the study ``out`` holds
    when its settings (:data:`SAME_STUDY`) are ``about``'s; else ``(None, [])`` (replaced)."""
    record, saved = out / "probe_size.json", out / "probe_size_scores.csv"
    if not (record.is_file() and saved.is_file()):
        return None, []
    old = json.loads(record.read_text(encoding="utf-8"))
    changed = [k for k in SAME_STUDY if old.get(k) != about[k]]
    if changed:
        print(f"{out} holds a study with other settings ({', '.join(changed)}): replaced")
        return None, []
    return pd.read_csv(saved), list(old.get("runs", []))


def write(table: pd.DataFrame, scores: pd.DataFrame, about: dict[str, Any], out: Path) -> None:
    """Into ``out``: probe_size.csv (``table``), probe_size_scores.csv (every draw's raw scores,
    which a later run reuses), probe_size.json (what they were computed from, each run's scored
    metrics and wall time) and probe_size.png."""
    import matplotlib.pyplot as plt

    from alignkit._files import atomic_path, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    fig = plot_study(table)
    atomic_write_text(out / "probe_size_scores.csv", scores.to_csv(index=False))
    atomic_write_text(out / "probe_size.csv", table.round(4).to_csv(index=False))
    atomic_write_text(out / "probe_size.json", json.dumps(about, indent=1) + "\n")
    with atomic_path(out / "probe_size.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out / 'probe_size.csv'} (_scores.csv, .json, .png)")


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    main()
