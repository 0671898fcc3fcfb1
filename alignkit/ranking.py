"""Rank every vision x text encoder pair of a probe set: the main job of alignkit.

``rank_encoders`` loads a probe set, extracts (or reads from the cache) the features of every
encoder, scores every pair with each metric and its permutation null (``score_pairs``), and
returns a :class:`Ranking`: the long-form scores table, the ranking table (pairs ordered by the
primary metric, with their rank under every other metric), the agreement between metrics
(Kendall τ), the optional layer x layer results, and the run's metadata. The same object draws
every figure on a given matplotlib Axes and writes the run folder (:meth:`Ranking.save`), so the
CLI and the notebooks show the same things.

Method: Maniparambil et al. (2024), "From Unimodal to Multimodal: Scaling up Projectors to Align
Modalities" rank pairs by linear CKA on paired image/caption features; Huh et al. (2024), "The
Platonic Representation Hypothesis" by mutual-kNN. Scores are calibrated by a permutation null
(shuffle the pairing of rows), because a raw biased CKA has a large floor at small n.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignkit import plots
from alignkit.config import DEFAULT_METRICS, DEFAULT_N, DEFAULT_SET, EncoderEntry, RankConfig
from alignkit.errors import AlignkitError, unknown_key

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from alignkit.features import FeatureSet
    from alignkit.probes import ProbeSet

log = logging.getLogger(__name__)

RANKING_FILE = "ranking.csv"
SCORES_FILE = "scores.csv"
RUN_FILE = "run.json"
CONTROL_PREFIXES = ("random-init:", "random:")
NEIGHBOUR_METRICS = ("mutual_knn", "cknna")


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerResult:
    """Layer x layer scores of one pair under one metric.

    Attributes:
        scores: ``(Lv, Lt)``; ``scores[i, j]`` = metric(vision layer i, text layer j).
        best: ``(i, j)`` of the maximum.
        p_max: permutation p of the maximum against the null of the maximum over all layer pairs,
            ``(1 + #{b: max_ij null[b, i, j] >= max_ij scores}) / (B + 1)`` — the correction for
            having picked the best of ``Lv * Lt`` layer pairs (the same B permutations for every
            cell, so the max-null keeps their dependence; Westfall & Young 1993 max-T).
        p_best_uncorrected: the best cell's p against its own null alone (what a raw maximum,
            as in platonic-rep's layer search, would claim).
        null_max_mean: mean over permutations of the maximum over layer pairs.
    """

    vision: str
    text: str
    metric: str
    scores: np.ndarray
    best: tuple[int, int]
    p_max: float
    p_best_uncorrected: float
    null_max_mean: float
    n_permutations: int

    @property
    def best_score(self) -> float:
        return float(self.scores[self.best])

    @property
    def last_score(self) -> float:
        return float(self.scores[-1, -1])

    @classmethod
    def from_null(
        cls, vision: str, text: str, metric: str, scores: np.ndarray, null: np.ndarray | None
    ) -> LayerResult:
        """Build from ``scores (Lv, Lt)`` and ``null (B, Lv, Lt)`` (B may be 0 or ``None``)."""
        scores = np.asarray(scores, dtype=float)
        best = tuple(int(i) for i in np.unravel_index(np.nanargmax(scores), scores.shape))
        top = scores[best]
        if null is None or np.asarray(null).size == 0:
            return cls(vision, text, metric, scores, best, math.nan, math.nan, math.nan, 0)
        null = np.asarray(null, dtype=float)
        b = null.shape[0]
        null_max = np.nanmax(null.reshape(b, -1), axis=1)  # (B,) max over layer pairs
        p_max = (1 + int((null_max >= top).sum())) / (b + 1)
        p_cell = (1 + int((null[:, best[0], best[1]] >= top).sum())) / (b + 1)
        return cls(vision, text, metric, scores, best, p_max, p_cell, float(null_max.mean()), b)


@dataclass
class Ranking:
    """The result of :func:`rank_encoders`: tables, figures and the run folder.

    Attributes:
        scores: long-form scores, exactly :data:`alignkit.compare.SCORE_COLUMNS`, one row per
            (vision, text, metric) at the last layers.
        metric: the primary metric (orders :attr:`table`); default the first metric in ``scores``.
        alpha: significance level for "above chance" (permutation p < alpha; not corrected
            across pairs).
        layers: layer x layer results per pair (``--layers all``), else empty.
        metadata: what ``run.json`` holds (command, versions, probe fingerprint, encoders, timings).
        features: ``{encoder label: FeatureSet}`` of the run (not saved; for exploring neighbours).
        probe: the ProbeSet of the run (not saved).
    """

    scores: pd.DataFrame
    metric: str | None = None
    alpha: float = 0.05
    layers: list[LayerResult] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    features: dict[str, FeatureSet] = field(default_factory=dict, repr=False)
    probe: ProbeSet | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from alignkit.metrics import SCORE_COLUMNS

        missing = [c for c in SCORE_COLUMNS if c not in self.scores.columns]
        if missing:
            raise AlignkitError(
                f"scores table lacks columns {missing}; expected {list(SCORE_COLUMNS)}"
            )
        if self.scores.empty:
            raise AlignkitError("scores table is empty: nothing to rank")
        self.scores = self.scores.loc[:, list(SCORE_COLUMNS)].reset_index(drop=True)
        metrics = list(dict.fromkeys(self.scores["metric"]))
        if self.metric is None:
            self.metric = metrics[0]
        elif self.metric not in metrics:
            raise unknown_key("metric to rank by", self.metric, metrics)
        self._table: pd.DataFrame | None = None

    # -- tables ---------------------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        """Metrics in the table, the primary one first."""
        rest = [m for m in dict.fromkeys(self.scores["metric"]) if m != self.metric]
        return [self.metric, *rest]

    @property
    def _main(self) -> pd.DataFrame:
        s = self.scores
        if s["vision_layer"].nunique() > 1 or s["text_layer"].nunique() > 1:
            s = s[(s["vision_layer"] == -1) & (s["text_layer"] == -1)]
        return s

    @property
    def vision(self) -> list[str]:
        return list(dict.fromkeys(self._main["vision"]))

    @property
    def text(self) -> list[str]:
        return list(dict.fromkeys(self._main["text"]))

    @property
    def controls(self) -> list[str]:
        """Encoders that are controls (random-init or random features): they should rank last."""
        listed = set(self.metadata.get("controls", ()))
        return [
            e for e in [*self.vision, *self.text] if e in listed or e.startswith(CONTROL_PREFIXES)
        ]

    @property
    def table(self) -> pd.DataFrame:
        """One row per pair, ordered by the primary metric's score (best first).

        Columns: ``rank`` (1 = best), ``vision``, ``text``, ``control`` (either side is a
        control), then per metric ``m`` (primary first): ``m`` (score), ``m_z``, ``m_p``,
        ``rank_m`` (rank of the pair under ``m``, 1 = best, ties share the best rank); then for
        the primary metric ``null_mean``, ``ci_low``, ``ci_high``, ``significant`` (p < alpha, or
        NA without a null) and ``max_rank_shift`` (largest |rank_m - rank| over the metrics).
        """
        if self._table is None:
            self._table = self._build_table()
        return self._table

    def _build_table(self) -> pd.DataFrame:
        main = self._main
        pairs = main[["vision", "text"]].drop_duplicates().reset_index(drop=True)
        out = pairs.copy()
        controls = set(self.controls)
        out["control"] = out["vision"].isin(controls) | out["text"].isin(controls)
        for m in self.metrics:
            sub = (
                main[main["metric"] == m]
                .drop_duplicates(["vision", "text"])
                .set_index(["vision", "text"])
            )
            idx = pd.MultiIndex.from_frame(pairs)
            out[m] = sub["score"].reindex(idx).to_numpy(float)
            out[f"{m}_z"] = sub["z"].reindex(idx).to_numpy(float)
            out[f"{m}_p"] = sub["p"].reindex(idx).to_numpy(float)
            out[f"rank_{m}"] = (
                out[m].rank(ascending=False, method="min", na_option="bottom").astype(int)
            )
            if m == self.metric:
                for col in ("null_mean", "ci_low", "ci_high"):
                    out[col] = sub[col].reindex(idx).to_numpy(float)
        p = out[f"{self.metric}_p"]
        out["significant"] = pd.array(
            [bool(v < self.alpha) if np.isfinite(v) else pd.NA for v in p], dtype="boolean"
        )
        out = out.sort_values(
            [self.metric, "vision", "text"],
            ascending=[False, True, True],
            na_position="last",
            kind="stable",
        ).reset_index(drop=True)
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        ranks = out[[f"rank_{m}" for m in self.metrics]].to_numpy()
        out["max_rank_shift"] = np.abs(ranks - out[f"rank_{self.metric}"].to_numpy()[:, None]).max(
            axis=1
        )
        return out

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` best pairs of :attr:`table`."""
        return self.table.head(k)

    def agreement(self) -> pd.DataFrame:
        """Kendall τ-b (metric x metric) between the orders the metrics give the pairs."""
        return plots.kendall_tau_matrix(self.table, self.metrics)

    def disagreements(self, top: int = 5, *, controls: bool = True) -> pd.DataFrame:
        """The pairs whose rank moves most between metrics (largest ``max_rank_shift``);
        ``controls=False`` leaves out pairs with a control encoder."""
        cols = ["vision", "text", *[f"rank_{m}" for m in self.metrics], "max_rank_shift"]
        t = self.table if controls else self.table[~self.table["control"]]
        t = t[cols]
        return (
            t[t["max_rank_shift"] > 0]
            .sort_values("max_rank_shift", ascending=False, kind="stable")
            .head(top)
        )

    def layer_table(self) -> pd.DataFrame:
        """Best layer pair per pair: ``vision, text, metric, best_vision_layer, best_text_layer,
        best_score, last_score, p_max_corrected, p_best_uncorrected, null_max_mean, n_layers``."""
        rows = [
            {
                "vision": r.vision,
                "text": r.text,
                "metric": r.metric,
                "best_vision_layer": r.best[0],
                "best_text_layer": r.best[1],
                "best_score": r.best_score,
                "last_score": r.last_score,
                "p_max_corrected": r.p_max,
                "p_best_uncorrected": r.p_best_uncorrected,
                "null_max_mean": r.null_max_mean,
                "n_layers": f"{r.scores.shape[0]}x{r.scores.shape[1]}",
            }
            for r in self.layers
        ]
        df = pd.DataFrame(rows)
        return (
            df.sort_values("best_score", ascending=False, kind="stable").reset_index(drop=True)
            if rows
            else df
        )

    def layer_result(self, vision: str, text: str) -> LayerResult:
        for r in self.layers:
            if r.vision == vision and r.text == text:
                return r
        have = [f"{r.vision} x {r.text}" for r in self.layers]
        raise AlignkitError(
            f"no layer-wise result for {vision} x {text}"
            + (f"; have: {', '.join(have)}" if have else " (run with layers='all')")
        )

    # -- figures --------------------------------------------------------------------------------
    def _title(self, what: str) -> str:
        probe = self.metadata.get("probe", {}).get("name")
        n = self._main["n"].dropna()
        where = str(probe).split("[")[0] if probe else "probe"  # "flickr8k:test[n=500,seed=0]"
        if len(n):
            where += f", n={int(n.iloc[0])}"
        return f"{what} — {where}"

    def plot_heatmap(self, metric: str | None = None, *, ax: Axes | None = None) -> Axes:
        """Vision x text heatmap of ``metric`` (default the primary); see :func:`plots.heatmap`."""
        metric = metric or self.metric
        return plots.heatmap(
            self._main,
            metric,
            ax=ax,
            alpha=self.alpha,
            title=self._title(plots.metric_label(metric)),
        )

    def plot_agreement(self, *, ax: Axes | None = None) -> Axes:
        """Kendall τ between the metrics' rankings of the pairs."""
        return plots.agreement_heatmap(
            self.agreement(),
            ax=ax,
            n_pairs=len(self.table),
            title=self._title(f"Metric agreement (Kendall τ) over {len(self.table)} pairs").replace(
                " — ", "\n"
            ),
        )

    def plot_top_pairs(
        self, top: int = 10, *, metric: str | None = None, ax: Axes | None = None
    ) -> Axes:
        """Bar chart of the best pairs with their intervals and null means."""
        metric = metric or self.metric
        title = self._title(f"Top pairs by {plots.metric_label(metric)}")
        return plots.top_pairs(self._main, metric, top=top, ax=ax, alpha=self.alpha, title=title)

    def plot_layers(self, vision: str, text: str, *, ax: Axes | None = None) -> Axes:
        """Layer x layer heatmap of one pair with its best cell and corrected p."""
        r = self.layer_result(vision, text)
        return plots.layer_heatmap(
            r.scores, ax=ax, metric=r.metric, vision=vision, text=text, p_max=r.p_max
        )

    # -- text -----------------------------------------------------------------------------------
    def format_table(self, top: int = 10) -> str:
        """A readable fixed-width table of the best pairs (for the console)."""
        t = self.top(top)
        names = plots.short_labels([*t["vision"], *t["text"]], max_len=26)
        m = self.metric
        rows = []
        for _, r in t.iterrows():
            ci = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if np.isfinite(r["ci_low"]) else ""
            row = {
                "#": int(r["rank"]),
                "vision": names[r["vision"]],
                "text": names[r["text"]],
                plots.metric_label(m): f"{r[m]:.3f}",
                "interval": ci,
                "z": f"{r[f'{m}_z']:.1f}" if np.isfinite(r[f"{m}_z"]) else "",
                "p": f"{r[f'{m}_p']:.3f}" if np.isfinite(r[f"{m}_p"]) else "",
            }
            for other in self.metrics[1:]:
                row[f"rank {plots.metric_label(other)}"] = int(r[f"rank_{other}"])
            row[""] = (
                "control" if r["control"] else ("" if r["significant"] is not False else "n.s.")
            )
            rows.append(row)
        df = pd.DataFrame(rows)
        if not {"interval"} <= set(df.columns) or not df["interval"].any():
            df = df.drop(columns=["interval"], errors="ignore")
        return df.to_string(index=False)

    def summary(self, top: int = 10) -> str:
        """A short markdown report of the run, to paste into a lab notebook."""
        md = self.metadata
        probe = md.get("probe", {})
        n = self._main["n"].dropna()
        lines = [f"# Encoder ranking: {probe.get('name', 'probe')}", ""]
        facts = [
            f"- probe: `{probe.get('name', '?')}`, n = {int(n.iloc[0]) if len(n) else '?'} rows"
            + (f", fingerprint `{probe['fingerprint']}`" if probe.get("fingerprint") else ""),
            f"- {len(self.vision)} vision × {len(self.text)} text encoders = "
            f"{len(self.table)} pairs"
            + (
                f" (controls: {', '.join(f'`{c}`' for c in self.controls)})"
                if self.controls
                else ""
            ),
            f"- metrics: {', '.join(plots.metric_label(m) for m in self.metrics)}; ranked by "
            f"**{plots.metric_label(self.metric)}**",
        ]
        cfg = md.get("config", {})
        if cfg:
            facts.append(
                f"- null: {cfg.get('permutations', '?')} permutations of the pairing; intervals: "
                f"{cfg.get('subsamples', '?')} subsamples; significant = p < {self.alpha:g}; "
                f"seed {cfg.get('seed', '?')}"
            )
        total = md.get("timings", {}).get("total_s")
        if total is not None:
            facts.append(f"- time: {total:.1f} s")
        lines += facts + ["", f"## Top pairs by {plots.metric_label(self.metric)}", ""]
        t = self.top(top)
        m = self.metric
        header = [
            "#",
            "vision",
            "text",
            "score",
            "interval",
            "z",
            "p",
            *[f"rank ({plots.metric_label(o)})" for o in self.metrics[1:]],
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for _, r in t.iterrows():
            ci = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if np.isfinite(r["ci_low"]) else "–"
            cells = [
                str(int(r["rank"])),
                f"`{r['vision']}`",
                f"`{r['text']}`",
                f"{r[m]:.3f}",
                ci,
                plots._fmt(r[f"{m}_z"], 1),
                plots._fmt(r[f"{m}_p"], 3),
                *[str(int(r[f"rank_{o}"])) for o in self.metrics[1:]],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if len(self.metrics) > 1:
            tau = self.agreement()
            lines += ["", "## Metric agreement (Kendall τ between rankings)", ""]
            for i, a in enumerate(self.metrics):
                for b in self.metrics[i + 1 :]:
                    lines.append(
                        f"- {plots.metric_label(a)} vs {plots.metric_label(b)}: "
                        f"τ = {tau.loc[a, b]:.2f}"
                    )
            dis = self.disagreements(3, controls=False)
            if len(dis):
                lines.append(
                    "- largest disagreements (real pairs): "
                    + "; ".join(
                        f"`{plots.short_label(r.vision)}` × `{plots.short_label(r.text)}` (ranks "
                        + ", ".join(str(int(getattr(r, f"rank_{mm}"))) for mm in self.metrics)
                        + ")"
                        for r in dis.itertuples()
                    )
                )
        if self.controls:
            ctl = self.table[self.table["control"]]
            real = self.table[~self.table["control"]]
            if len(ctl) and len(real):
                lines += [
                    "",
                    f"Controls: best control pair ranks {int(ctl['rank'].min())} of "
                    f"{len(self.table)}; "
                    f"worst real pair ranks {int(real['rank'].max())}.",
                ]
        if self.layers:
            lt = self.layer_table()
            lines += ["", "## Best layer pairs (p corrected for the maximum over layer pairs)", ""]
            for r in lt.head(top).itertuples():
                lines.append(
                    f"- `{plots.short_label(r.vision)}` L{r.best_vision_layer} × "
                    f"`{plots.short_label(r.text)}` "
                    f"L{r.best_text_layer}: {r.best_score:.3f} (last layers {r.last_score:.3f}), "
                    f"p = {r.p_max_corrected:.3g} corrected, {r.p_best_uncorrected:.3g} uncorrected"
                )
        failed = md.get("failed_encoders")
        if failed:
            lines += [
                "",
                "Skipped (failed to load): "
                + "; ".join(f"`{f['spec']}`: {f['error']}" for f in failed),
            ]
        return "\n".join(lines) + "\n"

    # -- exploring ------------------------------------------------------------------------------
    def neighbours(self, row: int, encoder: str, k: int = 5) -> pd.DataFrame:
        """The ``k`` nearest probe rows to ``row`` under ``encoder`` (cosine, self excluded).

        For an image encoder these are the rows whose *images* are closest to row's image; for a
        text encoder the rows whose *captions* are closest to row's caption. Columns: ``rank``,
        ``row``, ``id``, ``caption`` (first caption), ``cosine``. Comparing the lists of a vision
        and a text encoder shows what mutual-kNN counts.
        """
        if encoder not in self.features:
            raise unknown_key("encoder with features in this run", encoder, list(self.features))
        fs = self.features[encoder]
        x = fs.features if not fs.layered else fs.features[-1]
        x = np.asarray(x, dtype=np.float64)  # (n, d)
        n = x.shape[0]
        if not 0 <= row < n:
            raise AlignkitError(f"row must be in 0..{n - 1}: got {row}")
        if not 1 <= k < n:
            raise AlignkitError(f"k must be in 1..{n - 1}: got {k}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = x @ x[row]  # (n,)
        sims[row] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        captions = [self.probe.rows[i].captions[0] if self.probe is not None else "" for i in order]
        return pd.DataFrame(
            {
                "rank": np.arange(1, k + 1),
                "row": order,
                "id": [fs.ids[i] for i in order],
                "caption": captions,
                "cosine": sims[order],
            }
        )

    # -- files ----------------------------------------------------------------------------------
    def save(
        self,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        formats: Sequence[str] = ("png", "svg"),
    ) -> Path:
        """Write the run folder; see README for the files. Returns the folder.

        Everything is written into a temporary sibling folder first and swapped in at the end, so
        a failure leaves an earlier run in ``out_dir`` untouched. A folder that holds another
        run's results (a ``run.json``) is replaced only with ``overwrite=True``; a non-empty
        folder that is not a run folder is never replaced.
        """
        out = Path(out_dir)
        check_out_dir(out, overwrite=overwrite)
        return _write_atomically(out, lambda tmp: self._write(tmp, formats))

    def _write(self, folder: Path, formats: Sequence[str]) -> None:
        import matplotlib.pyplot as plt

        written: list[str] = []

        def fig_out(fig: Any, stem: str, fmts: Sequence[str]) -> None:
            for fmt in fmts:
                fig.savefig(folder / f"{stem}.{fmt}", dpi=130)
                written.append(f"{stem}.{fmt}")
            plt.close(fig)

        self.scores.to_csv(folder / SCORES_FILE, index=False)
        self.table.to_csv(folder / RANKING_FILE, index=False)
        written += [SCORES_FILE, RANKING_FILE]
        for m in self.metrics:
            ax = self.plot_heatmap(m)
            fig_out(ax.figure, f"heatmap_{m}", formats)
        if len(self.metrics) > 1:
            fig_out(self.plot_agreement().figure, "agreement", ["png"])
        fig_out(self.plot_top_pairs().figure, "top_pairs", ["png"])
        if self.layers:
            (folder / "layers").mkdir()
            rows = []
            for r in self.layers:
                lv, lt = r.scores.shape
                for i in range(lv):
                    for j in range(lt):
                        rows.append(
                            {
                                "vision": r.vision,
                                "text": r.text,
                                "metric": r.metric,
                                "vision_layer": i,
                                "text_layer": j,
                                "score": r.scores[i, j],
                            }
                        )
                ax = self.plot_layers(r.vision, r.text)
                stem = f"layers/{_slug(r.vision)}__{_slug(r.text)}"
                fig_out(ax.figure, stem, ["png"])
            pd.DataFrame(rows).to_csv(folder / "layer_scores.csv", index=False)
            self.layer_table().to_csv(folder / "layers_best.csv", index=False)
            written += ["layer_scores.csv", "layers_best.csv"]
        (folder / "summary.md").write_text(self.summary(), encoding="utf-8")
        written.append("summary.md")
        meta = {
            **self.metadata,
            "primary_metric": self.metric,
            "alpha": self.alpha,
            "files": sorted([*written, RUN_FILE]),
        }
        (folder / RUN_FILE).write_text(
            json.dumps(_jsonable(meta), indent=2) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: str | Path) -> Ranking:
        """Read a run folder written by :meth:`save` (scores, metadata and layer scores)."""
        folder = Path(folder)
        if not (folder / RUN_FILE).is_file() or not (folder / SCORES_FILE).is_file():
            raise AlignkitError(
                f"{folder} is not an alignkit run folder: expected {RUN_FILE} and {SCORES_FILE}"
            )
        meta = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        scores = pd.read_csv(folder / SCORES_FILE, keep_default_na=True)
        scores["options"] = scores["options"].fillna("")
        layers: list[LayerResult] = []
        if (folder / "layer_scores.csv").is_file():
            ls = pd.read_csv(folder / "layer_scores.csv")
            best = pd.read_csv(folder / "layers_best.csv").set_index(["vision", "text"])
            for (v, t), g in ls.groupby(["vision", "text"], sort=False):
                mat = g.pivot(index="vision_layer", columns="text_layer", values="score").to_numpy(
                    float
                )
                b = best.loc[(v, t)]
                layers.append(
                    LayerResult(
                        v,
                        t,
                        str(g["metric"].iloc[0]),
                        mat,
                        (int(b["best_vision_layer"]), int(b["best_text_layer"])),
                        float(b["p_max_corrected"]),
                        float(b["p_best_uncorrected"]),
                        float(b["null_max_mean"]),
                        int(meta.get("config", {}).get("permutations", 0)),
                    )
                )
        return cls(
            scores,
            metric=meta.get("primary_metric"),
            alpha=float(meta.get("alpha", 0.05)),
            layers=layers,
            metadata=meta,
        )


# ----------------------------------------------------------------------------------------------
# the output folder
# ----------------------------------------------------------------------------------------------
def check_out_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``out`` that holds another run (without ``overwrite``) or unrelated files."""
    if out.exists() and not out.is_dir():
        raise AlignkitError(f"--out must be a folder: {out} is a file")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / RUN_FILE).is_file():
        raise AlignkitError(
            f"--out {out} is not empty and holds no {RUN_FILE}, so it is not an alignkit run "
            "folder; "
            "choose an empty or new folder"
        )
    if not overwrite:
        raise AlignkitError(
            f"--out {out} already holds a run's results; pass --overwrite to replace them"
        )


def _write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{tag}"
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", plots.short_label(spec, 60)).strip("_")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def default_out_dir(probe_name: str, now: float | None = None) -> Path:
    """``runs/<probe>-<YYYYmmdd-HHMMSS>`` (a new folder per run, so nothing is ever replaced)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("runs") / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', probe_name).strip('-')}-{stamp}"


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
def default_probe() -> str:
    """``flickr8k:test`` when ``ALIGNKIT_DATA_DIR`` holds Flickr8k, else built-in ``synthetic``."""
    from alignkit._paths import data_dir

    return "flickr8k:test" if (data_dir() / "flickr8k" / "pairs.jsonl").is_file() else "synthetic"


def check_probe_size(n_rows: int, config: RankConfig) -> None:
    """A probe must be large enough for k, the unbiased estimators and the permutations."""
    need = 4
    why = "the unbiased CKA estimators need n >= 4"
    if any(m in NEIGHBOUR_METRICS for m in config.metrics) and config.k + 2 > need:
        need, why = config.k + 2, f"k={config.k} neighbours need n >= k + 2"
    if n_rows < need:
        raise AlignkitError(f"probe too small: {why}; got n={n_rows} rows")
    if config.permutations and n_rows <= 12 and math.factorial(n_rows) <= config.permutations:
        raise AlignkitError(
            f"probe too small for {config.permutations} permutations: n={n_rows} rows have only "
            f"{math.factorial(n_rows)} orderings; lower --permutations or use more rows"
        )


def _resolve_encoders(
    config: RankConfig,
) -> tuple[list[EncoderEntry], list[EncoderEntry], list[EncoderEntry]]:
    vision, text, controls = list(config.vision), list(config.text), []
    set_name = config.encoder_set
    if set_name is None and not vision and not text:
        set_name = DEFAULT_SET
    if set_name is not None:
        from alignkit.encoders import ENCODER_SETS

        if set_name not in ENCODER_SETS:
            raise unknown_key("encoder set", set_name, list(ENCODER_SETS))
        es = ENCODER_SETS[set_name]
        vision += [EncoderEntry(s) for s in es.vision]
        text += [EncoderEntry(s) for s in es.text]
        controls += [EncoderEntry(s) for s in es.controls]
    vision, text = list(dict.fromkeys(vision)), list(dict.fromkeys(text))
    controls = [c for c in dict.fromkeys(controls) if c not in vision and c not in text]
    if not vision and not controls:
        raise AlignkitError(
            "no vision encoder given: pass --vision SPEC (repeatable) or --set NAME"
        )
    if not text and not controls:
        raise AlignkitError("no text encoder given: pass --text SPEC (repeatable) or --set NAME")
    return vision, text, controls


def _extract(
    entry: EncoderEntry,
    probe: ProbeSet,
    config: RankConfig,
    progress: bool,
    layer: str | None = None,
) -> FeatureSet:
    """Features of one encoder (from the cache when there); ``layer`` overrides the entry's."""
    from alignkit.encoders import create_encoder
    from alignkit.features import extract_features

    options = entry.kwargs
    if layer is not None:
        options["layer"] = layer
    encoder = create_encoder(entry.spec, device=config.device, **options)
    return extract_features(
        encoder,
        probe,
        batch_size=config.batch_size,
        caption_policy=config.caption_policy,
        seed=config.seed,
        cache=config.cache,
        device=config.device,
        progress=progress,
    )


def _layerwise(
    entry: EncoderEntry, fs: FeatureSet, probe: ProbeSet, config: RankConfig, progress: bool
) -> FeatureSet:
    """``(L, n, d)`` features of every layer; an encoder without layers gives its output as one."""
    from alignkit.features import FeatureSet as _FS

    if fs.layered:
        return fs
    if "layer" not in entry.kwargs:
        try:
            return _extract(entry, probe, config, progress, layer="all")
        except AlignkitError as exc:  # this backend has no layer axis
            log.warning(
                "%s: no layer-wise features (%s); its output is its only layer", entry.label, exc
            )
    return _FS(fs.features[None], fs.ids, fs.provenance)


def _versions() -> dict[str, str]:
    import importlib.metadata as im

    from alignkit import __version__

    out = {
        "alignkit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for pkg in (
        "torch",
        "numpy",
        "scipy",
        "pandas",
        "transformers",
        "sentence-transformers",
        "timm",
        "onnxruntime",
        "matplotlib",
    ):
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            pass
    return out


def rank_encoders(
    vision: Sequence[str | EncoderEntry | Mapping[str, Any]] = (),
    text: Sequence[str | EncoderEntry | Mapping[str, Any]] = (),
    *,
    probe: str | Path | ProbeSet | None = None,
    n: int | None = DEFAULT_N,
    encoder_set: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    permutations: int = 100,
    subsamples: int = 10,
    layers: str = "last",
    k: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    caption_policy: str = "first",
    device: str = "auto",
    cache: bool | str | Path = True,
    alpha: float = 0.05,
    keep_going: bool = False,
    progress: bool = True,
    config: RankConfig | None = None,
    command: Sequence[str] | None = None,
) -> Ranking:
    """Score and rank every vision x text encoder pair on a probe set.

    Args:
        vision, text: encoder specs (or ``{"spec": ..., **create_encoder options}``). With none
            and no ``encoder_set``, the ``offline-small`` set and its controls are used.
        probe: a probe spec or a loaded ProbeSet; ``None`` = ``flickr8k:test`` when
            ``ALIGNKIT_DATA_DIR`` holds it, else ``synthetic``.
        n: probe rows (stable seeded subsample; ``None`` = all). Ignored for a loaded ProbeSet.
        encoder_set: a key of ``ENCODER_SETS`` (its vision, text and control encoders are added).
        metrics: keys of ``alignkit.metrics.METRICS``; the first orders the ranking.
        permutations: permutations of the row pairing for the null (p-values, z, null mean).
        subsamples: subsamples of rows (without replacement) for score intervals.
        layers: ``"all"`` adds the layer x layer analysis of every pair under the first metric.
        k: neighbourhood size for mutual-kNN / CKNNA.
        seed, batch_size, caption_policy, device, cache: see ``extract_features``/``score_pairs``.
        alpha: significance level of the heatmap hatching and the ``significant`` column.
        keep_going: skip encoders that fail to load instead of raising.
        progress: tqdm bars (extraction, scoring).
        config: a full :class:`RankConfig` instead of the keyword arguments above.
        command: the command line to record in ``run.json``.
    Returns:
        a :class:`Ranking` (tables, figures, ``save``).
    """
    if config is None:
        config = RankConfig(
            vision=tuple(vision),
            text=tuple(text),
            encoder_set=encoder_set,
            probe=None if probe is None or not isinstance(probe, (str, Path)) else str(probe),
            n=n,
            metrics=tuple(metrics),
            permutations=permutations,
            subsamples=subsamples,
            layers=layers,
            k=k,
            seed=seed,
            batch_size=batch_size,
            caption_policy=caption_policy,
            device=device,
            cache=str(cache) if isinstance(cache, Path) else cache,
            alpha=alpha,
            keep_going=keep_going,
        )
    loaded = probe if probe is not None and not isinstance(probe, (str, Path)) else None
    return _run(config, probe=loaded, progress=progress, command=command)


def _run(
    config: RankConfig, *, probe: ProbeSet | None, progress: bool, command: Sequence[str] | None
) -> Ranking:
    t_start = time.perf_counter()
    timings: dict[str, Any] = {}
    vision, text, controls = _resolve_encoders(config)
    from alignkit.metrics import METRICS, score_pairs

    for m in config.metrics:
        if m not in METRICS:
            raise unknown_key("metric", m, list(METRICS))
    if config.n is not None:
        check_probe_size(config.n, config)  # fail before any loading when n alone is too small

    # -- probe
    t0 = time.perf_counter()
    if probe is None:
        from alignkit.probes import load_probe

        spec = config.probe or default_probe()
        log.debug(
            "probe: %s (n=%s)%s", spec, config.n, "" if config.probe else " [built-in default]"
        )
        probe = load_probe(spec, n=config.n, seed=config.seed)
    check_probe_size(len(probe), config)
    timings["probe_s"] = time.perf_counter() - t0

    # -- features, one encoder at a time (each is cached as soon as it is done)
    feats: dict[str, FeatureSet] = {}
    sides: dict[str, str] = {}
    failed: list[dict[str, str]] = []
    encoders_meta: list[dict[str, Any]] = []
    timings["extract_s"] = {}
    wanted = (
        [(e, "image") for e in vision] + [(e, "text") for e in text] + [(e, None) for e in controls]
    )
    for i, (entry, side) in enumerate(wanted, 1):
        log.info("[%d/%d] features of %s", i, len(wanted), entry.label)
        t0 = time.perf_counter()
        try:
            fs = _extract(entry, probe, config, progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure is reported the same way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            message = f"encoder {entry.label} failed: {type(exc).__name__}: {reason}"
            if not config.keep_going:
                raise AlignkitError(message + " (pass --keep-going to rank the others)") from exc
            log.warning("%s; skipping it (--keep-going)", message)
            failed.append({"spec": entry.label, "error": f"{type(exc).__name__}: {reason}"})
            continue
        timings["extract_s"][entry.label] = time.perf_counter() - t0
        modality = fs.modality
        if side is not None and modality in ("image", "text") and modality != side:
            given = "vision" if side == "image" else "text"
            raise AlignkitError(
                f"{entry.label} was given as a {given} encoder but it encodes {modality}"
            )
        feats[entry.label] = fs
        sides[entry.label] = modality if modality in ("image", "text") else (side or "image")
        prov = dict(fs.provenance)
        encoders_meta.append(
            {
                "label": entry.label,
                "spec": entry.spec,
                "options": entry.kwargs,
                "side": "vision" if sides[entry.label] == "image" else "text",
                "control": entry in controls or entry.spec.startswith(CONTROL_PREFIXES),
                "dim": fs.dim,
                "n_layers": fs.n_layers,
                "weights_identity": prov.get("weights", prov.get("weights_identity")),
                "provenance": prov,
            }
        )
    v_labels = [lbl for lbl in feats if sides[lbl] == "image"]
    t_labels = [lbl for lbl in feats if sides[lbl] == "text"]
    if not v_labels or not t_labels:
        side = "vision" if not v_labels else "text"
        raise AlignkitError(
            f"no {side} encoder left to rank after failures: "
            + "; ".join(f"{f['spec']}: {f['error']}" for f in failed)
        )

    # -- scores of the last layers
    def last(fs: FeatureSet) -> FeatureSet:
        return fs.layer(-1) if fs.layered else fs

    def as_input(labels: list[str]) -> Any:
        if all(feats[lbl].encoder == lbl for lbl in labels):
            return [last(feats[lbl]) for lbl in labels]
        return {lbl: last(feats[lbl]).features for lbl in labels}

    t0 = time.perf_counter()
    metric_options = {"k": config.k} if any(m in NEIGHBOUR_METRICS for m in config.metrics) else {}
    scores = score_pairs(
        as_input(v_labels),
        as_input(t_labels),
        metrics=config.metrics,
        n_permutations=config.permutations,
        n_subsamples=config.subsamples,
        seed=config.seed,
        progress=progress,
        **metric_options,
    )
    timings["score_s"] = time.perf_counter() - t0

    # -- layer x layer (the main scores above stay those of each encoder's own output)
    layer_results: list[LayerResult] = []
    if config.layers == "all":
        from alignkit.metrics import score_layers

        t0 = time.perf_counter()
        by_label = {e.label: e for e in [*vision, *text, *controls]}
        layered = {}
        for i, lbl in enumerate([*v_labels, *t_labels], 1):
            log.info("[%d/%d] layer-wise features of %s", i, len(v_labels) + len(t_labels), lbl)
            layered[lbl] = _layerwise(by_label[lbl], feats[lbl], probe, config, progress)
        pairs = [(v, t) for v in v_labels for t in t_labels]
        opts = {"k": config.k} if config.primary_metric in NEIGHBOUR_METRICS else {}
        for v, t in _bar(pairs, progress, "layer pairs"):
            ls = score_layers(
                layered[v],
                layered[t],
                config.primary_metric,
                n_permutations=config.permutations,
                seed=config.seed,
                progress=False,
                **opts,
            )
            layer_results.append(
                LayerResult.from_null(v, t, config.primary_metric, ls.scores, ls.null)
            )
        timings["layers_s"] = time.perf_counter() - t0

    timings["total_s"] = time.perf_counter() - t_start
    metadata = {
        "command": list(command) if command is not None else None,
        "config": config.to_dict(),
        "versions": _versions(),
        "probe": {
            "name": probe.name,
            "n": len(probe),
            "fingerprint": probe.fingerprint,
            "default": config.probe is None,
        },
        "encoders": encoders_meta,
        "controls": [e["label"] for e in encoders_meta if e["control"]],
        "failed_encoders": failed,
        "timings": timings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Ranking(
        scores,
        metric=config.primary_metric,
        alpha=config.alpha,
        layers=layer_results,
        metadata=metadata,
        features={lbl: feats[lbl] for lbl in feats},
        probe=probe,
    )


def _bar(items: list[Any], progress: bool, desc: str) -> Any:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="pair", leave=False)


__all__ = ["LayerResult", "Ranking", "check_out_dir", "default_probe", "rank_encoders"]
