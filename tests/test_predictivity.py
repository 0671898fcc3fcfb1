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


# -- one vocabulary, options declared once (issue 20, issue 17 item 7) -----------------------------
def test_the_options_table_in_the_docs_is_the_declaration():
    from pathlib import Path

    from alignkit.cli._options import options_markdown

    doc = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    table = doc.split("<!-- predictivity-options:begin -->\n", 1)[1].split("\n<!-- ", 1)[0]
    assert table == options_markdown(PredictivityConfig), "regenerate docs/evaluation.md's table"


def test_grid_keys_are_rank_s_and_the_old_keys_are_still_read(tmp_path):
    new = tmp_path / "new.toml"
    new.write_text('vision = ["a"]\ntext = ["b", "c", "d"]\nprobe = "flickr8k:test"\nn = 40\n')
    old = tmp_path / "old.toml"
    old.write_text('vision = ["a"]\ntext = ["b", "c", "d"]\nscore_probe = "flickr8k:test"\n'
                   "score_n = 40\n")  # fmt: skip
    assert read_grid(new) == read_grid(old)
    assert read_grid(new).score_probe == "flickr8k:test" and read_grid(new).score_n == 40
    both = tmp_path / "both.toml"
    both.write_text('vision = ["a"]\ntext = ["b", "c", "d"]\nn = 40\nscore_n = 50\n')
    with pytest.raises(AlignkitError, match="score_n given twice"):
        read_grid(both)
    assert PredictivityConfig(vision=("a",), text=("b", "c", "d")).device == "auto"


def test_old_import_path_warns_and_says_where():
    import alignkit.evaluation.predictivity as new

    with pytest.warns(DeprecationWarning, match="alignkit.evaluation.predictivity.correlate"):
        from alignkit.predictivity import correlate as old
    assert old is new.correlate


# -- a verdict a reader can use (issue 17 items 9, 13) ---------------------------------------------
def test_too_few_pairs_get_no_interval():
    pairs = _pairs_table().iloc[:4].copy()  # a 2 x 2 grid's worth of pairs
    pairs["post/zeroshot/x/top1"] = pairs["pre/cka"] * 2  # a perfect order
    cfg = PredictivityConfig(vision=("a", "b"), text=("c", "d"), metrics=("linear_cka",),
                             bootstrap=200)  # fmt: skip
    table = correlate(pairs, cfg)
    assert table["spearman"].iloc[0] == pytest.approx(1.0)
    assert (
        table[["spearman_low", "spearman_high", "kendall_low", "kendall_high"]].isna().all().all()
    )


def test_verdicts_lead_with_one_sentence_per_result():
    from alignkit.evaluation.predictivity import verdicts

    pairs = _pairs_table()
    pairs = pairs.rename(columns={"pre/cka": "pre/linear_cka", "pre/cka/z": "pre/linear_cka/z"})
    pairs["post/retrieval/y/text_to_image_R@5"] = -pairs["pre/linear_cka"]
    cfg = PredictivityConfig(vision=("a",), text=("b", "c", "d"), metrics=("linear_cka",),
                             bootstrap=200)  # fmt: skip
    table = correlate(pairs, cfg)
    lines = verdicts(table, cfg)
    assert len(lines) == 2
    z = table[(table["kind"] == "raw") & (table["post"] == "retrieval/y/text_to_image_R@5")].iloc[0]
    assert lines[1].startswith(
        "over 9 pairs, linear_cka predicted retrieval/y/text_to_image_R@5 at rho "
        f"{z['spearman']:.2f} [{z['spearman_low']:.2f}, {z['spearman_high']:.2f}]"
    )
    assert f"without controls rho {z['rho_no_controls']:.2f} over 6 pairs" in lines[1]


@pytest.mark.parametrize("controls", [False, True])
def test_the_figure_is_legible(controls):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignkit.evaluation.predictivity import plot_predictivity

    rng = np.random.default_rng(1)
    rows = []
    for v in range(5):
        for t in range(4):
            pre = rng.normal()
            rows.append({"vision": f"timm:v{v}", "text": f"st:t{t}",
                         "control": controls and v == 4, "pre/linear_cka": pre,
                         "pre/linear_cka/z": pre * 10})  # fmt: skip
            for k in range(6):
                rows[-1][f"post/retrieval/flickr8k:test/r{k}"] = pre + rng.normal()
    pairs = pd.DataFrame(rows)
    cfg = PredictivityConfig(vision=("a",), text=("b", "c", "d"), metrics=("linear_cka",),
                             bootstrap=200)  # fmt: skip
    fig = plot_predictivity(pairs, cfg, correlations=correlate(pairs, cfg))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 6  # one panel per result, the headline metric only (not 6 x 3)
    assert fig.get_size_inches()[0] <= 11  # about README width
    for ax in visible:
        assert len(ax.texts) <= 3  # labelled outliers, not 20 overlapping labels
        assert "[" in ax.get_title()  # the correlation with its interval
    labels = visible[0].get_legend_handles_labels()[1]
    assert any("control" in label for label in labels) == controls
    plt.close(fig)


