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


# short names written out here (not computed by plots.short_label) to read the axes back
SHORT = {
    "torchvision:mobilenet_v2": "mobilenet_v2",
    "efficientnet-lite:efficientnet_lite0": "efficientnet_lite0",
    "onnx:sscd": "sscd",
    "random-init:torchvision:mobilenet_v2": "rand-init mobilenet_v2",
    "st:sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "st:sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
    "wordllama:l2_supercat": "l2_supercat",
}


def _expected(scores, metric: str, column: str) -> dict[tuple[str, str], float]:
    """``{(short vision, short text): value}`` straight from the long table."""
    sub = scores[scores["metric"] == metric]
    return {
        (SHORT[v], SHORT[t]): float(x)
        for v, t, x in zip(sub["vision"], sub["text"], sub[column], strict=True)
    }


def _axes_cells(ax) -> tuple[list[str], list[str]]:
    """Row (vision) and column (text) names as the heatmap's tick labels show them."""
    return [t.get_text() for t in ax.get_yticklabels()], [
        t.get_text() for t in ax.get_xticklabels()
    ]


def _colour_values(ax) -> dict[tuple[str, str], float]:
    rows, cols = _axes_cells(ax)
    arr = np.ma.filled(np.asarray(ax.images[0].get_array(), dtype=float), np.nan)
    return {(r, c): arr[i, j] for i, r in enumerate(rows) for j, c in enumerate(cols)}


def test_heatmap_writes_every_score_and_hatches_non_significant_cells() -> None:
    scores = make_scores()
    fig, ax = plt.subplots()
    out = plots.heatmap(scores, "linear_cka", ax=ax, alpha=0.05)
    assert out is ax
    rows, cols = _axes_cells(ax)
    assert sorted(rows) == sorted(SHORT[v] for v in VISION)
    assert sorted(cols) == sorted(SHORT[t] for t in TEXT)
    score = _expected(scores, "linear_cka", "score")
    z = _expected(scores, "linear_cka", "z")
    null = _expected(scores, "linear_cka", "null_mean")
    p = _expected(scores, "linear_cka", "p")
    assert len(ax.texts) == len(VISION) * len(TEXT)
    for text in ax.texts:  # each cell's text sits on its own (vision, text) cell
        j, i = text.get_position()
        cell = (rows[round(i)], cols[round(j)])
        z_text = f"z={z[cell]:.0f}" if abs(z[cell]) >= 10 else f"z={z[cell]:.1f}"
        null_text = f"\nnull {null[cell]:.2f}" if abs(null[cell]) >= 0.005 else ""
        assert text.get_text() == f"{score[cell]:.3f}\n{z_text}{null_text}", cell
    hatched = [q for q in ax.patches if q.get_gid() == plots.NONSIG_GID]
    assert all(q.get_hatch() == plots.NONSIG_HATCH for q in hatched)
    got = {(rows[round(q.get_y() + 0.5)], cols[round(q.get_x() + 0.5)]) for q in hatched}
    assert got == {cell for cell, value in p.items() if value >= 0.05} != set()


def test_heatmap_colour_is_centred_on_the_null() -> None:
    scores = make_scores()
    ax = plots.heatmap(scores, "linear_cka")
    assert ax.images[0].norm(0.0) == pytest.approx(0.5)  # z = 0 (shuffled pairs) is neutral
    z = _expected(scores, "linear_cka", "z")
    for cell, value in _colour_values(ax).items():
        assert value == pytest.approx(z[cell]), cell
    assert "chance" in ax.figure.axes[-1].get_ylabel()


