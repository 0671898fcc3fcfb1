"""`alignkit train` and `load_aligned` with tiny random hf models (fast, offline)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli
from encoders import tiny  # tests/encoders/tiny.py
from PIL import Image

from alignkit.cli import main

WORDS = tiny.WORDS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-models")
    vit = tiny.save_vision(root / "vit", "vit")
    bert = tiny.save_bert(root / "bert")
    cnn = tiny.save_vision(root / "cnn", "convnext")
    return {"vit": f"hf:{vit}", "bert": f"hf:{bert}", "cnn": f"hf:{cnn}"}


def _manifest(folder: Path, name: str, n: int, seed: int, split: str | None = None) -> Path:
    """n rows of coloured-noise images, 3 captions each, ids prefixed by ``name``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img = folder / f"{name}{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(img)
        caps = [" ".join(rng.choice(WORDS, 6)) for _ in range(3)]
        row = {"id": f"{name}{i}", "image": img.name, "captions": caps}
        if split:
            row["split"] = split if i % 2 else "test"
        lines.append(json.dumps(row))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probes")
    return {
        "train": _manifest(root, "train", 24, 0),
        "dev": _manifest(root, "dev", 8, 1),
        "mixed": _manifest(root / "mixed", "mixed", 6, 2, split="train"),
    }


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(["train", "--quiet", *args], capsys)


