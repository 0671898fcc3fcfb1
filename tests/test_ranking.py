"""Ranking logic on score tables built here (no models): order, ranks, Kendall τ, layer
correction, output folder safety, neighbours."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from _ranking_tables import METRICS, TEXT, VISION, make_scores

from alignkit.config import RankConfig
from alignkit.errors import AlignkitError
from alignkit.features import FeatureSet
from alignkit.metrics import SCORE_COLUMNS
from alignkit.probes.base import ProbeRow, ProbeSet
from alignkit.ranking import LayerResult, Ranking, check_probe_size, default_probe


def naive_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall τ-b from its definition: (C - D) / sqrt((P - Tx)(P - Ty)) over all pairs."""
    conc = disc = tie_x = tie_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            tie_x += 1
            tie_y += 1
        elif dx == 0:
            tie_x += 1
        elif dy == 0:
            tie_y += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    pairs = len(x) * (len(x) - 1) // 2
    return (conc - disc) / math.sqrt((pairs - tie_x) * (pairs - tie_y))


def scores_by_pair(scores: pd.DataFrame, metric: str, column: str) -> dict[tuple[str, str], float]:
    sub = scores[scores["metric"] == metric]
    return dict(zip(zip(sub["vision"], sub["text"], strict=True), sub[column], strict=True))


@pytest.fixture
def ranking() -> Ranking:
    return Ranking(
        make_scores(), metadata={"probe": {"name": "flickr8k:test", "fingerprint": "f00"}}
    )


def test_table_orders_pairs_by_primary_metric_and_ranks_under_others(ranking: Ranking) -> None:
    scores = make_scores()
    table = ranking.table
    assert len(table) == len(VISION) * len(TEXT)
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    primary = table["linear_cka_unbiased"].to_numpy()
    assert np.all(np.diff(primary) <= 0)
    for (
        m
    ) in METRICS:  # rank = 1 + number of pairs with a strictly higher score, from the long table
        sub = scores[scores["metric"] == m]
        for row in table.itertuples():
            own = sub[(sub["vision"] == row.vision) & (sub["text"] == row.text)]["score"].item()
            assert getattr(row, m) == pytest.approx(own)
            assert getattr(row, f"rank_{m}") == 1 + int((sub["score"] > own).sum())
    shift = np.abs(
        table[[f"rank_{m}" for m in METRICS]].to_numpy() - table["rank"].to_numpy()[:, None]
    ).max(1)
    assert list(table["max_rank_shift"]) == list(shift)


def test_primary_metric_can_be_any_metric_of_the_table() -> None:
    r = Ranking(make_scores(), metric="mutual_knn")
    assert r.metrics[0] == "mutual_knn"
    assert np.all(np.diff(r.table["mutual_knn"].to_numpy()) <= 0)
    with pytest.raises(
        AlignkitError, match="expected one of: linear_cka, linear_cka_unbiased, mutual_knn"
    ):
        Ranking(make_scores(), metric="cknna")


def test_controls_and_significance(ranking: Ranking) -> None:
    table = ranking.table
    is_control = table["vision"].str.startswith("random-init:")
    assert list(table["control"]) == list(is_control)
    assert ranking.controls == ["random-init:torchvision:mobilenet_v2"]
    # the made-up table puts the controls at the null, below every real pair
    assert table.loc[is_control, "rank"].min() > table.loc[~is_control, "rank"].max()
    p = scores_by_pair(make_scores(), "linear_cka_unbiased", "p")
    expected = [p[(v, t)] < 0.05 for v, t in zip(table["vision"], table["text"], strict=True)]
    assert list(table["significant"]) == expected
    assert not table.loc[is_control, "significant"].any()


def test_agreement_is_kendall_tau_b_over_the_real_pairs(ranking: Ranking) -> None:
    tau = ranking.agreement()
    assert list(tau.index) == list(METRICS)
    t = ranking.table
    real = t[~t["vision"].str.startswith("random-init:")]
    assert tau.attrs["n_pairs"] == len(real) == 9 and not tau.attrs["too_few"]
    everything = ranking.agreement(controls=True)
    assert everything.attrs["n_pairs"] == 12
    for a, b in itertools.combinations(METRICS, 2):
        assert tau.loc[a, b] == pytest.approx(
            naive_tau_b(real[a].to_numpy(), real[b].to_numpy()), abs=1e-12
        )
        assert everything.loc[a, b] == pytest.approx(
            naive_tau_b(t[a].to_numpy(), t[b].to_numpy()), abs=1e-12
        )
        assert tau.loc[a, b] == tau.loc[b, a]
    assert np.allclose(np.diag(tau.to_numpy()), 1.0)