def test_heatmap_without_null_centres_on_chance_or_shows_scores() -> None:
    scores = make_scores(null=False)
    ax = plots.heatmap(scores, "mutual_knn")
    score = _expected(scores, "mutual_knn", "score")
    for cell, value in _colour_values(ax).items():
        assert value == pytest.approx(score[cell] - 10 / 199), cell  # chance k/(n-1), n = 200
    assert not [q for q in ax.patches if q.get_gid() == plots.NONSIG_GID]
    ax2 = plots.heatmap(scores, "linear_cka")
    assert "no null" in ax2.figure.axes[-1].get_ylabel()
    score = _expected(scores, "linear_cka", "score")
    for cell, value in _colour_values(ax2).items():
        assert value == pytest.approx(score[cell]), cell


def test_heatmap_sorts_rows_and_columns_by_mean_score() -> None:
    scores = make_scores()
    ax = plots.heatmap(scores, "linear_cka_unbiased")
    rows, cols = _axes_cells(ax)
    sub = scores[scores["metric"] == "linear_cka_unbiased"]
    by_vision = sub.groupby("vision")["score"].mean().sort_values(ascending=False)
    by_text = sub.groupby("text")["score"].mean().sort_values(ascending=False)
    assert rows == [SHORT[v] for v in by_vision.index]
    assert cols == [SHORT[t] for t in by_text.index]
    assert rows[-1] == "rand-init mobilenet_v2"  # the control has the lowest mean


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
    assert plots.agreement_heatmap(tau, ax=ax, n_pairs=12) is ax
    assert sorted(_cell_texts(ax)) == sorted(
        ["1.00", "1.00", "1.00", "0.50", "0.50", "-0.20", "-0.20", "0.10", "0.10"]
    )
    assert ax.images[0].norm.vmin == -1 and ax.images[0].norm.vmax == 1
    assert "12 pairs" in ax.get_title() and "too few" not in ax.get_title()
    assert {t.get_fontstyle() for t in ax.texts} == {"normal"}


def test_agreement_over_too_few_pairs_is_marked() -> None:
    import pandas as pd

    tau = pd.DataFrame([[1.0, 1.0], [1.0, 1.0]], index=METRICS[:2], columns=METRICS[:2])
    tau.attrs["n_pairs"] = 2  # as Ranking.agreement() records it
    ax = plots.agreement_heatmap(tau)
    assert "too few pairs to judge agreement (2 < 5)" in ax.get_title()
    assert {t.get_fontstyle() for t in ax.texts} == {"italic"}
    assert ax.images[0].get_alpha() < 1


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


def _bar_labels(ax) -> dict[str, float]:
    """The colour bar's visible tick labels ``{text: tick value}`` after drawing; fails when
    any two of its labels (ticks and free texts) overlap on the rendered figure."""
    bar = ax.figure.axes[-1]
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    low, high = sorted(bar.get_ylim())
    ticks = {  # the colour bar's labels are on its right (label2)
        t.label2: t.get_loc()
        for t in bar.yaxis.get_major_ticks()
        if t.label2.get_visible() and t.label2.get_text() and low <= t.get_loc() <= high
    }
    shown = [*ticks, *(t for t in bar.texts if t.get_text())]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in shown]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            assert not box_a.overlaps(box_b), f"colour bar labels {a!r} and {b!r} overlap"
    return {label.get_text(): loc for label, loc in ticks.items()}


def test_colour_bars_label_chance_without_overlapping_a_number() -> None:
    # z = 0 (a null), score - chance = 0 (no null, mutual-kNN), a layer plot's chance level
    layer = plots.layer_heatmap(
        np.linspace(0.0, 0.4, 12).reshape(4, 3), metric="mutual_knn", chance=10 / 199
    )
    for ax, where in [
        (plots.heatmap(make_scores(), "linear_cka"), 0.0),
        (plots.heatmap(make_scores(null=False), "mutual_knn"), 0.0),
        (layer, 10 / 199),
    ]:
        labels = _bar_labels(ax)
        assert labels.get("chance") == pytest.approx(where), labels
        if where == 0.0:
            assert "0" not in labels  # the number chance replaces
        assert len(labels) >= 3  # still a numbered scale around it


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
