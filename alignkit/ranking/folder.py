"""A ranking's run folder: what :meth:`Ranking.save` writes (:func:`save`) and :meth:`Ranking.load`
reads (:func:`read`).

    scores.csv            long-form scores (alignkit.metrics.SCORE_COLUMNS)
    ranking.csv           the pair table (Ranking.table)
    heatmap_<metric>.png (and .svg with svg=True), agreement.png, top_pairs.png
    layers/<v>__<t>.png, layer_scores.csv, layers_best.csv    with layers="all"
    summary.md            the markdown report
    run.json              command, config, versions, probe, encoders, timings, files

The folder is written through :class:`alignkit.runs.RunFolder` (all files or none).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignkit import plots
from alignkit.errors import AlignkitError
from alignkit.ranking import report
from alignkit.ranking.result import LayerResult
from alignkit.runs import RUN_FILE, RunFolder, read_run_json, write_run_json

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.ranking.result import RankingResult

RANKING_FILE = "ranking.csv"
SCORES_FILE = "scores.csv"


def save(
    r: RankingResult,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    formats: Sequence[str] | None = None,
) -> Path:
    """Write ``r``'s run folder (see the module docstring); returns the folder."""
    run = RunFolder(out_dir, overwrite=overwrite)
    with run as tmp:
        write(r, tmp, formats)
    return run.out


def heatmap_formats(r: RankingResult) -> tuple[str, ...]:
    """The heatmaps' file formats when none are given: PNG, and SVG when the run's config asked
    for it (``svg=True``, ``--svg``)."""
    return ("png", "svg") if r.metadata.get("config", {}).get("svg") else ("png",)


def write(r: RankingResult, folder: Path, formats: Sequence[str] | None = None) -> None:
    """Write every file of the run folder into ``folder`` (an existing, empty folder: the
    temporary one of a :class:`~alignkit.runs.RunFolder`). ``formats``: of the heatmaps
    (default :func:`heatmap_formats`); the other figures are PNG."""
    import matplotlib.pyplot as plt

    formats = heatmap_formats(r) if formats is None else tuple(formats)

    written: list[str] = []

    def fig_out(fig: Any, stem: str, fmts: Sequence[str]) -> None:
        for fmt in fmts:
            fig.savefig(folder / f"{stem}.{fmt}", dpi=130)
            written.append(f"{stem}.{fmt}")
        plt.close(fig)

    r.scores.to_csv(folder / SCORES_FILE, index=False)
    r.table.to_csv(folder / RANKING_FILE, index=False)
    written += [SCORES_FILE, RANKING_FILE]
    for m in r.metrics:
        fig_out(report.plot_heatmap(r, m).figure, f"heatmap_{m}", formats)
    if len(r.metrics) > 1:
        fig_out(report.plot_agreement(r).figure, "agreement", ["png"])
    fig_out(report.plot_top_pairs(r).figure, "top_pairs", ["png"])
    if r.layers:
        (folder / "layers").mkdir()
        rows = []
        for lr in r.layers:
            lv, lt = lr.scores.shape
            rows += [
                {
                    "vision": lr.vision,
                    "text": lr.text,
                    "metric": lr.metric,
                    "vision_layer": i,
                    "text_layer": j,
                    "score": lr.scores[i, j],
                }
                for i in range(lv)
                for j in range(lt)
            ]
            stem = f"layers/{_slug(lr.vision)}__{_slug(lr.text)}"
            fig_out(report.plot_layers(r, lr.vision, lr.text).figure, stem, ["png"])
        pd.DataFrame(rows).to_csv(folder / "layer_scores.csv", index=False)
        r.layer_table().to_csv(folder / "layers_best.csv", index=False)
        written += ["layer_scores.csv", "layers_best.csv"]
    (folder / "summary.md").write_text(report.summary(r), encoding="utf-8")
    written.append("summary.md")
    meta = {
        **r.metadata,
        "primary_metric": r.metric,
        "alpha": r.alpha,
        "files": sorted([*written, RUN_FILE]),
    }
    write_run_json(folder, meta)