def test_controls_do_not_inflate_agreement() -> None:
    """Two metrics that order the real pairs in exactly opposite ways agree perfectly on putting
    the controls last: over all pairs τ looks positive, over the real pairs it is -1."""
    vision = ("torchvision:mobilenet_v2", "onnx:sscd", "random-init:torchvision:mobilenet_v2")
    text = ("st:a", "st:b", "random:text-384")
    scores = make_scores(vision=vision, text=text, metrics=("linear_cka", "mutual_knn"))
    real = ~(scores["vision"].str.startswith("random") | scores["text"].str.startswith("random"))
    order = {pair: i for i, pair in enumerate([(v, t) for v in vision[:2] for t in text[:2]])}
    for i in scores.index[real]:
        rank = order[(scores.at[i, "vision"], scores.at[i, "text"])]
        up = scores.at[i, "metric"] == "linear_cka"
        scores.at[i, "score"] = 10.0 + (rank if up else -rank)  # opposite orders, above controls
    low = {
        pair: 0.01 * i
        for i, pair in enumerate(dict.fromkeys(zip(scores["vision"], scores["text"], strict=True)))
    }
    for i in scores.index[~real]:  # the same low order of the control pairs under both metrics
        scores.at[i, "score"] = low[(scores.at[i, "vision"], scores.at[i, "text"])]
    r = Ranking(scores)
    assert r.agreement().loc["linear_cka", "mutual_knn"] == pytest.approx(-1.0)
    assert r.agreement().attrs["n_pairs"] == 4 and r.agreement().attrs["too_few"]
    assert r.agreement(controls=True).loc["linear_cka", "mutual_knn"] > 0
    assert "too few pairs" in r.summary() and "4 real pairs" in r.summary()
    title = r.plot_agreement().get_title()
    assert "over 4 real pairs" in title and "too few pairs to judge" in title


def test_kendall_tau_with_ties_matches_naive() -> None:
    scores = make_scores()
    scores.loc[scores["metric"] == "mutual_knn", "score"] = np.round(
        scores.loc[scores["metric"] == "mutual_knn", "score"], 1
    )  # many ties
    r = Ranking(scores)
    t = r.table[~r.table["control"]]
    assert r.agreement().loc["linear_cka", "mutual_knn"] == pytest.approx(
        naive_tau_b(t["linear_cka"].to_numpy(), t["mutual_knn"].to_numpy()), abs=1e-12
    )
    # tied pairs share the best rank
    ranks = r.table.groupby("mutual_knn")["rank_mutual_knn"].nunique()
    assert (ranks == 1).all()


def test_disagreements_lists_pairs_that_move(ranking: Ranking) -> None:
    dis = ranking.disagreements(top=100)
    assert (dis["max_rank_shift"] > 0).all()
    assert list(dis["max_rank_shift"]) == sorted(dis["max_rank_shift"], reverse=True)
    assert len(dis) == int((ranking.table["max_rank_shift"] > 0).sum())
    real = ranking.disagreements(top=100, controls=False)
    assert not real["vision"].str.startswith("random-init:").any()
    moved = (ranking.table["max_rank_shift"] > 0) & ~ranking.table["control"]
    assert len(real) == int(moved.sum())


def test_layer_rows_do_not_enter_the_pair_table() -> None:
    scores = make_scores()
    extra = scores.iloc[:3].copy()
    extra["vision_layer"], extra["text_layer"], extra["score"] = 2, 1, 99.0
    r = Ranking(pd.concat([scores, extra], ignore_index=True))
    assert len(r.table) == len(VISION) * len(TEXT)
    assert r.table["linear_cka_unbiased"].max() < 99


def test_bad_tables_are_refused() -> None:
    with pytest.raises(AlignkitError, match="lacks columns"):
        Ranking(make_scores().drop(columns=["z"]))
    with pytest.raises(AlignkitError, match="empty"):
        Ranking(pd.DataFrame(columns=list(SCORE_COLUMNS)))