def _base(models, probes, out: Path, *extra: str) -> list[str]:
    return [
        "--vision", models["vit"], "--text", models["bert"], "--probe", str(probes["train"]),
        "--val", str(probes["dev"]), "--epochs", "3", "--batch-size", "8", "--width", "16",
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def test_train_writes_a_run_folder_that_load_aligned_reloads(models, probes, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _run(_base(models, probes, out, "--projector", "mlp"), capsys)
    assert code == 0, err
    for name in ("config.json", "projector.safetensors", "run.json", "history.csv"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done"
    cmd = run["command"]
    assert cmd[:2] == ["alignkit", "train"] and cmd[cmd.index("--projector") + 1] == "mlp"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vision"]["spec"] == models["vit"] and cfg["text"]["spec"] == models["bert"]
    assert cfg["train_config"]["projector"] == "mlp" and cfg["probe"]["n"] == 24
    assert "val i2t R@5" in stdout and str(out) in stdout

    import alignkit
    from alignkit.encoders import create_encoder
    from alignkit.training import load_model

    aligned = alignkit.load_aligned(out, device="cpu")
    images = tiny.images(3)
    texts = ["a dog runs on the grass", "the cat sits"]
    img, txt = aligned.encode_image(images), aligned.encode_text(texts)
    assert img.shape == (3, 16) and txt.shape == (2, 16)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    # the same numbers by hand: frozen encoder, then the saved projector tower
    model, *_ = load_model(out / "projector.safetensors")
    vit = create_encoder(models["vit"], device="cpu")
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.image(vit.encode(images).clone()), dim=-1)
    torch.testing.assert_close(img, want, rtol=1e-5, atol=1e-6)
    sim = aligned.similarity(images, texts)
    torch.testing.assert_close(sim, img @ txt.T)


def test_store_dtype_float16_trains_from_float16_entries(models, probes, tmp_path, capsys):
    cache = tmp_path / "cache"
    extra = ("--store-dtype", "float16", "--cache", str(cache))
    code, _, err = _run(_base(models, probes, tmp_path / "run", *extra), capsys)
    assert code == 0, err
    sides = [json.loads(p.read_text()) for p in (cache / "features").glob("*/*.json")]
    dtypes = {side["dtype"] for side in sides if "shape" in side}
    assert dtypes == {"float16"}  # train and val, image and text: all float16
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "done"


def test_token_level_run_and_reload(models, probes, tmp_path, capsys):
    out = tmp_path / "tok"
    code, _, err = _run(_base(models, probes, out, "--tokens", "--projector", "residual"), capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["features"] == "tokens" and cfg["vision"]["tokens"]
    import alignkit

    aligned = alignkit.load_aligned(out, device="cpu")
    emb = aligned.encode_text(["a dog runs", "two children play with a red ball in the park"])
    assert emb.shape == (2, 16) and torch.isfinite(emb).all()


def test_finished_run_is_refused_then_replaced_with_overwrite(models, probes, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(_base(models, probes, out), capsys)[0] == 0
    code, _, err = _run(_base(models, probes, out), capsys)
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(_base(models, probes, out, "--overwrite", "--lr", "0.01"), capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["train_config"]["lr"] == 0.01
    assert not list(tmp_path.glob(".run.old-*"))  # the moved-aside old run is gone


def test_resume_with_another_config_or_other_widths_is_refused(models, probes, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(_base(models, probes, out), capsys)[0] == 0
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "status": "running"}))  # as if killed
    code, _, err = _run(_base(models, probes, out, "--lr", "0.5"), capsys)
    assert code == 1 and "another config" in err and "lr" in err
    assert len(err.strip().splitlines()) == 1
    # same config, other vision encoder (24-wide ConvNext instead of the 32-wide ViT)
    args = _base(models, probes, out)
    args[args.index(models["vit"])] = models["cnn"]
    code, _, err = _run(args, capsys)  # refused before extraction, naming the encoder
    assert code == 1 and "with other inputs (vision.spec: " in err, err
    assert models["cnn"] in err and len(err.strip().splitlines()) == 1


def test_interrupted_run_keeps_its_checkpoint_and_resumes(
    models, probes, tmp_path, capsys, monkeypatch
):
    import alignkit.training as projectors
    from alignkit.training import load_model

    full = tmp_path / "full"
    assert _run(_base(models, probes, full, "--eval-every", "1"), capsys)[0] == 0
    real = projectors.train_projector

    def killed_at_step_4(*args, **kwargs):
        return real(*args, **kwargs, _stop_at_step=4)

    out = tmp_path / "cut"
    monkeypatch.setattr(projectors, "train_projector", killed_at_step_4)
    with pytest.raises(Exception, match="SimulatedStop|_SimulatedStop|^$"):
        main(["train", "--quiet", *_base(models, probes, out, "--eval-every", "1")])
    assert (out / "checkpoint.safetensors").is_file()
    status = json.loads((out / "run.json").read_text())  # the run ended with an exception
    assert status["status"] == "failed" and "_SimulatedStop" in status["error"]
    monkeypatch.setattr(projectors, "train_projector", real)
    assert _run(_base(models, probes, out, "--eval-every", "1"), capsys)[0] == 0
    a, *_ = load_model(full / "projector.safetensors")
    b, *_ = load_model(out / "projector.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_ctrl_c_under_torchrun_says_it_once_with_the_torchrun_line(
    models, probes, tmp_path, capsys, monkeypatch
):
    """Every rank gets the SIGINT: rank 0 alone says what was kept, and the resume line is the
    torchrun command (with -n: torchrun's parser takes --n)."""
    import typer

    import alignkit.training.pair as pair
    from alignkit.cli import train as cli_train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pair, "train_pair", interrupted)
    run, recipe, _ = cli_train._configs({"probe": str(probes["train"]), "n": 20}, None)
    command = ["alignkit", "train", "--probe", str(probes["train"]), "--n", "20", "--out", "x"]
    args = (run, recipe, models["vit"], models["bert"], tmp_path / "x", None, False, True, command)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", "interrupted before the first checkpoint")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(typer.Exit):
            cli_train._train_one(*args)
        err = capsys.readouterr().err
        assert (said in err) and (bool(err) == bool(said))
    assert err.count("\n") == 1
    assert "resume with: torchrun --nproc_per_node 2 -m alignkit train --probe " in err
    assert " -n 20 --out x" in err and " --n " not in err
    monkeypatch.delenv("RANK")  # one process: the command as it was
    with pytest.raises(typer.Exit):
        cli_train._train_one(*args)
    assert "resume with: alignkit train --probe " in capsys.readouterr().err


@pytest.mark.parametrize("case", ["same-probe", "same-images", "mixed-splits", "cache-only"])
def test_bad_input_is_one_line(case, models, probes, tmp_path, capsys, monkeypatch):
    args = _base(models, probes, tmp_path / "run")
    if case == "same-probe":
        args[args.index("--val") + 1] = str(probes["train"])
        expect = "shares 24 rows"
    elif case == "same-images":  # other ids, same image files
        rows = [json.loads(x) for x in probes["train"].read_text().splitlines()][:4]
        copy = probes["train"].parent / "copy.jsonl"
        copy.write_text("".join(json.dumps({**r, "id": "c" + r["id"]}) + "\n" for r in rows))
        args[args.index("--val") + 1] = str(copy)
        expect = "same image content"
    elif case == "mixed-splits":
        args[args.index("--probe") + 1] = str(probes["mixed"])
        args[args.index("--val") + 1] = str(probes["dev"])
        expect = "no single training split"
    else:
        monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path / "empty-cache"))
        args.append("--cache-only")
        expect = "--cache-only: the features of"
    code, _, err = _run(args, capsys)
    assert code == 1 and expect in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_load_aligned_refuses_other_weights(models, probes, tmp_path, capsys):
    import alignkit
    from alignkit.errors import AlignkitError

    out = tmp_path / "run"
    assert _run(_base(models, probes, out), capsys)[0] == 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["vision"]["weights"] = "sha256:someone-elses-checkpoint"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AlignkitError, match="were trained on 'sha256:someone-elses-checkpoint'"):
        alignkit.load_aligned(out, device="cpu")
    aligned = alignkit.load_aligned(out, device="cpu", check_weights=False)  # warns only
    assert aligned.encode_image(tiny.images(1)).shape == (1, 16)
    with pytest.raises(AlignkitError, match="no config.json"):
        alignkit.load_aligned(tmp_path, device="cpu")


