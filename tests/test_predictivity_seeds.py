"""Seed noise and the decision table (issue 19 items 2-3): naive double loops against
decisions_table and seed_noise, the config's checks, and a tiny grid trained again with seeds."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from alignkit.errors import AlignkitError
from alignkit.evaluation.predictivity import (
    PredictivityConfig,
    decisions_table,
    run_predictivity,
    seed_noise,
)
from alignkit.evaluation.predictivity.config import spread_pairs

COLUMNS = ["metric", "result", "scope", "n_decisions", "accuracy", "ci_low", "ci_high"]


def naive_decisions(rows, noise, metric, result, scope, z=1.96):
    """(decisions, right) by a double loop over the real pairs of ``rows`` (dicts)."""
    real = [r for r in rows if not r["control"]]
    n = right = 0
    for i in range(len(real)):
        for j in range(i + 1, len(real)):
            a, b = real[i], real[j]
            if scope == "same_text" and a["text"] != b["text"]:
                continue
            if scope == "same_vision" and a["vision"] != b["vision"]:
                continue
            ya, yb = a[f"post/{result}"], b[f"post/{result}"]
            se = math.sqrt(1 / a.get("n_seeds", 1) + 1 / b.get("n_seeds", 1))
            if not abs(ya - yb) > z * noise[result] * se:
                continue
            n += 1
            xa, xb = a[f"pre/{metric}"], b[f"pre/{metric}"]
            if (xa > xb and ya > yb) or (xa < xb and ya < yb):  # a tie in x: wrong
                right += 1
    return n, right


def four_pairs(n_seeds=1):
    """A and B share t1 and differ by 0.01 (the close pair); A and C tie in the metric."""
    rows = [
        ("v1", "t1", 0.50, 0.2),  # A
        ("v2", "t1", 0.51, 0.1),  # B: the metric orders A, B wrongly
        ("v1", "t2", 0.30, 0.2),  # C: a tie with A in the metric
        ("v2", "t2", 0.60, 0.9),  # D
    ]
    table = pd.DataFrame(
        [
            {
                "vision": v,
                "text": t,
                "control": False,
                "n_seeds": n_seeds,
                "pre/m": x,
                "post/r": y,
            }  # fmt: skip
            for v, t, y, x in rows
        ]
    )
    control = {"vision": "random-init:v", "text": "t1", "control": True, "n_seeds": 1,
               "pre/m": 99.0, "post/r": -5.0}  # fmt: skip
    return pd.concat([table, pd.DataFrame([control])], ignore_index=True)


def cell(table, scope):
    return table[table["scope"] == scope].iloc[0]


def test_known_answers_threshold_ties_scopes_and_controls():
    pairs = four_pairs()
    # sd 0.01, one seed each: threshold 1.96 * 0.01 * sqrt(2) = 0.028 leaves out A-B (0.01)
    table = decisions_table(pairs, {"r": 0.01}, bootstrap=0)
    assert list(table.columns) == COLUMNS and len(table) == 3
    # all: AC (tie: wrong), AD right, BC wrong, BD right, CD right
    assert cell(table, "all")[["n_decisions", "accuracy"]].tolist() == [5, pytest.approx(0.6)]
    # same_text: A-B left out, C-D right
    assert cell(table, "same_text")[["n_decisions", "accuracy"]].tolist() == [1, 1.0]
    # same_vision: A-C (tie) wrong, B-D right
    assert cell(table, "same_vision")[["n_decisions", "accuracy"]].tolist() == [2, 0.5]
    # without a threshold the close pair counts (and the metric orders it wrongly)
    loose = decisions_table(pairs, {"r": 0.0}, bootstrap=0)
    assert cell(loose, "all")[["n_decisions", "accuracy"]].tolist() == [6, 0.5]
    assert cell(loose, "same_text")[["n_decisions", "accuracy"]].tolist() == [2, 0.5]
    # bootstrap=0: the Wilson interval of 3 right of 5 alone (by hand: centre 0.5566, half 0.3258)
    assert cell(table, "all")[["ci_low", "ci_high"]].tolist() == [
        pytest.approx(0.2307, abs=1e-4),
        pytest.approx(0.8824, abs=1e-4),
    ]


def test_n_seeds_enters_the_threshold():
    # sd 0.04: one seed each -> 0.111 (A-D 0.10 and B-D 0.09 do not count); four -> 0.055
    one = cell(decisions_table(four_pairs(1), {"r": 0.04}, bootstrap=0), "all")
    four = cell(decisions_table(four_pairs(4), {"r": 0.04}, bootstrap=0), "all")
    assert one[["n_decisions", "accuracy"]].tolist() == [3, pytest.approx(1 / 3)]
    assert four[["n_decisions", "accuracy"]].tolist() == [5, pytest.approx(0.6)]
    no_column = decisions_table(four_pairs(1).drop(columns="n_seeds"), {"r": 0.04}, bootstrap=0)
    assert cell(no_column, "all")["n_decisions"] == 3  # absent: one run each


def random_pairs(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for v in ("v1", "v2", "v3", "random-init:v"):
        for t in ("t1", "t2", "t3", "t4"):
            pre = rng.normal()
            rows.append(
                {
                    "vision": v,
                    "text": t,
                    "control": v.startswith("random-init:"),
                    "n_seeds": int(rng.integers(1, 4)),
                    "pre/cka": pre,
                    "pre/cka/z": float(round(pre * 2)),  # many ties
                    "post/a": pre + rng.normal(scale=0.5),
                    "post/b": float(rng.integers(0, 5)) / 10,  # ties in the result too
                }
            )
    return pd.DataFrame(rows)


def test_every_cell_matches_a_naive_double_loop():
    pairs = random_pairs()
    noise = {"a": 0.3, "b": 0.05}
    table = decisions_table(pairs, noise, bootstrap=0)
    assert len(table) == 2 * 2 * 3
    rows = pairs.to_dict("records")
    for _, r in table.iterrows():
        n, right = naive_decisions(rows, noise, r["metric"], r["result"], r["scope"])
        assert r["n_decisions"] == n
        assert r["accuracy"] == pytest.approx(right / n)
    ties = table[table["metric"] == "cka/z"]["accuracy"]
    exact = table[table["metric"] == "cka"]["accuracy"]
    assert (ties.to_numpy() < exact.to_numpy()).any()  # ties cost the rounded metric


def test_the_interval_is_a_bootstrap_over_pairs():
    pairs = random_pairs(1)
    noise = {"a": 0.3, "b": 0.05}
    b, level = 200, 0.9
    table = decisions_table(pairs, noise, metrics=["cka/z"], results=["a"], scopes=["all"],
                            bootstrap=b, level=level, seed=7)  # fmt: skip
    real = pairs[~pairs["control"]].reset_index(drop=True).to_dict("records")
    draws = np.random.default_rng(7).integers(0, len(real), size=(b, len(real)))
    accs = []
    for d in draws:
        n = right = 0
        for i in range(len(d)):
            for j in range(i + 1, len(d)):
                if d[i] == d[j]:  # a pair drawn twice is not compared with itself
                    continue
                k, r = naive_decisions([real[d[i]], real[d[j]]], noise, "cka/z", "a", "all")
                n, right = n + k, right + r
        if n:
            accs.append(right / n)
    row = table.iloc[0]
    # the union with the Wilson interval of right/n (written out: Wilson 1927, z at 90 %)
    n, p, z = row["n_decisions"], row["accuracy"], 1.6448536269514722
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert row["ci_low"] == pytest.approx(min(np.quantile(accs, 0.05), centre - half))
    assert row["ci_high"] == pytest.approx(max(np.quantile(accs, 0.95), centre + half))
    assert row["ci_low"] < row["accuracy"] < row["ci_high"], row


def test_an_all_right_accuracy_still_has_a_lower_bound_below_one():
    """3 of 3 right: a percentile bootstrap alone says [1, 1]; Wilson's 95 % bound is 0.44."""
    pairs = pd.DataFrame({
        "vision": ["v1", "v2", "v3"], "text": ["t", "t", "t"], "control": False, "n_seeds": 1,
        "pre/m": [0.1, 0.2, 0.3], "post/r": [1.0, 2.0, 3.0],
    })  # fmt: skip
    row = decisions_table(pairs, {"r": 0.01}, scopes=["all"]).iloc[0]
    assert (row["n_decisions"], row["accuracy"]) == (3, 1.0)
    assert row["ci_low"] == pytest.approx(0.4385, abs=1e-3)  # 3/(3 + 1.96^2), Wilson at p = 1
    assert row["ci_high"] == 1.0