def read(folder: str | Path, *, features: bool = False, progress: bool = False) -> dict[str, Any]:
    """The fields of the :class:`~alignkit.ranking.Ranking` saved in a run folder by :func:`save`
    (scores, metadata and layer scores), as keyword arguments of its constructor;
    :meth:`Ranking.load` builds it.

    ``features=True`` also brings back the probe and every encoder's features (from the
    feature cache when they are there, else by extracting them again), so that
    :meth:`Ranking.neighbours` works; the probe must still have the run's fingerprint.
    """
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file() or not (folder / SCORES_FILE).is_file():
        raise AlignkitError(
            f"{folder} is not an alignkit run folder: expected {RUN_FILE} and {SCORES_FILE}"
        )
    meta = read_run_json(folder)
    scores = pd.read_csv(folder / SCORES_FILE, keep_default_na=True)
    if "null_method" not in scores.columns:  # written before the analytic null: Monte Carlo
        scores["null_method"] = "permutation"
    if "log10_p" not in scores.columns:  # written before the column: p = 0 stays unresolved
        p = scores["p"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores["log10_p"] = np.where(p > 0, np.log10(p), np.nan)
    scores["options"] = scores["options"].fillna("")
    layers: list[LayerResult] = []
    if (folder / "layer_scores.csv").is_file():
        ls = pd.read_csv(folder / "layer_scores.csv")
        best = pd.read_csv(folder / "layers_best.csv").set_index(["vision", "text"])
        for (v, t), g in ls.groupby(["vision", "text"], sort=False):
            mat = g.pivot(index="vision_layer", columns="text_layer", values="score")
            b = best.loc[(v, t)]
            layers.append(
                LayerResult(
                    v,
                    t,
                    str(g["metric"].iloc[0]),
                    mat.to_numpy(float),
                    (int(b["best_vision_layer"]), int(b["best_text_layer"])),
                    float(b["p_max_corrected"]),
                    float(b["p_best_uncorrected"]),
                    float(b["null_max_mean"]),
                    int(meta.get("config", {}).get("permutations", 0)),
                )
            )
    fields: dict[str, Any] = {
        "scores": scores,
        "metric": meta.get("primary_metric"),
        "alpha": float(meta.get("alpha", 0.05)),
        "layers": layers,
        "metadata": meta,
    }
    if features:
        fields["probe"], fields["features"] = _features_of(meta, folder, progress)
    return fields


def _features_of(meta: dict[str, Any], folder: Path, progress: bool) -> tuple[Any, dict]:
    """The probe and features of a saved run, rebuilt from its run.json.

    Each encoder's features are first read from the cache entry run.json names (its
    ``cache_key``): the features the scores were computed on, found without building or even
    identifying the encoder. Only when that entry is gone do they come from
    :func:`~alignkit.features.extract_features` (its cache, else extraction)."""
    from alignkit.config import EncoderEntry, config_from_mapping
    from alignkit.features import FeatureCache
    from alignkit.ranking.checks import load_ranking_probe
    from alignkit.ranking.extraction import _extract

    cfg = config_from_mapping(meta.get("config") or {}, source=str(folder / RUN_FILE))
    probe, _ = load_ranking_probe(cfg)
    want = meta.get("probe", {}).get("fingerprint")
    if want and probe.fingerprint != want:
        raise AlignkitError(
            f"the probe of {folder} has changed since the run (fingerprint {probe.fingerprint}, "
            f"the run had {want}): its features cannot be matched to the saved scores"
        )
    store = None
    if cfg.cache is not False:
        store = FeatureCache() if cfg.cache is True else FeatureCache.at(cfg.cache)
    feats = {}
    for e in meta.get("encoders", []):
        fs = _recorded_features(store, e, probe)
        if fs is None:
            entry = EncoderEntry.parse({"spec": e["spec"], **(e.get("options") or {})})
            fs = _extract(entry, probe, cfg, progress)
        feats[e["label"]] = fs
    return probe, feats


def _recorded_features(store: Any, encoder: dict[str, Any], probe: Any) -> Any:
    """The cache entry run.json names for ``encoder`` when it is still there and holds this
    encoder's features of every probe row, else None."""
    key = (encoder.get("provenance") or {}).get("cache_key")
    if store is None or not isinstance(key, str):
        return None
    try:
        fs = store.get(key, ids=probe.ids)
    except AlignkitError:  # not a key this cache could have written
        return None
    if fs is None or fs.provenance.get("encoder") != encoder.get("spec"):
        return None
    return fs


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", plots.short_label(spec, 60)).strip("_")


__all__ = ["RANKING_FILE", "SCORES_FILE", "read", "save", "write"]