def test_from_ranking_trains_the_best_real_pairs(models, probes, tmp_path, capsys):
    ranking = tmp_path / "rank"
    ranking.mkdir()
    with open(ranking / "ranking.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "vision", "text", "control", "linear_cka"])
        w.writerow([1, "random-init:" + models["vit"], models["bert"], True, 0.9])
        w.writerow([2, models["vit"], models["bert"], False, 0.5])
        w.writerow([3, models["cnn"], models["bert"], False, 0.4])
    args = _base(models, probes, tmp_path / "runs")
    for flag in ("--vision", "--text"):
        i = args.index(flag)
        del args[i : i + 2]
    code, stdout, err = _run([*args, "--from-ranking", str(ranking), "--top", "1"], capsys)
    assert code == 0, err
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 1 and folders[0].startswith("2-")  # the control pair is skipped
    assert "val mean R" in stdout and folders[0] in stdout


def test_docs_trainconfig_table_states_the_dataclass_defaults():
    """docs/training.md's TrainConfig table is written by hand: every field is there, with the
    default TrainConfig really has."""
    import dataclasses
    import re

    from alignkit.training import TrainConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", doc, flags=re.M))
    for f in dataclasses.fields(TrainConfig):
        assert f.name in rows, f"docs/training.md lacks TrainConfig.{f.name}"
        text = rows[f.name].strip("` ")
        if f.default is None:
            assert text == "None", (f.name, text)
        elif isinstance(f.default, (int, float)):
            assert float(text) == f.default, (f.name, text, f.default)
        else:
            assert text == f.default, (f.name, text, f.default)


# -- issue 16 items 7, 10, 14 and issue 17 items 1, 3, 4, 5 ---------------------------------------
def test_manifest_split_advice_works_and_a_test_split_val_needs_opt_in(
    models, probes, tmp_path, capsys, caplog
):
    mixed = str(probes["mixed"])  # 3 train rows, 3 test rows (a `split` column)
    out = tmp_path / "run"
    args = _base(models, probes, out)
    args[args.index("--probe") + 1] = mixed
    code, _, err = _run(args, capsys)
    assert code == 1 and f"pass --probe {mixed}:train" in err, err
    args[args.index("--probe") + 1] = f"{mixed}:train"  # the advice, followed
    args[args.index("--val") + 1] = f"{mixed}:test"
    code, _, err = _run(args, capsys)
    assert code == 1 and "'test' split" in err and "--val-test-split" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = _run([*args, "--val-test-split"], capsys)  # --batch-size 8 > 3 images
    assert code == 1 and "batch size of 8 is larger than the training set (3 images)" in err, err
    assert not out.exists()
    at = args.index("--batch-size")
    del args[at : at + 2]  # the default, "auto"
    code, stdout, err = _run([*args, "--val-test-split"], capsys)
    assert code == 0, err
    # the batch the default ("auto") chose for 3 images is what the folder records
    cfg = json.loads((out / "config.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert cfg["train_config"]["batch_size"] == 3 and run["batch_size"] == 3
    assert run["epochs"] == 3 and run["steps"] == 3
    assert "only 3 training images" in caplog.text  # too small to learn anything
    assert f"next: alignkit evaluate --run {out} --retrieval {mixed}:test" in stdout


def test_a_failed_run_says_so_and_overwrite_puts_the_finished_run_back(
    models, probes, tmp_path, capsys, monkeypatch
):
    import alignkit.training as training
    from alignkit.errors import AlignkitError

    out = tmp_path / "run"
    assert _run(_base(models, probes, out), capsys)[0] == 0
    weights = (out / "projector.safetensors").read_bytes()

    def fails(*args, **kwargs):
        raise AlignkitError("simulated training failure")

    monkeypatch.setattr(training, "train_projector", fails)
    code, _, err = _run(_base(models, probes, out, "--overwrite", "--lr", "0.01"), capsys)
    assert code == 1 and "simulated training failure" in err
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    assert json.loads((out / "config.json").read_text())["train_config"]["lr"] == 0.001
    assert (out / "projector.safetensors").read_bytes() == weights
    assert not list(tmp_path.glob(".run.old-*"))
    fresh = tmp_path / "fresh"
    assert _run(_base(models, probes, fresh), capsys)[0] == 1
    run = json.loads((fresh / "run.json").read_text())
    assert run["status"] == "failed" and "simulated training failure" in run["error"]


def test_from_ranking_top_2_after_top_1_trains_only_the_second(models, probes, tmp_path, capsys):
    ranking = tmp_path / "rank"
    ranking.mkdir()
    with open(ranking / "ranking.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "vision", "text", "control", "linear_cka"])
        w.writerow([1, models["vit"], models["bert"], False, 0.5])
        w.writerow([2, models["cnn"], models["bert"], False, 0.4])
    args = _base(models, probes, tmp_path / "runs")
    for flag in ("--vision", "--text"):
        i = args.index(flag)
        del args[i : i + 2]
    assert _run([*args, "--from-ranking", str(ranking), "--top", "1"], capsys)[0] == 0
    (first,) = (tmp_path / "runs").iterdir()
    stamp = (first / "projector.safetensors").stat().st_mtime_ns
    code, stdout, err = _run([*args, "--from-ranking", str(ranking), "--top", "2"], capsys)
    assert code == 0, err
    assert stdout.count("training ") == 1 and "kept " in stdout and f"{first}" in stdout
    assert (first / "projector.safetensors").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert "next: alignkit evaluate --run" in stdout and stdout.count("--run ") == 2


def test_batch_size_1_is_refused_before_any_work(models, probes, tmp_path, capsys):
    from alignkit.errors import AlignkitError
    from alignkit.training import TrainConfig

    code, _, err = _run(_base(models, probes, tmp_path / "run", "--batch-size", "1"), capsys)
    assert code == 1 and "--batch-size must be >= 2" in err and not (tmp_path / "run").exists()
    with pytest.raises(AlignkitError, match="batch_size must be >= 2"):
        TrainConfig(batch_size=1)


def _bad_row_manifest(folder: Path) -> Path:
    rows = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines()]
    rows.append({**rows[0], "id": "missing", "image": "no-such-image.png"})
    path = folder / "with-bad-row.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tokens_without_token_features_fail_before_extraction_and_skip_bad_is_accepted(
    models, probes, tmp_path, capsys, monkeypatch
):
    cache = tmp_path / "cache"
    args = _base(models, probes, tmp_path / "run", "--tokens", "--cache", str(cache))
    args[args.index(models["bert"])] = "random:text-16"
    code, _, err = _run(args, capsys)
    assert code == 1 and "--tokens needs token-level features" in err and "random:text-16" in err, (
        err
    )
    assert not list(cache.rglob("*.safetensors")) and not (tmp_path / "run").exists()
    bad = _bad_row_manifest(probes["train"].parent)
    args = _base(models, probes, tmp_path / "skip", "--cache", str(cache))
    args[args.index("--probe") + 1] = str(bad)
    code, _, err = _run(args, capsys)
    assert code == 1 and "--skip-bad" in err and "skip_bad" not in err, err
    code, _, err = _run([*args, "--skip-bad"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "skip" / "config.json").read_text())["probe"]["n"] == 24


def test_every_message_names_options_the_command_has(models, probes, tmp_path, capsys):
    """Issue 17 item 3: what a CLI user reads names CLI options, never Python arguments."""
    import re

    code, helptext, _ = run_cli(["train", "--help"], capsys)
    flags = set(re.findall(r"--[a-z][a-z-]+", helptext))
    finished = tmp_path / "done"
    assert _run(_base(models, probes, finished), capsys)[0] == 0
    unfinished = tmp_path / "unfinished"
    assert _run(_base(models, probes, unfinished), capsys)[0] == 0
    run = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**run, "status": "running"}))
    mixed = str(probes["mixed"])
    cases = {
        "mixed probe": ["--probe", mixed],
        "test val": ["--probe", f"{mixed}:train", "--val", f"{mixed}:test"],
        "batch 1": ["--batch-size", "1"],
        "bad row": ["--probe", str(_bad_row_manifest(probes["train"].parent))],
        "finished": ["--out", str(finished)],
        "other lr": ["--out", str(unfinished), "--lr", "0.5"],
        "cache only": ["--cache", str(tmp_path / "empty"), "--cache-only"],
        "patience": ["--patience", "-1"],
        "dropout": ["--dropout", "2"],
        "loss": ["--loss", "cosine"],
    }
    for name, extra in cases.items():
        args = _base(models, probes, tmp_path / "new")
        for i in range(0, len(extra), 2):
            if extra[i] in args:
                args[args.index(extra[i]) + 1] = extra[i + 1]
            else:
                args += extra[i : i + 2] if i + 1 < len(extra) else extra[i:]
        code, _, err = _run(args, capsys)
        assert code == 1, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
        assert not re.search(r"\b[a-z_]+=(True|False)|\b(pass|or|use|set) [a-z_]+=", err), (
            name,
            err,
        )
        assert "TrainConfig." not in err, (name, err)
        python_names = r"\b(cache_only|skip_bad|val_test_split|batch_size|out_dir|val_n)\b"
        assert not re.search(python_names, err), (name, err)
        unknown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", err)) - flags
        assert not unknown, (name, unknown, err)