def test_bad_input_to_the_decisions():
    pairs = four_pairs()
    with pytest.raises(AlignkitError, match="no seed noise for the result 'r'.*seeds"):
        decisions_table(pairs, {})
    with pytest.raises(AlignkitError, match="no seed noise"):
        decisions_table(pairs, {"r": float("nan")})
    with pytest.raises(AlignkitError, match=r"unknown metric\(s\) \['cka'\]; expected some of: m"):
        decisions_table(pairs, {"r": 0.1}, metrics=["cka"])
    with pytest.raises(AlignkitError, match=r"unknown scope\(s\) \['same'\]"):
        decisions_table(pairs, {"r": 0.1}, scopes=["same"])
    with pytest.raises(AlignkitError, match="level must be in"):
        decisions_table(pairs, {"r": 0.1}, level=95)


def test_pooled_seed_noise_matches_numpy():
    runs = {
        ("v1", "t1", False): [0.30, 0.34, 0.29],
        ("v1", "t2", False): [0.50, 0.46],
        ("v2", "t1", False): [0.90],  # one seed: no spread to pool
        ("random-init:v", "t1", True): [0.01, 0.40, 0.90],  # a control: left out
    }
    seeds = pd.DataFrame(
        [
            {"vision": v, "text": t, "control": c, "seed": i, "post/r": y}
            for (v, t, c), ys in runs.items()
            for i, y in enumerate(ys)
        ]  # fmt: skip
    )
    noise = seed_noise(seeds)
    a, b = np.array(runs[("v1", "t1", False)]), np.array(runs[("v1", "t2", False)])
    pooled = (2 * np.var(a, ddof=1) + 1 * np.var(b, ddof=1)) / 3
    assert list(noise.columns) == ["result", "sd", "n_pairs", "df"]
    row = noise.iloc[0]
    assert row["result"] == "r" and row["n_pairs"] == 2 and row["df"] == 3
    assert row["sd"] == pytest.approx(np.sqrt(pooled))
    single = seed_noise(seeds[seeds["seed"] == 0])
    assert math.isnan(single["sd"].iloc[0]) and single["n_pairs"].iloc[0] == 0


