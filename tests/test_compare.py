"""score_pairs / score_layers equal independent per-pair calls, with shared permutations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.features import FeatureSet
from alignkit.metrics import METRICS, analytic_null, permutation_null, subsample_interval
from alignkit.metrics.pairs import SCORE_COLUMNS, LayerScores, score_layers, score_pairs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _encoders(n: int = 80, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)

    def view(d: int, noise: float) -> torch.Tensor:
        return z @ torch.randn(4, d, generator=g) + noise * torch.randn(n, d, generator=g)

    vision = {"v-small": view(12, 0.5), "v-noisy": view(20, 2.0)}
    text = {"t-a": view(16, 0.7), "t-b": view(10, 1.0), "t-c": torch.randn(n, 8, generator=g)}
    return vision, text


def test_score_pairs_equals_independent_pair_calls():
    vision, text = _encoders()
    metrics = ["linear_cka_unbiased", "linear_cka", "mutual_knn", "cknna", "rbf_cka", "svcca"]
    df = score_pairs(
        vision,
        text,
        metrics,
        n_permutations=15,
        null="permutation",
        n_subsamples=4,
        seed=3,
        progress=False,
        k=5,
    )
    assert tuple(df.columns) == SCORE_COLUMNS
    assert (df.null_method == "permutation").all()
    assert len(df) == 2 * 3 * len(metrics)
    for row in df.itertuples():
        x, y = vision[row.vision], text[row.text]
        opts = {"k": 5} if "k" in METRICS[row.metric].defaults else {}
        null = permutation_null(row.metric, x, y, n_permutations=15, seed=3, **opts)
        assert row.score == pytest.approx(null.observed, abs=1e-12)
        assert row.score == pytest.approx(METRICS[row.metric](x, y, **opts), abs=1e-12)
        assert (row.null_mean, row.null_std, row.z, row.p) == pytest.approx(
            (null.mean, null.std, null.z, null.p), abs=1e-12
        )
        low, high = subsample_interval(
            row.metric, x, y, n_subsamples=4, fraction=0.8, seed=3, **opts
        )
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-12)
        assert row.n == 80 and row.vision_layer == -1 and row.text_layer == -1
        if row.metric == "mutual_knn":
            assert row.chance == pytest.approx(5 / 79) and row.k == 5
        elif row.metric == "cknna":
            assert math.isnan(row.chance) and row.k == 5
        else:
            assert math.isnan(row.chance) and math.isnan(row.k)
        assert "k" not in json.loads(row.options)
    # the random text encoder is at chance; the latent-sharing ones are not
    unb = df[df.metric == "linear_cka_unbiased"].set_index(["vision", "text"])
    # (p >= 1/16 for any input with 15 permutations: at chance means inside the null, off the floor)
    at_chance = unb.loc[("v-small", "t-c")]
    assert abs(at_chance["z"]) < 3 and at_chance["p"] >= 3 / 16, tuple(at_chance[["z", "p"]])
    assert unb.loc[("v-small", "t-a"), "p"] == pytest.approx(1 / 16)


def test_score_pairs_without_calibration_has_nan_columns_and_no_bar(capsys):
    vision, text = _encoders()
    df = score_pairs(vision, text, null="none", n_permutations=5, progress=False)
    assert list(df.metric.unique()) == ["mutual_knn", "linear_cka_unbiased", "linear_cka"]
    assert df[["null_mean", "null_std", "z", "p", "ci_low", "ci_high"]].isna().all().all()
    assert (df.null_method == "none").all()
    assert capsys.readouterr().err == ""


def test_score_pairs_analytic_null_by_default_and_permutations_for_the_rest():
    vision, text = _encoders()
    metrics = ["linear_cka_unbiased", "linear_cka", "rbf_cka", "mutual_knn"]
    df = score_pairs(vision, text, metrics, n_permutations=9, seed=1, progress=False)
    for row in df.itertuples():
        x, y = vision[row.vision], text[row.text]
        if row.metric == "mutual_knn":  # no exact moments: the 9 permutations
            ref = permutation_null(row.metric, x, y, n_permutations=9, seed=1)
            assert row.null_method == "permutation"
        else:
            ref = analytic_null(row.metric, x, y)
            assert row.null_method == ref.method == "analytic-pearson3"
        assert (row.null_mean, row.null_std, row.z, row.p) == pytest.approx(
            (ref.mean, ref.std, ref.z, ref.p), abs=1e-12
        )
    # analytic p resolves far below 1/(B+1) for the latent-sharing pair; the random one is null
    unb = df[df.metric == "linear_cka_unbiased"].set_index(["vision", "text"])
    assert unb.loc[("v-small", "t-a"), "p"] < 1e-6 and unb.loc[("v-small", "t-c"), "p"] > 0.05
    # without permutations the metrics without exact moments have no null
    df0 = score_pairs(vision, text, metrics, progress=False)
    knn = df0[df0.metric == "mutual_knn"]
    assert knn.p.isna().all() and (knn.null_method == "none").all()
    assert df0[df0.metric != "mutual_knn"].p.notna().all()


def _feature_set(name: str, feats: torch.Tensor, ids: tuple[str, ...]) -> FeatureSet:
    return FeatureSet(feats, ids, {"encoder": name})


def test_score_pairs_accepts_feature_sets_and_checks_their_rows():
    vision, text = _encoders()
    ids = tuple(f"row{i}" for i in range(80))
    vs = [_feature_set(k, v, ids) for k, v in vision.items()]
    ts = [_feature_set(k, v, ids) for k, v in text.items()]
    from_sets = score_pairs(vs, ts, ["linear_cka"], progress=False)
    from_maps = score_pairs(vision, text, ["linear_cka"], progress=False)
    pd.testing.assert_frame_equal(from_sets, from_maps)
    other = tuple(reversed(ids))
    with pytest.raises(
        AlignkitError,
        match="must describe the same probe rows: got 80 rows and 80 rows with different ids",
    ):
        score_pairs(vs, [_feature_set("t-a", text["t-a"], other)], progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ["nope"]}, "unknown metric 'nope'; expected one of"),
        (
            {"metrics": ["linear_cka"], "k": 5},
            r"no selected metric \(linear_cka\) takes option\(s\) \['k'\]",
        ),
        ({"n_permutations": -1}, "n_permutations must be an integer >= 0"),
        ({"n_subsamples": 1}, "n_subsamples must be 0 or >= 2"),
        ({"null": "exact"}, "null must be one of analytic, permutation, none: got 'exact'"),
    ],
)
def test_score_pairs_bad_arguments(kwargs, match):
    vision, text = _encoders()
    with pytest.raises(AlignkitError, match=match):
        score_pairs(vision, text, progress=False, **kwargs)


def test_score_pairs_bad_features_name_the_encoder():
    vision, text = _encoders()
    text["t-b"] = text["t-b"][:70]
    with pytest.raises(
        AlignkitError,
        match="v-small and t-b must describe the same probe rows: got 80 rows and 70 rows",
    ):
        score_pairs(vision, text, progress=False)
    vision, text = _encoders()
    text["t-b"] = text["t-b"].clone()
    text["t-b"][5, 2] = float("nan")
    with pytest.raises(AlignkitError, match="text 't-b' must be finite: 1 of 80 rows"):
        score_pairs(vision, text, progress=False)


def test_score_layers_shares_permutations_across_layer_pairs():
    vision, text = _encoders()
    v = torch.stack([vision["v-small"], vision["v-noisy"][:, :12]])  # (2, n, 12)
    t = torch.stack([text["t-a"][:, :8], text["t-b"][:, :8], text["t-c"]])  # (3, n, 8)
    res = score_layers(v, t, "mutual_knn", n_permutations=12, seed=5, progress=False, k=6)
    assert isinstance(res, LayerScores)
    assert res.scores.shape == (2, 3) and res.null.shape == (12, 2, 3)
    for i in range(2):
        for j in range(3):
            null = permutation_null("mutual_knn", v[i], t[j], n_permutations=12, seed=5, k=6)
            assert res.scores[i, j] == pytest.approx(null.observed, abs=1e-12)
            np.testing.assert_allclose(res.null[:, i, j], null.samples, atol=1e-12)
    assert res.best == (0, 0)
    maxima = res.null.max((1, 2))
    assert res.max_p == pytest.approx((1 + np.sum(maxima >= res.scores.max())) / 13)
    # the same layer-wise input inside score_pairs gives one row per layer pair
    df = score_pairs({"v": v}, {"t": t}, ["mutual_knn"], progress=False, k=6)
    assert sorted(zip(df.vision_layer, df.text_layer, strict=True)) == [
        (i, j) for i in range(2) for j in range(3)
    ]
    np.testing.assert_allclose(
        df.sort_values(["vision_layer", "text_layer"]).score.to_numpy(), res.scores.ravel()
    )