def test_the_options_table_in_docs_training_is_the_declaration():
    from alignkit.cli._options import options_markdown
    from alignkit.cli.train import TrainOptions

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    table = doc.split("<!-- options:begin -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert table == options_markdown(TrainOptions), "regenerate the table in docs/training.md"


def test_a_config_file_sets_every_option_and_the_command_line_wins(
    models, probes, tmp_path, capsys
):
    out = tmp_path / "run"
    path = tmp_path / "train.toml"
    path.write_text(
        f'vision = "{models["vit"]}"\ntext = "{models["bert"]}"\nprobe = "{probes["train"]}"\n'
        f'val = "{probes["dev"]}"\nepochs = 3\nbatch_size = 8\nwidth = 16\ndevice = "cpu"\n'
        f'out = "{out}"\ncache = "off"\npatience = 0\n'
    )
    code, _, err = _run(["--config", str(path), "--lr", "0.02"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())["train_config"]
    assert cfg["lr"] == 0.02 and cfg["width"] == 16 and cfg["patience"] is None
    path.write_text(path.read_text() + "epoch = 4\n")
    code, _, err = _run(["--config", str(path)], capsys)
    assert code == 1 and "unknown key 'epoch'" in err and "did you mean 'epochs'" in err, err


def test_ctrl_c_says_what_was_kept(models, probes, tmp_path, capsys, monkeypatch):
    import alignkit.training as training

    out = tmp_path / "run"
    assert _run(_base(models, probes, out), capsys)[0] == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_projector", interrupted)
    code, _, err = _run(_base(models, probes, out, "--overwrite", "--lr", "0.01"), capsys)
    assert code == 130 and "the earlier finished run" in err and "back in place" in err, err
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    fresh = tmp_path / "fresh"
    code, _, err = _run(_base(models, probes, fresh), capsys)
    assert code == 130 and "interrupted before the first checkpoint" in err, err
    assert f"resume with: alignkit train --vision {models['vit']}" in err and str(fresh) in err
    assert json.loads((fresh / "run.json").read_text())["status"] == "interrupted"
