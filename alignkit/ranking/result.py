"""The result of a ranking run: the scores and the tables read from them.

:class:`RankingResult` holds the long-form scores (``alignkit.metrics.SCORE_COLUMNS``), the layer x
layer results and the run's metadata; everything else (the pair table, ranks under each metric,
agreement between metrics, nearest neighbours of a row) is computed from those on demand. It
imports none of the code that draws, reports or writes it (:mod:`alignkit.ranking.report`,
:mod:`alignkit.ranking.folder`); :class:`alignkit.ranking.Ranking` (:mod:`alignkit.ranking.api`)
adds those as methods, the one place a user looks for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignkit.errors import AlignkitError, unknown_key

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.features import FeatureSet
    from alignkit.probes import ProbeSet

MIN_AGREEMENT_PAIRS = 5  # below this many real pairs a Kendall τ means little (τ = ±1 is easy)


@dataclass(frozen=True)
class LayerResult:
    """Layer x layer scores of one pair under one metric.

    Attributes:
        scores: ``(Lv, Lt)``; ``scores[i, j]`` = metric(vision layer i, text layer j).
        best: ``(i, j)`` of the maximum.
        p_max: permutation p of the maximum against the null of the maximum over all layer pairs,
            ``(1 + #{b: max_ij null[b, i, j] >= max_ij scores}) / (B + 1)`` — the correction for
            having picked the best of ``Lv * Lt`` layer pairs (Westfall & Young 1993 max-T; see
            :func:`alignkit.metrics.max_over_cells`, which computes it).
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
        """Build from ``scores (Lv, Lt)`` and ``null (B, Lv, Lt)`` (B may be 0 or ``None``).

        The correction is :func:`alignkit.metrics.max_over_cells` (NaN cells skipped; a
        permutation whose cells are all NaN is left out). Raises AlignkitError when no score
        is finite."""
        from alignkit.metrics import max_over_cells

        scores = np.asarray(scores, dtype=float)
        m = max_over_cells(scores, null)
        if m.best is None:
            raise AlignkitError(f"{metric} is NaN at every layer pair of {vision} x {text}")
        best = (int(m.best[0]), int(m.best[1]))
        return cls(
            vision, text, metric, scores, best, m.p_max, m.p_cell, m.null_max_mean, m.n_permutations
        )


@dataclass
class RankingResult:
    """The scores of a ranking run and the tables computed from them (the figures, reports and
    run folder are :class:`alignkit.ranking.Ranking`'s).

    Attributes:
        scores: long-form scores, exactly :data:`alignkit.metrics.SCORE_COLUMNS`, one row per
            (vision, text, metric) at the last layers.
        metric: the primary metric (orders :attr:`table`); default the first metric in ``scores``.
        alpha: significance level for "above chance" (permutation p < alpha; not corrected
            across pairs).
        layers: layer x layer results per pair (``layers="all"``), else empty.
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

    # -- what the run holds ---------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        """Metrics in the table, the primary one first."""
        rest = [m for m in dict.fromkeys(self.scores["metric"]) if m != self.metric]
        return [self.metric, *rest]

    @property
    def main_scores(self) -> pd.DataFrame:
        """The long-form rows of the last layers (the pair table's source)."""
        s = self.scores
        if s["vision_layer"].nunique() > 1 or s["text_layer"].nunique() > 1:
            s = s[(s["vision_layer"] == -1) & (s["text_layer"] == -1)]
        return s

    @property
    def vision(self) -> list[str]:
        return list(dict.fromkeys(self.main_scores["vision"]))

    @property
    def text(self) -> list[str]:
        return list(dict.fromkeys(self.main_scores["text"]))

    @property
    def n(self) -> int | None:
        """Probe rows the scores were computed on."""
        n = self.main_scores["n"].dropna()
        return int(n.iloc[0]) if len(n) else None

    @property
    def controls(self) -> list[str]:
        """Encoders that are controls (random weights, random features): they should rank last.

        The run's metadata lists them; a table without metadata asks the encoder registry."""
        from alignkit.encoders import is_control

        listed = set(self.metadata.get("controls", ()))
        return [e for e in [*self.vision, *self.text] if e in listed or is_control(e)]

    # -- tables ---------------------------------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        """One row per pair, ordered by the primary metric's score (best first).

        Columns: ``rank`` (1 = best), ``vision``, ``text``, ``control`` (either side is a
        control), then per metric ``m`` (primary first): ``m`` (score), ``m_z``, ``m_p``,
        ``m_log10_p`` (finite where an analytic p underflows to 0), ``rank_m`` (rank of the pair
        under ``m``, 1 = best, ties share the best rank); then for
        the primary metric ``null_mean``, ``ci_low``, ``ci_high``, ``significant`` (p < alpha, or
        NA without a null) and ``max_rank_shift`` (largest |rank_m - rank| over the metrics).
        """
        if self._table is None:
            self._table = self._build_table()
        return self._table

    def _build_table(self) -> pd.DataFrame:
        main = self.main_scores
        pairs = main[["vision", "text"]].drop_duplicates().reset_index(drop=True)
        out = pairs.copy()
        controls = set(self.controls)
        out["control"] = out["vision"].isin(controls) | out["text"].isin(controls)
        idx = pd.MultiIndex.from_frame(pairs)
        for m in self.metrics:
            sub = (
                main[main["metric"] == m]
                .drop_duplicates(["vision", "text"])
                .set_index(["vision", "text"])
            )
            out[m] = sub["score"].reindex(idx).to_numpy(float)
            out[f"{m}_z"] = sub["z"].reindex(idx).to_numpy(float)
            out[f"{m}_p"] = sub["p"].reindex(idx).to_numpy(float)
            out[f"{m}_log10_p"] = sub["log10_p"].reindex(idx).to_numpy(float)
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

    def agreement(self, *, controls: bool = False) -> pd.DataFrame:
        """Kendall τ-b (metric x metric) between the orders the metrics give the pairs.

        Only real pairs count by default: every metric puts the control pairs last, which would
        inflate agreement. ``controls=True`` counts them too. The number of pairs is
        ``agreement().attrs["n_pairs"]``; with fewer than :data:`MIN_AGREEMENT_PAIRS` the values
        mean little (``attrs["too_few"]`` is then True). Off-diagonal entries are NaN when fewer
        than 2 pairs have finite scores under both metrics.
        """
        from scipy.stats import kendalltau

        t = self.table if controls else self.table[~self.table["control"]]
        metrics = self.metrics
        tau = pd.DataFrame(np.eye(len(metrics)), index=metrics, columns=metrics)
        for i, a in enumerate(metrics):
            for b in metrics[i + 1 :]:
                x, y = t[a].to_numpy(float), t[b].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                value = kendalltau(x[ok], y[ok]).statistic if ok.sum() >= 2 else math.nan
                tau.loc[a, b] = tau.loc[b, a] = value
        tau.attrs["n_pairs"] = len(t)
        tau.attrs["controls"] = controls
        tau.attrs["too_few"] = len(t) < MIN_AGREEMENT_PAIRS
        return tau

    def tied_with_best(self) -> pd.DataFrame:
        """Real pairs whose interval under the primary metric overlaps the best real pair's.

        These pairs are not statistically distinguishable from the best at this n (the best
        pair itself is left out). Empty when the run has no intervals (``subsamples=0``).
        """
        real = self.table[~self.table["control"]]
        if real.empty or not np.isfinite(real["ci_low"].iloc[0]):
            return real.iloc[0:0]
        best = real.iloc[0]
        rest = real.iloc[1:]
        return rest[rest["ci_high"] >= best["ci_low"]]

    def p_at_floor(self) -> pd.DataFrame:
        """Rows of :attr:`scores` (last layers) whose permutation p is the smallest possible,
        1/(B+1): the permutations cannot say how much smaller it really is."""
        s = self.main_scores
        b = int(self.metadata.get("config", {}).get("permutations", 0) or 0)
        if not b:
            return s.iloc[0:0]
        perm = s["null_method"].astype(str) == "permutation"
        return s[perm & np.isclose(s["p"].astype(float), 1.0 / (b + 1))]

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

    # -- exploring ------------------------------------------------------------------------------
    def neighbours(self, row: int, encoder: str, k: int = 5) -> pd.DataFrame:
        """The ``k`` nearest probe rows to ``row`` under ``encoder`` (cosine, self excluded).

        For an image encoder these are the rows whose *images* are closest to row's image; for a
        text encoder the rows whose *captions* are closest to row's caption. Columns: ``rank``,
        ``row``, ``id``, ``caption`` (first caption), ``cosine``. Comparing the lists of a vision
        and a text encoder shows what mutual-kNN counts.
        """
        if not self.features:
            raise AlignkitError(
                "this Ranking holds no features (a run read back with Ranking.load); read it "
                "with Ranking.load(folder, features=True) to explore neighbours"
            )
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
