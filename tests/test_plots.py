"""Plot functions draw on the Axes they are given, return it, and draw what they claim."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from _ranking_tables import METRICS, TEXT, VISION, make_scores

from alignkit import plots
from alignkit.errors import AlignkitError


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_heatmap_writes_every_score_and_hatches_non_significant_cells() -> None:
    scores = make_scores()
    sub = scores[scores["metric"] == "linear_cka"]
    fig, ax = plt.subplots()
    out = plots.heatmap(scores, "linear_cka", ax=ax, alpha=0.05)
    assert out is ax
    texts = _cell_texts(ax)
    assert len(texts) == len(VISION) * len(TEXT)
    for score, z, null in zip(sub["score"], sub["z"], sub["null_mean"], strict=True):
        z_text = f"z={z:.0f}" if abs(z) >= 10 else f"z={z:.1f}"
        null_text = f"\nnull {null:.2f}" if abs(null) >= 0.005 else ""
        assert f"{score:.3f}\n{z_text}{null_text}" in texts
    hatched = [p for p in ax.patches if p.get_gid() == plots.NONSIG_GID]
    assert len(hatched) == int((sub["p"] >= 0.05).sum()) > 0
    assert all(p.get_hatch() == plots.NONSIG_HATCH for p in hatched)
    # hatched cells sit exactly on the non-significant (vision, text) cells
    mat = plots.score_matrix(scores, "linear_cka", "p")
    expected = {
        (j, i) for i in range(mat.shape[0]) for j in range(mat.shape[1]) if mat.iat[i, j] >= 0.05
    }
    got = {(round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in hatched}
    assert got == expected


def test_heatmap_colour_is_centred_on_the_null() -> None:
    ax = plots.heatmap(make_scores(), "linear_cka")
    image = ax.images[0]
    assert image.norm(0.0) == pytest.approx(
        0.5
    )  # z = 0 (shuffled-pair level) is the neutral colour
    np.testing.assert_allclose(
        np.asarray(image.get_array()), plots.score_matrix(make_scores(), "linear_cka", "z")
    )
    assert "chance" in ax.figure.axes[-1].get_ylabel()


def test_heatmap_without_null_centres_on_chance_or_shows_scores() -> None:
    scores = make_scores(null=False)
    ax = plots.heatmap(scores, "mutual_knn")
    mat = plots.score_matrix(scores, "mutual_knn")
    chance = plots.score_matrix(scores, "mutual_knn", "chance")
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), mat - chance)
    assert not [p for p in ax.patches if p.get_gid() == plots.NONSIG_GID]
    ax2 = plots.heatmap(scores, "linear_cka")
    assert "no null" in ax2.figure.axes[-1].get_ylabel()
    np.testing.assert_allclose(
        np.asarray(ax2.images[0].get_array()), plots.score_matrix(scores, "linear_cka")
    )


def test_heatmap_sorts_rows_by_mean_and_shortens_labels() -> None:
    scores = make_scores()
    ax = plots.heatmap(scores, "linear_cka_unbiased")
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows[-1] == "rand-init mobilenet_v2"  # the control has the lowest mean
    assert set(cols) == {"all-MiniLM-L6-v2", "all-mpnet-base-v2", "l2_supercat"}
    mat = plots.score_matrix(scores, "linear_cka_unbiased")
    means = mat.mean(axis=1).to_numpy()
    assert np.all(np.diff(means) <= 0)


def test_heatmap_skips_missing_cells_and_unknown_metric() -> None:
    scores = make_scores()
    drop = (
        (scores["metric"] == "linear_cka")
        & (scores["vision"] == VISION[0])
        & (scores["text"] == TEXT[0])
    )
    ax = plots.heatmap(scores[~drop], "linear_cka")
    assert len(ax.texts) == len(VISION) * len(TEXT) - 1
    with pytest.raises(AlignkitError, match="no scores for metric 'svcca'"):
        plots.heatmap(scores, "svcca")


def test_agreement_heatmap_writes_tau_values() -> None:
    import pandas as pd

    tau = pd.DataFrame(
        [[1.0, 0.5, -0.2], [0.5, 1.0, 0.1], [-0.2, 0.1, 1.0]], index=METRICS, columns=METRICS
    )
    fig, ax = plt.subplots()
    assert plots.agreement_heatmap(tau, ax=ax) is ax
    assert sorted(_cell_texts(ax)) == sorted(f"{v:.2f}" for v in tau.to_numpy().ravel())
    assert ax.images[0].norm.vmin == -1 and ax.images[0].norm.vmax == 1


def test_top_pairs_draws_bars_in_score_order_with_intervals() -> None:
    scores = make_scores()
    fig, ax = plt.subplots()
    assert plots.top_pairs(scores, "linear_cka_unbiased", top=5, ax=ax) is ax
    bars = ax.containers[0]
    widths = [b.get_width() for b in bars]
    sub = scores[scores["metric"] == "linear_cka_unbiased"].sort_values("score", ascending=False)
    assert len(bars) == 5
    np.testing.assert_allclose(widths[::-1], sub["score"].head(5))  # best bar on top
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert (
        labels[-1] == f"{plots.short_label(sub['vision'].iloc[0])}  ×  "
        f"{plots.short_label(sub['text'].iloc[0])}"
    )
    assert any(c.__class__.__name__ == "ErrorbarContainer" for c in ax.containers)
    # all 12 pairs: the control pairs (not significant) are grey
    ax2 = plots.top_pairs(scores, "linear_cka_unbiased", top=12)
    colours = [tuple(np.round(b.get_facecolor()[:3], 3)) for b in ax2.containers[0]]
    grey = tuple(np.round(matplotlib.colors.to_rgb("#b0b0b0"), 3))
    assert colours.count(grey) == int((sub["p"] >= 0.05).sum())


def test_layer_heatmap_marks_the_best_cell() -> None:
    rng = np.random.default_rng(0)
    mat = rng.random((5, 4))
    mat[3, 1] = 2.0
    fig, ax = plt.subplots()
    assert (
        plots.layer_heatmap(
            mat,
            ax=ax,
            metric="linear_cka",
            vision="onnx:sscd",
            text="wordllama:l2_supercat",
            p_max=0.03,
        )
        is ax
    )
    best = [p for p in ax.patches if p.get_gid() == plots.BEST_GID]
    assert len(best) == 1 and (best[0].get_x() + 0.5, best[0].get_y() + 0.5) == (1, 3)
    assert len(ax.texts) == 20
    assert "L3×L1" in ax.get_title() and "0.03" in ax.get_title()
    big = plots.layer_heatmap(rng.random((13, 13)))
    assert len(big.texts) == 0  # too many cells to annotate legibly
    with pytest.raises(AlignkitError, match="got shape"):
        plots.layer_heatmap(np.zeros(3))


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ("st:sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("efficientnet-lite:efficientnet_lite0", "efficientnet_lite0"),
        ("random-init:torchvision:mobilenet_v2", "rand-init mobilenet_v2"),
        ("random:image-512", "random image-512"),
        ("timm:vit_small_patch14_dinov2[pooling=cls]", "vit_small_patch14_dinov2[pooling=cls]"),
    ],
)
def test_short_label(spec: str, label: str) -> None:
    assert plots.short_label(spec, max_len=60) == label


def test_short_labels_keep_colliding_names_apart() -> None:
    labels = plots.short_labels(
        ["st:sentence-transformers/all-MiniLM-L6-v2", "hf:other/all-MiniLM-L6-v2"]
    )
    assert len(set(labels.values())) == 2
    assert len(plots.short_label("x" * 80, max_len=20)) == 20