# -- the config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_v,n_t", [(6, 7), (4, 6), (3, 3), (2, 5), (7, 2)])
def test_repeated_pairs_spread_evenly_over_both_encoders(n_v, n_t):
    vision, text = [f"v{i}" for i in range(n_v)], [f"t{i}" for i in range(n_t)]
    for k in range(n_v * n_t + 1):
        chosen = spread_pairs(vision, text, k)
        assert len(set(chosen)) == k
        per_v = Counter(v for v, _ in chosen)
        per_t = Counter(t for _, t in chosen)
        assert max(per_v[v] for v in vision) - min(per_v[v] for v in vision) <= 1
        assert max(per_t[t] for t in text) - min(per_t[t] for t in text) <= 1
    cfg = PredictivityConfig(vision=(*vision, "random-init:x"), text=tuple(text), seeds=(1, 2),
                             repeat_pairs=n_v * n_t - 1)  # fmt: skip
    assert all(not v.startswith("random-init:") for v, _ in cfg.repeated_pairs)
    assert len(cfg.runs) == (n_v + 1) * n_t + 2 * (n_v * n_t - 1)


def test_bad_seeds_and_repeat_pairs_are_one_line_errors():
    grid = dict(vision=("a", "b", "random-init:c"), text=("d", "e"))  # 4 real pairs
    cases = [
        (dict(seeds=(0, 1)), r"seeds must be extra training seeds besides the first run's seed 0"),
        (dict(seeds=(2, 2)), r"seeds must differ: got \[2\]"),
        (dict(seeds=("x",)), "seeds must be integers"),
        (dict(seeds=(1,), repeat_pairs=1), r"between 2 .* 4 real pairs: got 1"),
        (dict(seeds=(1,), repeat_pairs=5), r"between 2 .* 4 real pairs: got 5"),
        (dict(repeat_pairs=2), "repeat_pairs must come with the extra seeds"),
        (dict(seeds=(5,), train={"seed": 5}), "besides the first run's seed 5"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(AlignkitError, match=message) as err:
            PredictivityConfig(**grid, **kwargs)
        assert "\n" not in str(err.value)
    ok = PredictivityConfig(**grid, seeds=("0", "1"), train={"seed": 5}, repeat_pairs=2)
    assert ok.seeds == (0, 1) and ok.first_seed == 5  # the command line gives strings


def test_seeds_do_not_make_another_experiment():
    from alignkit.evaluation.predictivity.pair_run import EVAL_FIELDS, run_key
    from alignkit.evaluation.predictivity.stages import SCORE_FIELDS

    base = PredictivityConfig(vision=("a",), text=("b", "c", "d"))
    more = replace(base, seeds=(1, 2), repeat_pairs=2)
    assert more.recipe_differences(base.to_dict()) == {}
    for fields in (EVAL_FIELDS, SCORE_FIELDS):
        assert more.stage_key(*fields) == base.stage_key(*fields)
    # the first seed's key as alignkit computed it before seeds existed (commit 29fa26d)
    assert run_key(more, 0) == base.stage_key(*EVAL_FIELDS) == "66984272f66fb492"
    assert run_key(more, 1) != run_key(more, 0)


def test_the_command_line_names_the_seed_flags(tmp_path, capsys):
    from _cli import run_cli

    argv = ["predictivity", "--vision", "random:image-16", "--text", "random:text-12",
            "--text", "random:text-6", "--text", "random:text-8", "--seeds", "0",
            "--out", str(tmp_path / "p")]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "--seeds must be extra training seeds" in err
    assert not (tmp_path / "p").exists()


# -- a tiny grid trained again with seeds ----------------------------------------------------------
@pytest.mark.slow
def test_a_finished_grid_trains_only_the_new_seeds(tmp_path, data_dir, monkeypatch, capsys):
    import alignkit.evaluation.predictivity.config as config_module
    import alignkit.evaluation.predictivity.stages as stages

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    # random features stand in for real encoders here (random: specs are controls otherwise)
    monkeypatch.setattr(config_module, "CONTROL_PREFIXES", ("random-init:",))
    cfg = PredictivityConfig(
        vision=("random:image-16", "random:image-8"),
        text=("random:text-12", "random:text-6"),
        score_n=40, train_n=48, val_probe=None, zeroshot=(), retrieval=("flickr8k:test",),
        eval_n=16, permutations=5, bootstrap=100, metrics=("linear_cka",),
        train={"width": 8, "epochs": 2, "batch_size": 16, "patience": None},
    )  # fmt: skip
    out = tmp_path / "pred"
    first = run_predictivity(cfg, out, device="cpu")
    assert first.decisions is None and not (out / "decisions.csv").exists()  # no noise yet
    assert first.pairs["n_seeds"].tolist() == [1, 1, 1, 1]
    folder = out / "pairs" / "random_image-16__random_text-12"
    weights = folder / "projector.safetensors"
    stamp, body = weights.stat().st_mtime_ns, weights.read_bytes()

    trained = []
    train = stages._train_and_evaluate
    monkeypatch.setattr(
        stages, "_train_and_evaluate", lambda run, v, t, s: trained.append((v, t, s)) or
        train(run, v, t, s)
    )  # fmt: skip
    seeded = replace(cfg, seeds=(1, 2), repeat_pairs=2)
    again = run_predictivity(seeded, out, device="cpu")  # not "another experiment"
    repeated = seeded.repeated_pairs
    assert sorted(trained) == sorted((v, t, s) for s in (1, 2) for v, t in repeated)
    assert weights.stat().st_mtime_ns == stamp and weights.read_bytes() == body
    assert repeated[0] == ("random:image-16", "random:text-12")
    assert (folder / "seed-1" / "projector.safetensors").is_file()

    runs = pd.read_csv(out / "seeds.csv")
    post = [c for c in runs if c.startswith("post/")]
    assert list(runs.columns[:4]) == ["vision", "text", "control", "seed"] and post
    assert len(runs) == 4 + 2 * 2 and sorted(set(runs["seed"])) == [0, 1, 2]
    pairs = pd.read_csv(out / "pairs.csv")
    means = runs.groupby(["vision", "text"], sort=False)[post].mean()
    for _, row in pairs.iterrows():
        n = 3 if (row["vision"], row["text"]) in repeated else 1
        assert row["n_seeds"] == n
        assert row[post].to_numpy(float) == pytest.approx(means.loc[(row["vision"], row["text"])])
    noise = pd.read_csv(out / "noise.csv")
    assert list(noise.columns) == ["result", "sd", "n_pairs", "df"]
    assert (noise["n_pairs"] == 2).all() and (noise["df"] == 4).all()
    decisions = pd.read_csv(out / "decisions.csv")
    assert list(decisions.columns) == COLUMNS
    assert len(decisions) == 2 * len(post) * 3  # linear_cka raw and z x results x scopes
    pd.testing.assert_frame_equal(again.decisions, decisions, check_dtype=False)

    # the command over the finished folder: nothing trains, the decisions are reported
    import json

    from _cli import run_cli

    trained.clear()
    names = "vision text train_n val_probe zeroshot retrieval eval_n permutations bootstrap "
    names += "metrics train seeds repeat_pairs"
    body = {k: getattr(seeded, k) for k in names.split()}
    body.update(probe=seeded.score_probe, n=seeded.score_n)
    grid = tmp_path / "grid.json"  # JSON: val_probe null (TOML has no null)
    grid.write_text(json.dumps(body))
    argv = ["predictivity", "--config", str(grid), "--device", "cpu", "--out", str(out), "-q"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert trained == [] and "0 runs to train and evaluate" in stdout
    assert (
        "linear_cka/z" not in stdout
        and "linear_cka " in stdout
        and "same_text" in stdout
        and "decisions.csv" in stdout
    )


def test_an_encoder_fitted_per_probe_is_refused_before_any_training(tmp_path, monkeypatch):
    """An encoder fitted on each probe's captions that cannot keep its training fit (here tfidf:
    with its save_fit hidden) would give train, validation and test features from three fits: the
    grid stops in one line before its first training run."""
    from alignkit.encoders._tfidf import TfidfSVDEncoder
    from alignkit.evaluation.predictivity import stages

    trained = []
    monkeypatch.setattr(stages, "_train_and_evaluate", lambda *a: trained.append(a))
    monkeypatch.setattr(TfidfSVDEncoder, "saves_fit", property(lambda self: False))
    config = PredictivityConfig(
        vision=("random:image-16",), text=("tfidf:svd-256", "random:text-12", "random:text-16"),
        score_probe="synthetic", train_probe="synthetic", val_probe=None, score_n=None,
        zeroshot=(), retrieval=("synthetic",), permutations=2, bootstrap=100,
    )  # fmt: skip
    with pytest.raises(AlignkitError, match=r"tfidf:svd-256 is fitted on the captions of each "
                       r"probe.*leave it out of the grid"):  # fmt: skip
        run_predictivity(config, tmp_path / "grid", device="cpu", progress=False)
    assert trained == []
    assert (tmp_path / "grid" / "scores.csv").is_file()  # the scores stand
