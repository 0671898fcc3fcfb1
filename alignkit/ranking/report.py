"""What a :class:`~alignkit.ranking.Ranking` shows people: figures, the console table, summary.md.

Each function takes the Ranking first; the Ranking's methods of the same names call them. Figures
draw on a given matplotlib Axes (or a new one) and return it (see :mod:`alignkit.plots`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alignkit import plots
from alignkit._words import counted
from alignkit.metrics.calibration import P_FLOOR

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from alignkit.ranking.result import RankingResult


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def p_text(p: float, log10_p: float = math.nan) -> str:
    """A p-value as tables show it: 3 decimals down to 0.001 (``0.012``), then two significant
    digits from its log10 down to :data:`~alignkit.metrics.calibration.P_FLOOR` (``2.3e-04``),
    and ``< 1e-4`` below that floor, where the analytic null's tail was never checked against
    permutations (also where p underflows to 0 or lies beyond the null law's range; the CSVs
    keep the exact ``log10_p``); ``–`` without a p."""
    if p is None or not np.isfinite(p):
        return "–"
    if p >= 0.001:
        return f"{p:.3f}"
    if log10_p is None or np.isnan(log10_p):  # no log10 (an older table): from p itself
        log10_p = math.log10(p) if p > 0 else -math.inf
    floor = math.log10(P_FLOOR)
    if log10_p < floor:
        return f"< 1e{round(floor)}"
    exponent = math.floor(log10_p)
    mantissa = round(10 ** (log10_p - exponent), 1)
    if mantissa >= 10:
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.1f}e{exponent:+03d}"


def title(r: RankingResult, what: str) -> str:
    """``"<what> — <probe>, n=<rows>"`` for a figure of ``r``."""
    probe = r.metadata.get("probe", {}).get("name")
    where = str(probe).split("[")[0] if probe else "probe"  # "flickr8k:test[n=500,seed=0]"
    if r.n is not None:
        where += f", n={r.n}"
    return f"{what} — {where}"


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def heatmap_order(r: RankingResult) -> tuple[list[str], list[str]]:
    """One row and column order for every metric's heatmap: encoders by their mean score under
    the primary metric (best first), real encoders before controls."""
    main = r.main_scores[r.main_scores["metric"] == r.metric]
    controls = set(r.controls)

    def ordered(side: str) -> list[str]:
        means = main.groupby(side, sort=False)["score"].mean().sort_values(ascending=False)
        names = list(means.index)
        return [e for e in names if e not in controls] + [e for e in names if e in controls]

    return ordered("vision"), ordered("text")


def plot_heatmap(r: RankingResult, metric: str | None = None, *, ax: Axes | None = None) -> Axes:
    metric = metric or r.metric
    return plots.heatmap(
        r.main_scores,
        metric,
        ax=ax,
        alpha=r.alpha,
        title=title(r, plots.metric_label(metric)),
        order=heatmap_order(r),
        controls=r.controls,
    )


def plot_agreement(r: RankingResult, *, ax: Axes | None = None) -> Axes:
    tau = r.agreement()
    n_pairs = tau.attrs["n_pairs"]
    what = f"Metric agreement (Kendall τ) over {counted(n_pairs, 'real pair')}"
    return plots.agreement_heatmap(
        tau, ax=ax, n_pairs=n_pairs, title=title(r, what).replace(" — ", "\n")
    )


def plot_top_pairs(
    r: RankingResult, top: int = 10, *, metric: str | None = None, ax: Axes | None = None
) -> Axes:
    metric = metric or r.metric
    what = f"Top pairs by {plots.metric_label(metric)}"
    return plots.top_pairs(
        r.main_scores, metric, top=top, ax=ax, alpha=r.alpha, title=title(r, what)
    )


def plot_layers(r: RankingResult, vision: str, text: str, *, ax: Axes | None = None) -> Axes:
    """One pair's layer x layer heatmap on the colour scale shared by all pairs of the run
    (widened to the metric's chance level where it has one, which is marked on it)."""
    from alignkit.metrics import METRICS

    lr = r.layer_result(vision, text)
    values = np.concatenate([x.scores.ravel() for x in r.layers])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (None, None)
    chance = None
    if lr.metric in METRICS and r.n:
        k = r.main_scores["k"].dropna()
        options = {"k": int(k.iloc[0])} if len(k) and "k" in METRICS[lr.metric].defaults else {}
        chance = METRICS[lr.metric].chance_level(r.n, **options)
    if chance is not None and np.isfinite(chance) and low is not None:
        low, high = min(low, chance), max(high, chance)  # the scale shows where chance sits
    return plots.layer_heatmap(
        lr.scores,
        ax=ax,
        metric=lr.metric,
        vision=vision,
        text=text,
        p_max=lr.p_max,
        vmin=low,
        vmax=high,
        chance=chance,
    )


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------
def format_table(r: RankingResult, top: int = 10) -> str:
    """Fixed-width table of the ``top`` pairs: rank, short names, score, interval, z, p, ranks
    under the other metrics, and a note (``control`` or ``n.s.``)."""
    t = r.top(top)
    names = plots.short_labels([*t["vision"], *t["text"]], max_len=26)
    m = r.metric
    rows = []
    for _, row in t.iterrows():
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if np.isfinite(row["ci_low"]) else ""
        cells = {
            "#": int(row["rank"]),
            "vision": names[row["vision"]],
            "text": names[row["text"]],
            plots.metric_label(m): f"{row[m]:.3f}",
            "interval": ci,
            "z": f"{row[f'{m}_z']:.1f}" if np.isfinite(row[f"{m}_z"]) else "",
            "p": p_text(row[f"{m}_p"], row[f"{m}_log10_p"]) if np.isfinite(row[f"{m}_p"]) else "",
        }
        for other in r.metrics[1:]:
            cells[f"rank {plots.metric_label(other)}"] = int(row[f"rank_{other}"])
        cells[""] = (
            "control" if row["control"] else ("" if row["significant"] is not False else "n.s.")
        )
        rows.append(cells)
    df = pd.DataFrame(rows)
    if "interval" in df.columns and not df["interval"].any():
        df = df.drop(columns=["interval"])
    return df.to_string(index=False)


def _agreement_lines(r: RankingResult) -> list[str]:
    tau = r.agreement()
    n_pairs = tau.attrs["n_pairs"]
    head = f"## Metric agreement (Kendall τ between rankings, {counted(n_pairs, 'real pair')})"
    lines = ["", head, ""]
    if tau.attrs["too_few"]:
        lines.append(
            f"- too few pairs to judge agreement ({counted(n_pairs, 'real pair')}; τ means "
            f"little below {_min_pairs()}): rank more encoders"
        )
    for i, a in enumerate(r.metrics):
        for b in r.metrics[i + 1 :]:
            lines.append(
                f"- {plots.metric_label(a)} vs {plots.metric_label(b)}: "
                f"τ = {_num(tau.loc[a, b], 2)}"
            )
    dis = r.disagreements(3, controls=False)
    if len(dis):
        lines.append(
            "- largest disagreements (real pairs): "
            + "; ".join(
                f"`{plots.short_label(d.vision)}` × `{plots.short_label(d.text)}` (ranks "
                + ", ".join(str(int(getattr(d, f"rank_{mm}"))) for mm in r.metrics)
                + ")"
                for d in dis.itertuples()
            )
        )
    return lines


def _verdict_lines(r: RankingResult) -> list[str]:
    """p at its floor, the pairs tied with the best, and a one-line recommendation."""
    lines = [""]
    floor = r.p_at_floor()
    b = int(r.metadata.get("config", {}).get("permutations", 0) or 0)
    if len(floor):
        have = "has" if len(floor) == 1 else "have"
        lines.append(
            f"- p at its floor: {len(floor)} of the scores {have}"
            f" p = 1/(B+1) = {1 / (b + 1):.3g}, the smallest {counted(b, 'permutation')} can give;"
            " more permutations (or the analytic null of the CKA family) resolve smaller p."
        )
    below = int((r.table[f"{r.metric}_log10_p"] < math.log10(P_FLOOR)).sum())
    if below:
        lines.append(
            f"- p < 1e-4 for {counted(below, 'pair')}: printed as such, since the analytic null's"
            " tail was checked against permutations only down to there; scores.csv keeps the"
            " exact log10_p."
        )
    real = r.table[~r.table["control"]]
    if real.empty:
        return lines
    best = real.iloc[0]
    name = f"`{plots.short_label(best['vision'])}` × `{plots.short_label(best['text'])}`"
    tied = r.tied_with_best()
    if len(tied):
        names = ", ".join(
            f"`{plots.short_label(v)}` × `{plots.short_label(t)}`"
            for v, t in zip(tied["vision"], tied["text"], strict=True)
        )
        lines.append(f"- statistically tied with the best (intervals overlap {name}'s): {names}")
    if len(tied) >= max(2, len(real) // 2):
        lines.append(
            f"- n = {r.n} is small for this many pairs: {len(tied)} of "
            f"{counted(len(real), 'real pair')} cannot be told apart from the best; rank on more "
            "rows."
        )
    significant = best["significant"] is not False
    if not significant:
        advice = "no real pair is above chance here: check the probe and the encoders"
    elif len(tied):
        others = "the pair" if len(tied) == 1 else f"one of the {len(tied)} pairs"
        advice = (
            f"align {name} or {others} tied with it; a short training run on each breaks the tie"
        )
    elif not np.isfinite(best["ci_low"]):
        advice = f"align {name} (no intervals were computed, so ties cannot be judged)"
    else:
        advice = f"align {name}: it is ahead of every other pair beyond their intervals"
    lines.append(f"- **Recommendation**: {advice}.")
    return lines


def _setting(cfg: dict, key: str, noun: str) -> str:
    """``"100 permutations"`` from a run's config (``"? permutations"`` when it lacks the key)."""
    value = cfg.get(key)
    return counted(value, noun) if isinstance(value, int) else f"{value or '?'} {noun}s"


def _min_pairs() -> int:
    from alignkit.ranking.result import MIN_AGREEMENT_PAIRS

    return MIN_AGREEMENT_PAIRS


# Decision accuracy (chance 0.5) of the 42-pair study of issue 19: how often a metric's raw score
# named the better-training pair of two, mean over its six results, all pairs of pairs, at n rows
# of flickr8k:dev (docs/probe_size.csv; n = 1,000: docs/predictivity_decisions.csv).
_DECIDES = {
    "mutual_knn": {100: 0.89, 250: 0.93, 500: 0.96, 1000: 0.97},
    "ridge_alignability": {100: 0.93, 250: 0.96, 500: 0.98, 1000: 0.98},
    "linear_cka_unbiased": {100: 0.88, 250: 0.88, 500: 0.87, 1000: 0.87},
}


def metric_reason(metric: str, n: int | None) -> str:
    """Why ``metric`` orders the ranking, for summary.md: the study's decision accuracy of the
    metric and of its alternatives at the probe size nearest ``n`` rows; "" for other metrics."""
    if metric not in ("mutual_knn", "ridge_alignability"):
        return ""
    size = min(_DECIDES[metric], key=lambda k: abs(math.log(k / max(n or 1000, 1))))
    acc = {m: by_n[size] for m, by_n in _DECIDES.items()}
    text = (
        f"- why {plots.metric_label(metric)}: on 42 trained Flickr8k pairs its score named the "
        f"better-training pair of two {acc[metric]:.0%} of the time at {size} rows (unbiased CKA "
        f"{acc['linear_cka_unbiased']:.0%}; docs/evaluation.md)"
    )
    if metric == "mutual_knn" and size < 500:
        text += (
            f"; with this few rows `--metric ridge_alignability` first decided better "
            f"({acc['ridge_alignability']:.0%})"
        )
    return text


def summary(r: RankingResult, top: int = 10) -> str:
    """Markdown: the run's facts, the top pairs, agreement, controls, layers, skipped encoders."""
    md = r.metadata
    probe = md.get("probe", {})
    lines = [f"# Encoder ranking: {probe.get('name', 'probe')}", ""]
    facts = [
        f"- probe: `{probe.get('name', '?')}`, n = {r.n if r.n is not None else '?'} rows"
        + (f", fingerprint `{probe['fingerprint']}`" if probe.get("fingerprint") else ""),
        f"- {len(r.vision)} vision × {counted(len(r.text), 'text encoder')} = "
        f"{counted(len(r.table), 'pair')}"
        + (f" (controls: {', '.join(f'`{c}`' for c in r.controls)})" if r.controls else ""),
        f"- metrics: {', '.join(plots.metric_label(m) for m in r.metrics)}; ranked by "
        f"**{plots.metric_label(r.metric)}**",
    ]
    reason = metric_reason(r.metric, r.n)
    if reason:
        facts.append(reason)
    cfg = md.get("config", {})
    if cfg:
        facts.append(
            f"- null: {_setting(cfg, 'permutations', 'permutation')} of the pairing; intervals: "
            f"{_setting(cfg, 'subsamples', 'subsample')}; significant = p < {r.alpha:g}; "
            f"seed {cfg.get('seed', '?')}"
        )
    total = md.get("timings", {}).get("total_s")
    if total is not None:
        facts.append(f"- time: {total:.1f} s")
    lines += [*facts, "", f"## Top pairs by {plots.metric_label(r.metric)}", ""]
    m = r.metric
    others = [f"rank ({plots.metric_label(o)})" for o in r.metrics[1:]]
    header = ["#", "vision", "text", "score", "interval", "z", "p", *others]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for _, row in r.top(top).iterrows():
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if np.isfinite(row["ci_low"]) else "–"
        cells = [
            str(int(row["rank"])),
            f"`{row['vision']}`",
            f"`{row['text']}`",
            f"{row[m]:.3f}",
            ci,
            _num(row[f"{m}_z"], 1),
            p_text(row[f"{m}_p"], row[f"{m}_log10_p"]),
            *[str(int(row[f"rank_{o}"])) for o in r.metrics[1:]],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _verdict_lines(r)
    if len(r.metrics) > 1:
        lines += _agreement_lines(r)
    if r.controls:
        ctl = r.table[r.table["control"]]
        real = r.table[~r.table["control"]]
        if len(ctl) and len(real):
            lines += [
                "",
                f"Controls: best control pair ranks {int(ctl['rank'].min())} of {len(r.table)}; "
                f"worst real pair ranks {int(real['rank'].max())}.",
            ]
    if r.layers:
        lines += ["", "## Best layer pairs (p corrected for the maximum over layer pairs)", ""]
        for lr in r.layer_table().head(top).itertuples():
            lines.append(
                f"- `{plots.short_label(lr.vision)}` L{lr.best_vision_layer} × "
                f"`{plots.short_label(lr.text)}` "
                f"L{lr.best_text_layer}: {lr.best_score:.3f} (last layers {lr.last_score:.3f}), "
                f"p = {lr.p_max_corrected:.3g} corrected, {lr.p_best_uncorrected:.3g} uncorrected"
            )
    skipped = probe.get("skipped_rows") or []
    if skipped:
        lines += [
            "",
            f"Skipped {counted(len(skipped), 'bad probe row')} (skip_bad): "
            + "; ".join(f"`{d['id']}`: {d.get('reason', '?')}" for d in skipped[:20])
            + ("; ..." if len(skipped) > 20 else ""),
        ]
    failed = md.get("failed_encoders")
    if failed:
        lines += [
            "",
            "Skipped (failed to load): "
            + "; ".join(f"`{f['spec']}`: {f['error']}" for f in failed),
        ]
    return "\n".join(lines) + "\n"


__all__ = [
    "format_table",
    "p_text",
    "plot_agreement",
    "plot_heatmap",
    "plot_layers",
    "plot_top_pairs",
    "summary",
    "title",
]
