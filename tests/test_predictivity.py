"""Predictivity: the statistics against naive formulas, the grid file, and a tiny resumable run."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from alignkit.errors import AlignkitError
from alignkit.evaluation.predictivity import (
    PredictivityConfig,
    correlate,
    read_grid,
    run_predictivity,
)


def naive_ranks(x):
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def naive_spearman(x, y):
    rx, ry = naive_ranks(x), naive_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


def naive_tau_b(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx * dy > 0:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / ((conc + disc + tx) * (conc + disc + ty)) ** 0.5


def _pairs_table():
    rng = np.random.default_rng(0)
    rows = []
    for v in ("v1", "v2", "random-init:v3"):
        for t in ("t1", "t2", "t3"):
            pre = rng.normal()
            rows.append(
                {
                    "vision": v,
                    "text": t,
                    "control": v.startswith("random-init:"),
                    "pre/cka": pre,
                    "pre/cka/z": round(pre * 3),  # ties
                    "post/zeroshot/x/top1": pre + 0.7 * rng.normal(),
                }
            )
    return pd.DataFrame(rows)


def test_correlations_match_naive_formulas():
    pairs = _pairs_table()
    cfg = PredictivityConfig(vision=("v1", "v2", "random-init:v3"), text=("t1", "t2", "t3"),
                             bootstrap=200)  # fmt: skip
    table = correlate(pairs, cfg)
    assert set(table["kind"]) == {"raw", "z"} and len(table) == 2
    y = pairs["post/zeroshot/x/top1"].tolist()
    for kind, col in (("raw", "pre/cka"), ("z", "pre/cka/z")):
        row = table[table["kind"] == kind].iloc[0]
        x = pairs[col].tolist()
        assert row["spearman"] == pytest.approx(naive_spearman(x, y))
        assert row["kendall"] == pytest.approx(naive_tau_b(x, y))
        assert row["spearman_low"] <= row["spearman"] <= row["spearman_high"]
        assert row["spearman_high"] - row["spearman_low"] > 0.05  # 9 pairs: a wide interval
        # leave-one-encoder-out: rho over the pairs without each encoder
        held = []
        for e in ("v1", "v2", "random-init:v3", "t1", "t2", "t3"):
            keep = [i for i in range(9) if e not in (pairs["vision"][i], pairs["text"][i])]
            held.append(naive_spearman([x[i] for i in keep], [y[i] for i in keep]))
        assert row["loeo_min"] == pytest.approx(min(held))
        assert row["loeo_mean"] == pytest.approx(sum(held) / len(held))
        real = [i for i in range(9) if not pairs["control"][i]]
        assert row["rho_no_controls"] == pytest.approx(
            naive_spearman([x[i] for i in real], [y[i] for i in real])
        )
        assert row["n_no_controls"] == 6


def test_perfect_agreement_has_a_degenerate_interval():
    pairs = _pairs_table()
    pairs["post/zeroshot/x/top1"] = 2 * pairs["pre/cka"] + 1
    cfg = PredictivityConfig(vision=("a",), text=("b", "c", "d"), bootstrap=200)
    row = correlate(pairs, cfg).query("kind == 'raw'").iloc[0]
    assert row["spearman"] == pytest.approx(1.0) and row["kendall"] == pytest.approx(1.0)
    assert row["spearman_low"] == pytest.approx(1.0)


def test_grid_file_errors(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text('vision = ["a"]\ntext = ["b", "c", "d"]\nepochs = 3\n')
    with pytest.raises(AlignkitError, match=r"unknown key\(s\) \['epochs'\]"):
        read_grid(bad)
    small = tmp_path / "s.yaml"
    small.write_text("vision: [a]\ntext: [b]\n")
    with pytest.raises(AlignkitError, match="3 or more pairs"):
        read_grid(small)
    with pytest.raises(AlignkitError, match="not found"):
        read_grid(tmp_path / "none.toml")
    recipe = tmp_path / "r.toml"
    recipe.write_text('vision = ["a"]\ntext = ["b", "c", "d"]\n[train]\nepochz = 3\n')
    with pytest.raises(AlignkitError, match="unknown TrainConfig keys"):
        read_grid(recipe)


@pytest.mark.slow
def test_tiny_grid_runs_and_resumes(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    cfg = PredictivityConfig(
        vision=("random:image-16", "random:image-8"),
        text=("random:text-12", "random:text-6"),
        score_n=40,
        train_n=48,
        val_probe=None,
        zeroshot=("imagenet-samples",),
        retrieval=("flickr8k:test",),
        eval_n=16,
        permutations=5,
        bootstrap=100,
        train={"width": 8, "epochs": 2, "batch_size": 16, "patience": None},
    )
    out = tmp_path / "pred"
    first = run_predictivity(cfg, out, device="cpu")
    assert len(first.pairs) == 4
    assert first.pairs["control"].all()  # random: specs are controls
    assert {
        "pre/linear_cka",
        "pre/linear_cka/z",
        "post/zeroshot/imagenet-samples[n=16,seed=0]/top1",
    } <= set(first.pairs)
    assert (out / "correlations.csv").is_file() and (out / "predictivity.png").is_file()
    folder = out / "pairs" / "random_image-16__random_text-12"
    stamp = (folder / "projector.safetensors").stat().st_mtime_ns
    metrics_stamp = (folder / "metrics.json").stat().st_mtime_ns
    second = run_predictivity(cfg, out, device="cpu")  # resumes: nothing retrained
    assert (folder / "projector.safetensors").stat().st_mtime_ns == stamp
    assert (folder / "metrics.json").stat().st_mtime_ns == metrics_stamp
    pd.testing.assert_frame_equal(first.pairs, second.pairs)
    # the pair folder is an evaluable run folder
    from alignkit.runs import check_run_folder

    assert check_run_folder(folder)["vision"]["spec"] == "random:image-16"
