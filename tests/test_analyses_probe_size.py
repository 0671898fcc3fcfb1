"""analyses/probe_size.py (issue 19, item 4): the subsample draws, the scores each draw gets,
Kendall tau against a naive count, and the decision-accuracy step, on synthetic features."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignkit.errors import AlignkitError

_PATH = Path(__file__).resolve().parents[1] / "analyses" / "probe_size.py"
_spec = importlib.util.spec_from_file_location("probe_size", _PATH)
ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps)


def naive_cka(x, y):
    """Biased linear CKA in float64 (Kornblith et al. 2019), written out."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def pick(frame, **equal):
    """The rows of ``frame`` whose columns equal the given values."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in equal.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def naive_tau_b(a, b):
    """Kendall tau-b by counting every pair of items."""
    conc = disc = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif da == db:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))


def planted(n_rows, vision_signal, text_signal, seed=0, shared=True):
    """Encoders that see a shared latent with the given signal fractions (pure noise when not
    ``shared``): a pair's alignment grows with both of its fractions."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_rows, 4))

    def side(prefix, signals, dim):
        out = {}
        for i, s in enumerate(signals):
            latent = z if shared else rng.standard_normal((n_rows, 4))
            mix = latent @ rng.standard_normal((4, dim))
            noise = rng.standard_normal((n_rows, dim)) * np.sqrt(mix.var())
            out[f"{prefix}{i}"] = (s * mix + (1 - s) * noise).astype(np.float32)
        return out

    return side("v", vision_signal, 6), side("t", text_signal, 5)


def test_draws_are_seeded_distinct_sorted_and_not_nested():
    rows = ps.draw_rows(40, [10, 20], draws=4, seed=3)
    assert sorted(rows) == [10, 20, 40]  # the whole probe is always the reference
    assert len(rows[40]) == 1 and np.array_equal(rows[40][0], np.arange(40))
    for size in (10, 20):
        assert len(rows[size]) == 4
        for r in rows[size]:
            assert len(r) == size and len(set(r.tolist())) == size
            assert np.all(np.diff(r) > 0) and r.min() >= 0 and r.max() < 40
        assert len({tuple(r) for r in rows[size]}) == 4
    again = ps.draw_rows(40, [20, 10], draws=4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(rows[10], again[10], strict=True))
    alone = ps.draw_rows(40, [10], draws=4, seed=3)  # a size's draws do not depend on the others
    assert all(np.array_equal(a, b) for a, b in zip(rows[10], alone[10], strict=True))
    other = ps.draw_rows(40, [10], draws=4, seed=4)
    assert not np.array_equal(rows[10][0], other[10][0])
    # drawn afresh per size: no 20-row draw contains the 10-row draw of the same index
    assert not any(set(a) <= set(b) for a, b in zip(rows[10], rows[20], strict=True))


def test_draws_exhaust_the_distinct_subsets_and_refuse_more():
    rows = ps.draw_rows(5, [4], draws=5, seed=0)  # C(5, 4) = 5: every subset once
    assert sorted(tuple(r) for r in rows[4]) == sorted(itertools.combinations(range(5), 4))
    with pytest.raises(AlignkitError, match="only 5 distinct subsets"):
        ps.draw_rows(5, [4], draws=6)
    with pytest.raises(AlignkitError, match="sizes must be integers from 2 to the probe's 5"):
        ps.draw_rows(5, [6])
    with pytest.raises(AlignkitError, match="draws must be a positive integer"):
        ps.draw_rows(5, [3], draws=0)


def test_each_draw_scores_its_own_rows():
    vision, text = planted(30, [0.9, 0.4], [0.8, 0.2])
    rows = ps.draw_rows(30, [12], draws=2, seed=1)
    scores = ps.score_draws(vision, text, ["linear_cka"], rows)
    assert len(scores) == 4 * 3  # 4 pairs x (2 draws + the whole probe)
    for n, draw in [(12, 0), (12, 1), (30, 0)]:
        idx = rows[n][draw]
        for v, t in itertools.product(vision, text):
            got = pick(scores, n=n, draw=draw, vision=v, text=t)
            assert got["score"].item() == pytest.approx(
                naive_cka(vision[v][idx], text[t][idx]), abs=1e-5
            )