# -- the command a user types (issue 17 items 9, 10, 11) -------------------------------------------
@pytest.mark.slow
def test_cli_on_a_2x2_grid_plans_concludes_honestly_refuses_and_interrupts(
    tmp_path, data_dir, monkeypatch, capsys
):
    from _cli import run_cli

    import alignkit.evaluation.predictivity.plan as plan_module
    import alignkit.evaluation.predictivity.stages as stages
    import alignkit.features as features

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'vision = ["random:image-16", "random:image-8"]\n'
        'text = ["random:text-12", "random:text-6"]\n'
        'probe = "flickr8k:dev"\nn = 40\ntrain_n = 48\nval_probe = "flickr8k:dev"\nval_n = 16\n'
        'zeroshot = ["imagenet-samples"]\nretrieval = ["flickr8k:test"]\neval_n = 16\n'
        "permutations = 5\nbootstrap = 100\n"
        "[train]\nwidth = 8\nepochs = 2\nbatch_size = 16\n"
    )
    events = []
    describe = plan_module.Plan.describe
    monkeypatch.setattr(
        plan_module.Plan, "describe", lambda p: events.append("plan") or describe(p)
    )
    extract = features.extract_features
    monkeypatch.setattr(
        features, "extract_features", lambda *a, **k: events.append("extract") or extract(*a, **k)
    )
    out = tmp_path / "pred"
    argv = ["predictivity", "--config", str(grid), "--device", "cpu", "--out", str(out), "-q"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert events[0] == "plan" and "extract" in events
    assert "plan: 4 pairs (2 vision x 2 text encoders)" in stdout and "estimate" in stdout
    assert "Over 4 pairs, mutual_knn predicted" in stdout
    assert "too few pairs to conclude anything" in stdout
    header = next(line for line in stdout.splitlines() if line.split()[:2] == ["pre", "kind"])
    assert "[1.0" not in stdout and "spearman_low" not in header and "loeo_min" not in header
    assert "spearman_low, spearman_high: not shown, fewer than 5 pairs" in stdout
    assert "loeo_min: not shown, leaving out any one encoder leaves fewer than 3 pairs" in stdout
    assert "spearman_low" in pd.read_csv(out / "correlations.csv")  # the CSV keeps its columns

    # another recipe into the same folder: refused before anything is written
    saved = (out / "config.json").read_bytes()
    code, _, err = run_cli([*argv, "--seed", "1"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "seed: 0 -> 1" in err and "--overwrite" in err and "overwrite=" not in err
    assert (out / "config.json").read_bytes() == saved

    # Ctrl-C during training: what was kept and how to resume
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "_train_and_evaluate", interrupted)
    fresh = tmp_path / "fresh"
    argv = ["predictivity", "--config", str(grid), "--device", "cpu", "--out", str(fresh), "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 130
    assert f"kept scores.csv, 0 of 4 pairs trained and evaluated in {fresh}" in err
    assert "run the same command again to resume" in err


def test_an_unwritable_experiment_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import subprocess

    from _cli import run_cli

    import alignkit.evaluation.predictivity.stages as stages

    locked = tmp_path / "locked"
    locked.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0
    out = locked / "pred" if immutable else (tmp_path / "a-file")
    if not immutable:  # not root or no chattr: a path under a file cannot be written either
        out.write_text("x")
        out = out / "pred"
    monkeypatch.setattr(stages, "_set_up", lambda *a, **k: pytest.fail("work started"))
    argv = ["predictivity", "--vision", "random:image-16", "--text", "random:text-12",
            "--text", "random:text-6", "--text", "random:text-8", "--out", str(out)]  # fmt: skip
    try:
        code, _, err = run_cli(argv, capsys)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    assert code == 1 and err.count("\n") == 1 and "cannot write the experiment" in err


def test_a_validation_probe_sharing_training_rows_is_refused(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    grid = dict(vision=("random:image-16",), text=("random:text-12", "random:text-6",
                "random:text-8"), score_n=24, permutations=2, device="cpu",
                train_probe="flickr8k:dev", train_n=30,
                val_probe="flickr8k:dev", val_n=20)  # fmt: skip
    with pytest.raises(AlignkitError, match=r"shares 20 rows .*same id and captions"):
        run_predictivity(PredictivityConfig(**grid), tmp_path / "pred", stop_after="scores")


def test_another_recipe_is_refused_and_overwrite_starts_over(tmp_path, data_dir, monkeypatch):
    import json

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    grid = dict(vision=("random:image-16",), text=("random:text-12", "random:text-6",
                "random:text-8"), score_n=24, permutations=2, device="cpu")  # fmt: skip
    out = tmp_path / "pred"
    run_predictivity(PredictivityConfig(**grid), out, stop_after="scores")
    (out / "pairs" / "old_pair").mkdir(parents=True)
    saved = (out / "config.json").read_text()
    other = PredictivityConfig(**grid, seed=1)
    with pytest.raises(AlignkitError, match=r"seed: 0 -> 1.*overwrite=True"):
        run_predictivity(other, out, stop_after="scores")
    assert (out / "config.json").read_text() == saved  # the refused run wrote nothing
    run_predictivity(other, out, stop_after="scores", overwrite=True)
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 1
    assert not (out / "pairs").exists() and (out / "scores.csv").is_file()
    # the evaluation probes and the bootstrap may change: the trained pairs still fit
    run_predictivity(PredictivityConfig(**grid, seed=1, bootstrap=500), out, stop_after="scores")