def test_layer_result_corrects_for_the_maximum() -> None:
    rng = np.random.default_rng(1)
    b, lv, lt = 199, 6, 5
    null = rng.normal(0.0, 0.05, size=(b, lv, lt))
    scores = rng.normal(0.0, 0.05, size=(lv, lt))
    scores[3, 2] = 0.12  # about 2.4 sd: beats a single cell's null, not the max of 30
    r = LayerResult.from_null("v", "t", "linear_cka_unbiased", scores, null)
    assert r.best == (3, 2) and r.best_score == pytest.approx(0.12)
    null_max = np.array([null[i].max() for i in range(b)])
    assert r.p_max == pytest.approx((1 + sum(m >= 0.12 for m in null_max)) / (b + 1))
    assert r.p_best_uncorrected == pytest.approx(
        (1 + sum(null[i, 3, 2] >= 0.12 for i in range(b))) / (b + 1)
    )
    assert r.p_best_uncorrected < 0.05 < r.p_max
    assert r.null_max_mean == pytest.approx(null_max.mean())
    assert r.last_score == pytest.approx(scores[-1, -1])
    empty = LayerResult.from_null("v", "t", "m", scores, None)
    assert math.isnan(empty.p_max) and empty.n_permutations == 0


def _small() -> Ranking:
    """One metric and PNG only: the cheapest folder to write, for the folder-safety tests."""
    return Ranking(make_scores(metrics=("linear_cka",)))


def _write_small(tmp: Path, seed: int = 0, **kwargs) -> Path:
    out = tmp / "run"
    Ranking(make_scores(seed=seed, metrics=("linear_cka",))).save(out, formats=("png",), **kwargs)
    return out


@pytest.fixture(scope="module")
def layer_result() -> LayerResult:
    rng = np.random.default_rng(0)
    return LayerResult.from_null(
        VISION[0], TEXT[0], "linear_cka_unbiased", rng.random((4, 3)), rng.random((20, 4, 3))
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory, layer_result: LayerResult) -> tuple[Ranking, Path]:
    """A full run folder (three metrics, PNG and SVG, one layer-wise pair), written once."""
    r = Ranking(
        make_scores(),
        layers=[layer_result],
        metadata={"probe": {"name": "flickr8k:test"}, "config": {"permutations": 20}},
    )
    out = tmp_path_factory.mktemp("saved") / "run"
    r.save(out, formats=("png", "svg"))
    return r, out


def test_save_writes_every_file_and_load_round_trips(saved: tuple[Ranking, Path]) -> None:
    ranking, out = saved
    names = {p.name for p in out.iterdir()}
    expected = {
        "scores.csv",
        "ranking.csv",
        "agreement.png",
        "top_pairs.png",
        "run.json",
        "summary.md",
        "layers",
        "layer_scores.csv",
        "layers_best.csv",
    }
    expected |= {f"heatmap_{m}.{ext}" for m in METRICS for ext in ("png", "svg")}
    assert names == expected
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    pd.testing.assert_frame_equal(
        scores.drop(columns="options"), ranking.scores.drop(columns="options"), check_dtype=False
    )
    table = pd.read_csv(out / "ranking.csv")
    assert list(table["vision"]) == list(ranking.table["vision"])
    meta = json.loads((out / "run.json").read_text())
    assert meta["primary_metric"] == "linear_cka_unbiased"
    assert set(meta["files"]) == (names - {"layers"}) | {
        "layers/mobilenet_v2__all-MiniLM-L6-v2.png"
    }
    summary = (out / "summary.md").read_text()
    top = ranking.table.iloc[0]
    assert f"`{top['vision']}`" in summary and "Kendall" in summary
    back = Ranking.load(out)
    pd.testing.assert_frame_equal(
        back.table.drop(columns="significant"),
        ranking.table.drop(columns="significant"),
        check_dtype=False,
    )
    assert not list(out.parent.glob(".run.*"))  # no temporary folders left


def test_layers_are_saved_and_loaded(
    saved: tuple[Ranking, Path], layer_result: LayerResult
) -> None:
    _, out = saved
    assert len(list((out / "layers").glob("*.png"))) == 1
    best = pd.read_csv(out / "layers_best.csv")
    assert (best["best_vision_layer"].item(), best["best_text_layer"].item()) == layer_result.best
    long = pd.read_csv(out / "layer_scores.csv")
    assert len(long) == layer_result.scores.size
    back = Ranking.load(out).layers[0]
    np.testing.assert_allclose(back.scores, layer_result.scores)
    assert back.p_max == pytest.approx(layer_result.p_max)
    assert "Best layer pairs" in (out / "summary.md").read_text()