def test_kendall_tau_is_one_at_the_reference_and_counts_like_a_naive_tau():
    vision, text = planted(80, [0.95, 0.6, 0.3], [0.9, 0.5, 0.1])
    rows = ps.draw_rows(80, [12, 40], draws=3, seed=0)
    scores = ps.score_draws(vision, text, ["linear_cka", "linear_cka_unbiased"], rows)
    draws = ps.per_draw(scores)
    ref = draws[draws["n"] == 80]
    assert len(ref) == 2 and (ref["kendall_tau"] == 1.0).all() and (ref["same_top"] == 1).all()
    for _, row in draws.iterrows():
        mine = pick(scores, metric=row["metric"], n=row["n"], draw=row["draw"])
        full = pick(scores, metric=row["metric"], n=80)
        merged = mine.merge(full, on=["vision", "text"], suffixes=("", "_full"))
        assert row["kendall_tau"] == pytest.approx(
            naive_tau_b(merged["score"].to_numpy(), merged["score_full"].to_numpy())
        )
    table = ps.tau_table(draws)
    assert list(table.columns) == [
        "metric", "n", "draws", "pairs", "kendall_tau_mean", "kendall_tau_min", "kendall_tau_max",
        "same_top",
    ]  # fmt: skip
    assert table.set_index(["metric", "n"])["draws"].to_dict()[("linear_cka", 12)] == 3
    assert (table["pairs"] == 9).all()
    # planted, well-separated structure: half the probe keeps the order almost exactly
    assert table.query("n == 40")["kendall_tau_mean"].min() > 0.8


def test_unstructured_pairs_reshuffle_at_small_n():
    """The tau can fail: with no shared latent the small-n ranking is mostly noise."""
    vision, text = planted(200, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], shared=False)
    rows = ps.draw_rows(200, [10], draws=5, seed=0)
    table = ps.tau_table(ps.per_draw(ps.score_draws(vision, text, ["linear_cka"], rows)))
    assert table.query("n == 10")["kendall_tau_mean"].item() < 0.5


def test_controls_last_is_reported_when_controls_are_scored():
    vision, text = planted(40, [0.9, 0.7], [0.8], seed=2)
    rng = np.random.default_rng(9)
    vision["random-init:v"] = rng.standard_normal((40, 6)).astype(np.float32)
    rows = ps.draw_rows(40, [20], draws=2, seed=0)
    table = ps.tau_table(ps.per_draw(ps.score_draws(vision, text, ["linear_cka"], rows)))
    assert "controls_last" in table and table.query("n == 40")["controls_last"].item() == 1.0


def _pairs_frame(vision, text):
    rows = [
        {"vision": v, "text": t, "control": False, "n_seeds": 3, "pre/linear_cka": -1.0,
         "post/r5": float(i)}
        for i, (v, t) in enumerate(itertools.product(vision, text))
    ]  # fmt: skip
    rows.append({"vision": "random-init:v", "text": "t0", "control": True, "n_seeds": 1,
                 "pre/linear_cka": 9.0, "post/r5": 0.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_decision_accuracy_replaces_the_scores_and_averages_over_draws():
    vision, text = planted(30, [0.9, 0.4], [0.8, 0.3])
    rows = ps.draw_rows(30, [10], draws=3, seed=0)
    scores = ps.score_draws(vision, text, ["linear_cka"], rows)
    seen = []

    def decide(table, noise, *, metrics, bootstrap):
        """Stands in for decisions_table: fraction of pairs of pairs that the metric orders as
        post/r5 does (a naive double loop)."""
        seen.append(table)
        right = [
            (a["pre/linear_cka"] - b["pre/linear_cka"]) * (a["post/r5"] - b["post/r5"]) > 0
            for (_, a), (_, b) in itertools.combinations(table.iterrows(), 2)
        ]
        return pd.DataFrame([{"metric": metrics[0], "result": "r5", "scope": "all",
                              "n_decisions": len(right), "accuracy": np.mean(right),
                              "ci_low": 0.0, "ci_high": 1.0}])  # fmt: skip

    pairs = _pairs_frame(vision, text)
    out = ps.decision_accuracy(scores, pairs, {"r5": 0.1}, decide=decide, bootstrap=0)
    assert len(seen) == 4  # 3 draws at n=10 + the whole probe
    for table in seen:
        assert not table["control"].any() and len(table) == 4
    table = seen[1]  # n=10, draw 1
    for _, row in table.iterrows():
        want = pick(scores, n=10, draw=1, vision=row["vision"], text=row["text"])
        assert row["pre/linear_cka"] == want["score"].item()
    accuracies = []
    for table in seen[:3]:
        accuracies.append(decide(table, {}, metrics=["linear_cka"], bootstrap=0)["accuracy"][0])
    small = out.query("n == 10").iloc[0]
    assert small["draws"] == 3 and small["n_decisions"] == 6
    assert small["accuracy"] == pytest.approx(np.mean(accuracies))
    assert small["accuracy_min"] == pytest.approx(min(accuracies))
    wide = ps.study_table(ps.tau_table(ps.per_draw(scores)), out)
    assert wide.set_index(["metric", "n"]).loc[("linear_cka", 10), "accuracy/all/r5"] == (
        pytest.approx(np.mean(accuracies))
    )


def test_decision_accuracy_needs_every_real_pair_scored():
    vision, text = planted(20, [0.9, 0.4], [0.8])
    rows = ps.draw_rows(20, [10], draws=2, seed=0)
    scores = ps.score_draws(vision, text, ["linear_cka"], rows)
    pairs = _pairs_frame({**vision, "v9": None}, text)
    with pytest.raises(AlignkitError, match=r"no score for the real pair\(s\) \['v9 x t0'\]"):
        ps.decision_accuracy(scores, pairs, {"r5": 0.1}, decide=lambda *a, **k: None)


def test_the_written_scores_come_back_exactly_for_the_same_study_only(tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")
    vision, text = planted(30, [0.9, 0.4], [0.8, 0.3])
    rows = ps.draw_rows(30, [15], draws=2, seed=0)
    scores = ps.score_draws(vision, text, ["linear_cka", "mutual_knn"], rows, k=3)
    table = ps.tau_table(ps.per_draw(scores))
    about = {k: [1, 2] for k in ps.SAME_STUDY}
    assert ps.saved_study(tmp_path, about) == (None, [])  # nothing written yet
    ps.write(table, scores, about | {"runs": [{"scored": ["linear_cka"]}]}, tmp_path)
    saved, runs = ps.saved_study(tmp_path, about)
    pd.testing.assert_frame_equal(
        saved, scores, check_exact=True
    )  # every digit: ranks and ties stay as scored
    assert runs == [{"scored": ["linear_cka"]}]
    assert json.loads((tmp_path / "probe_size.json").read_text())["draws"] == [1, 2]
    assert pd.read_csv(tmp_path / "probe_size.csv")["metric"].unique().tolist() == [
        "linear_cka", "mutual_knn"
    ]  # fmt: skip
    assert (tmp_path / "probe_size.png").stat().st_size > 0
    for key in ps.SAME_STUDY:  # any other setting: the saved draws are not this study's
        assert ps.saved_study(tmp_path, about | {key: [3]}) == (None, [])


def test_the_figure_has_one_accuracy_panel_per_scope():
    import matplotlib

    matplotlib.use("Agg")
    table = pd.DataFrame(
        {"metric": ["a", "a", "b", "b"], "n": [10, 20, 10, 20], "pairs": 4,
         "kendall_tau_mean": [0.5, 1, 0.7, 1], "kendall_tau_min": [0.2, 1, 0.6, 1],
         "kendall_tau_max": [0.9, 1, 0.8, 1], "accuracy/all/r@1": [0.6, 0.7, 0.5, 0.9],
         "accuracy/all/x/y": [0.4, 0.5, 0.5, 0.7], "accuracy/same_text/r@1": 0.5}
    )  # fmt: skip
    fig = ps.plot_study(table)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes[1:]] == [
        "scope all (mean over 2 results)", "scope same_text (mean over 1 results)"
    ]  # fmt: skip
    a_line = axes[1].get_lines()[0]
    assert a_line.get_ydata().tolist() == pytest.approx([0.5, 0.6])  # mean of r@1 and x/y


def naive_accuracy(table, metric, result, sd, scope):
    """Decision accuracy written out: over unordered pairs of real pairs in the scope whose
    results differ by more than 1.96 sd sqrt(1/n_a + 1/n_b), the share the metric orders the
    same way (a metric tie is wrong)."""
    right = total = 0
    rows = [r for _, r in table.iterrows() if not r["control"]]
    for a, b in itertools.combinations(rows, 2):
        if scope == "same_text" and a["text"] != b["text"]:
            continue
        if scope == "same_vision" and a["vision"] != b["vision"]:
            continue
        dy = a[f"post/{result}"] - b[f"post/{result}"]
        if abs(dy) <= 1.96 * sd * math.sqrt(1 / a["n_seeds"] + 1 / b["n_seeds"]):
            continue
        total += 1
        dx = a[f"pre/{metric}"] - b[f"pre/{metric}"]
        right += dx != 0 and (dx > 0) == (dy > 0)
    return right / total


def test_decision_accuracy_with_the_decisions_table_of_the_grid():
    vision, text = planted(40, [0.95, 0.6, 0.3], [0.9, 0.5, 0.1], seed=5)
    rows = ps.draw_rows(40, [12], draws=3, seed=2)
    scores = ps.score_draws(vision, text, ["linear_cka", "linear_cka_unbiased"], rows)
    rng = np.random.default_rng(0)
    pairs = _pairs_frame(vision, text)
    pairs["post/r5"] = rng.uniform(0, 1, len(pairs))  # some differences below the noise
    pairs["n_seeds"] = rng.integers(1, 4, len(pairs))
    out = ps.decision_accuracy(scores, pairs, {"r5": 0.05}, bootstrap=0)
    assert set(out["scope"]) == {"all", "same_text", "same_vision"}
    for _, row in out.iterrows():
        want = []
        for draw in range(row["draws"]):
            table = pairs.copy()
            for i, r in table.iterrows():
                mine = pick(scores, metric=row["metric"], n=row["n"], draw=draw,
                            vision=r["vision"], text=r["text"])  # fmt: skip
                table.loc[i, f"pre/{row['metric']}"] = mine["score"].item() if len(mine) else 0
            want.append(naive_accuracy(table, row["metric"], "r5", 0.05, row["scope"]))
        assert row["accuracy"] == pytest.approx(np.mean(want)), tuple(row)