def test_save_refuses_another_run_without_overwrite(tmp_path: Path) -> None:
    out = _write_small(tmp_path)
    before = (out / "scores.csv").read_bytes()
    with pytest.raises(AlignkitError, match="pass overwrite=True"):  # the Python argument
        _write_small(tmp_path, seed=5)
    assert (out / "scores.csv").read_bytes() == before
    _write_small(tmp_path, seed=5, overwrite=True)
    assert (out / "scores.csv").read_bytes() != before


def test_save_never_replaces_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(AlignkitError, match="not an alignkit run folder"):
        _small().save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"
    with pytest.raises(AlignkitError, match="is a file"):
        _small().save(tmp_path / "notes" / "thesis.tex")


def test_failed_save_leaves_the_earlier_run_intact(tmp_path: Path, monkeypatch) -> None:
    out = _write_small(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr("alignkit.plots.top_pairs", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _write_small(tmp_path, seed=3, overwrite=True)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # temp folder cleaned up


def test_console_table_lists_top_pairs_with_short_names(ranking: Ranking) -> None:
    text = ranking.format_table(top=4)
    lines = text.splitlines()
    assert len(lines) == 5  # header + 4 pairs
    scores = make_scores()  # the 4 best pairs by the primary metric, from the long table
    best = scores[scores["metric"] == "linear_cka_unbiased"].nlargest(4, "score")
    short = {s: s.rsplit(":", 1)[-1].rsplit("/", 1)[-1] for s in [*VISION, *TEXT]}
    for line, row in zip(lines[1:], best.itertuples(), strict=True):
        assert f"{row.score:.3f}" in line
        assert short[row.vision] in line and short[row.text] in line
    assert "st:sentence-transformers" not in text


def test_neighbours_are_cosine_nearest_rows_without_self() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    ids = tuple(f"r{i}" for i in range(12))
    rows = tuple(ProbeRow(i, Path(f"/nonexistent/{i}.jpg"), (f"caption of {i}",)) for i in ids)
    probe = ProbeSet("toy", rows)
    fs = FeatureSet(torch.from_numpy(x), ids, {"encoder": "toy:vision", "modality": "image"})
    r = Ranking(make_scores(), features={"toy:vision": fs}, probe=probe)
    nb = r.neighbours(3, "toy:vision", k=4)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = {j: float(xn[3] @ xn[j]) for j in range(12) if j != 3}
    expected = sorted(sims, key=lambda j: -sims[j])[:4]
    assert list(nb["row"]) == expected
    assert list(nb["caption"]) == [f"caption of r{j}" for j in expected]
    np.testing.assert_allclose(nb["cosine"], [sims[j] for j in expected], rtol=1e-5)
    with pytest.raises(AlignkitError, match="expected one of: toy:vision"):
        r.neighbours(0, "nope")
    with pytest.raises(AlignkitError, match="row must be in 0..11"):
        r.neighbours(12, "toy:vision")


def test_probe_size_checks() -> None:
    cfg = RankConfig(metrics=("linear_cka_unbiased", "mutual_knn"), k=10, subsamples=0)
    with pytest.raises(AlignkitError, match="k=10 neighbours need n >= k \\+ 2; got n=11"):
        check_probe_size(11, cfg)
    check_probe_size(12, cfg)
    # the interval subsamples keep round(0.8 n) rows, and k=10 needs 12 of them
    with pytest.raises(AlignkitError, match="each of the 10 subsamples keeps 10 of the n=12 rows"):
        check_probe_size(12, cfg.replace(subsamples=10))
    check_probe_size(15, cfg.replace(subsamples=10))  # keeps 12
    small = RankConfig(metrics=("linear_cka",), permutations=100, subsamples=0)
    with pytest.raises(AlignkitError, match="only 24 orderings; lower permutations"):
        check_probe_size(4, small)
    with pytest.raises(AlignkitError, match="n >= 4; got n=3"):
        check_probe_size(3, small.replace(permutations=0))
    check_probe_size(6, small)  # 720 orderings > 100 permutations


def test_default_probe_follows_the_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(tmp_path))
    assert default_probe() == "synthetic"
    (tmp_path / "flickr8k").mkdir()
    (tmp_path / "flickr8k" / "pairs.jsonl").write_text("{}\n")
    assert default_probe() == "flickr8k:test"


def test_no_vision_or_text_encoder_is_an_error() -> None:
    from alignkit.ranking import rank_encoders

    with pytest.raises(AlignkitError, match="no vision encoder given"):
        rank_encoders(text=["st:sentence-transformers/all-MiniLM-L6-v2"], probe="synthetic", n=20)
    with pytest.raises(AlignkitError, match="no text encoder given"):
        rank_encoders(vision=["torchvision:mobilenet_v2"], probe="synthetic", n=20)


def test_summary_says_p_at_floor_ties_with_the_best_and_recommends() -> None:
    scores = make_scores()
    r = Ranking(scores, metadata={"config": {"permutations": 100}})
    md = r.summary()
    # p at its floor 1/(B+1): counted here from the long table
    floor = (scores["p"] - 1 / 101).abs() < 1e-12
    assert f"{int(floor.sum())} of the scores have p = 1/(B+1) = 0.0099" in md
    # ties: real pairs whose interval [score - 0.02, score + 0.02] reaches the best real pair's
    unb = scores[
        (scores["metric"] == "linear_cka_unbiased") & ~scores["vision"].str.startswith("random")
    ]
    best = unb.loc[unb["score"].idxmax()]
    tied = unb[(unb.index != best.name) & (unb["score"] + 0.02 >= best["score"] - 0.02)]
    assert len(r.tied_with_best()) == len(tied)
    assert {
        (v, t)
        for v, t in zip(r.tied_with_best()["vision"], r.tied_with_best()["text"], strict=True)
    } == {(v, t) for v, t in zip(tied["vision"], tied["text"], strict=True)}
    assert "**Recommendation**: align" in md
    if len(tied):
        assert "statistically tied with the best" in md
    # without intervals nothing can be called tied
    no_ci = scores.assign(ci_low=np.nan, ci_high=np.nan)
    assert Ranking(no_ci).tied_with_best().empty
    assert "ties cannot be judged" in Ranking(no_ci).summary()


def _study_accuracy(metric: str, n: int) -> float:
    """Decision accuracy of ``metric`` at ``n`` rows in docs/probe_size.csv: the mean over the six
    results, all pairs of pairs."""
    table = pd.read_csv(Path(__file__).parents[1] / "docs" / "probe_size.csv")
    row = table[(table["metric"] == metric) & (table["n"] == n)]
    return float(
        row[[c for c in table.columns if c.startswith("accuracy/all/")]].mean(axis=1).item()
    )


@pytest.mark.parametrize(("n", "size"), [(200, 250), (1000, 1000)])
def test_summary_says_why_mutual_knn_ranks_and_when_ridge_decides_better(n, size) -> None:
    r = Ranking(make_scores(n=n), metric="mutual_knn")
    md = r.summary()
    knn = _study_accuracy("mutual_knn", size)
    assert "- why mutual kNN: " in md
    assert f"{knn:.0%} of the time at {size} rows" in md
    assert f"unbiased CKA {_study_accuracy('linear_cka_unbiased', size):.0%}" in md
    ridge = "`--metric ridge_alignability` first decided better"
    assert (ridge in md) == (size < 500)
    if size < 500:
        assert f"({_study_accuracy('ridge_alignability', size):.0%})" in md
    # a metric the study does not recommend gets no reason
    assert "- why" not in Ranking(make_scores(n=n), metric="linear_cka").summary()


def test_summary_says_one_score_at_the_floor_and_one_tied_pair_in_the_singular() -> None:
    scores = make_scores(vision=VISION[:2], text=TEXT[:1], metrics=("linear_cka_unbiased",))
    scores["score"] = [0.31, 0.30]  # intervals ±0.02 overlap: the second pair ties the best
    scores["ci_low"], scores["ci_high"] = scores["score"] - 0.02, scores["score"] + 0.02
    scores["p"] = [1 / 101, 0.002]  # one p at the floor of B = 100
    r = Ranking(scores, metadata={"config": {"permutations": 100, "subsamples": 1}})
    md = r.summary()
    assert "- p at its floor: 1 of the scores has p = 1/(B+1) = 0.0099" in md
    assert "the smallest 100 permutations can give" in md
    assert "or the pair tied with it;" in md and "one of the 1 pairs" not in md
    assert "intervals: 1 subsample;" in md
    # one real pair (and a control pair) under two metrics: one pair to agree on
    two = make_scores(vision=(VISION[0], VISION[3]), text=TEXT[:1], metrics=METRICS[:2])
    r = Ranking(two, metadata={"config": {"permutations": 100}})
    md = r.summary()
    assert "(Kendall τ between rankings, 1 real pair)" in md
    assert "too few pairs to judge agreement (1 real pair;" in md
    assert "2 vision × 1 text encoder = 2 pairs" in md
    assert "over 1 real pair" in r.plot_agreement().get_title()


def test_tables_show_p_that_underflowed_from_its_log10(tmp_path: Path) -> None:
    scores = make_scores(metrics=("linear_cka_unbiased",))
    best = scores["score"].idxmax()
    scores.loc[best, ["p", "log10_p", "null_method"]] = [0.0, -411.62, "analytic-pearson3"]
    r = Ranking(scores, metadata={"config": {"permutations": 100}})
    assert r.table.loc[0, "linear_cka_unbiased_log10_p"] == -411.62
    for text in (r.summary(), r.format_table()):
        assert "< 1e-4" in text and "e-412" not in text  # below the floor p was checked to
        assert "0.010" in text  # p = 1/101 as before
    # a scores.csv written before the column: log10(p) where p > 0, unknown where p = 0
    r.save(tmp_path / "run", formats=("png",))
    old = pd.read_csv(tmp_path / "run" / "scores.csv").drop(columns="log10_p")
    old.to_csv(tmp_path / "run" / "scores.csv", index=False)
    back = Ranking.load(tmp_path / "run").scores
    assert np.isnan(back.loc[best, "log10_p"])
    rest = back.drop(index=best)
    np.testing.assert_allclose(rest["log10_p"], np.log10(rest["p"]))


def test_every_heatmap_of_a_run_has_one_order_with_controls_marked(ranking: Ranking) -> None:
    import matplotlib.pyplot as plt

    orders = []
    for m in METRICS:
        ax = ranking.plot_heatmap(m)
        rows = [t.get_text() for t in ax.get_yticklabels()]
        cols = [t.get_text() for t in ax.get_xticklabels()]
        orders.append((rows, cols))
        assert rows[-1] == "rand-init mobilenet_v2 (control)"  # controls last, said in words
        assert ax.get_yticklabels()[-1].get_fontstyle() == "italic"
        assert "chance" in [t.get_text() for t in ax.figure.axes[-1].get_yticklabels()]
        plt.close(ax.figure)
    assert all(o == orders[0] for o in orders)  # cells line up across metrics
    # the order is the primary metric's mean score per encoder, from the long table
    scores = make_scores()
    unb = scores[scores["metric"] == "linear_cka_unbiased"]
    real = unb[~unb["vision"].str.startswith("random")]
    by_mean = real.groupby("vision")["score"].mean().sort_values(ascending=False).index
    short = {v: v.rsplit(":", 1)[-1] for v in VISION}
    assert orders[0][0][:-1] == [short[v] for v in by_mean]


def test_layer_plots_share_one_colour_scale_and_mark_chance() -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(3)
    strong = LayerResult.from_null(
        VISION[0], TEXT[0], "mutual_knn", 0.3 + rng.random((3, 2)) / 2, None
    )
    weak = LayerResult.from_null(
        VISION[3], TEXT[0], "mutual_knn", 0.05 + rng.random((3, 2)) / 50, None
    )
    r = Ranking(make_scores(), layers=[strong, weak])
    limits = []
    for lr in (strong, weak):
        ax = r.plot_layers(lr.vision, lr.text)
        limits.append(ax.images[0].get_clim())
        bar = ax.figure.axes[-1]
        assert "scale shared by all pairs" in bar.get_ylabel()
        assert "chance" in [t.get_text() for t in bar.get_yticklabels()]
        assert "0 = first block, 2 = last" in ax.get_ylabel()
        plt.close(ax.figure)
    lo = min(strong.scores.min(), weak.scores.min(), 10 / 199)  # widened to chance, k/(n-1)
    hi = max(strong.scores.max(), weak.scores.max())
    assert limits[0] == limits[1] == pytest.approx((lo, hi))
