"""`alignkit extract` through the console entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli import run_cli

from alignkit.features import FeatureCache


def test_extract_fits_a_fitted_encoder_before_it_computes_the_cache_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tfidf: has no weights identity until it is fitted on the probe's captions; the command
    used to ask for the cache key first and stopped with 'call encoder.fit(texts)'."""
    argv = ["extract", "-e", "tfidf:svd-16", "-p", "synthetic", "-n", "20"]
    argv += ["--cache-dir", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "20 rows x 16 extracted" in out
    [entry] = FeatureCache.at(tmp_path).list()  # --cache-dir (now --cache) names the root
    assert entry.encoder == "tfidf:svd-16" and entry.n == 20
    code, out, err = run_cli(argv, capsys)  # same captions, same fit: the second run is a hit
    assert code == 0, err
    assert "20 rows x 16 from the cache" in out


# -- one declaration, one vocabulary (issue 20 item 3, issue 17 items 4 and 7) -----------------
def _manifest(folder: Path, rows: int, *, labelled: bool = False, missing: int = 0) -> Path:
    """``rows`` small PNGs with a caption each (or a label and no caption); the last
    ``missing`` images absent."""
    import json

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        name = f"img{i:03d}.png"
        if i < rows - missing:
            Image.new("RGB", (8, 8), (i * 9 % 256, 255 - i * 5 % 256, i % 5 * 40)).save(
                folder / name
            )
        row = {"id": f"r{i}", "image": name}
        row.update({"label": i % 3} if labelled else {"caption": f"picture number {i}"})
        lines.append(json.dumps(row))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_options_table_in_docs_features_is_the_declaration() -> None:
    from alignkit.cli._options import options_markdown
    from alignkit.features.config import ExtractConfig

    doc = (Path(__file__).parents[1] / "docs" / "features.md").read_text(encoding="utf-8")
    table = doc.split("<!-- options:begin -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert table == options_markdown(ExtractConfig), "regenerate the table in docs/features.md"


def test_extract_batch_is_the_flag_and_batch_size_an_old_spelling_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["extract", "-e", "random:text-16", "-p", "synthetic", "-n", "12", "--quiet"]
    base += ["--cache", str(tmp_path)]
    code, out, err = run_cli([*base, "--extract-batch", "5"], capsys)
    assert code == 0, err
    assert "12 rows x 16 extracted" in out and "note" not in err
    code, out, err = run_cli([*base, "--batch-size", "5"], capsys)
    assert code == 0, err
    assert "note: --batch-size is deprecated; use --extract-batch" in err
    code, _, err = run_cli([*base, "--batch-size", "5", "--extract-batch", "4"], capsys)
    assert code == 1 and "give --extract-batch once" in err
    config = tmp_path / "extract.toml"
    config.write_text("batch_size = 0\n")  # the old key is read (and its value checked)
    code, _, err = run_cli([*base, "--config", str(config)], capsys)
    assert code == 1, err
    assert "the key 'batch_size' is deprecated; use 'extract_batch'" in err
    assert "extract.toml: --extract-batch must be an integer >= 1: got 0" in err


def test_a_config_file_sets_the_run_and_the_command_line_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "extract.yaml"
    config.write_text("encoders: [random:text-16, random:text-8]\nprobe: synthetic\nn: 9\n")
    argv = ["extract", "-c", str(config), "--cache", "off", "-q"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "random:text-16: 9 rows x 16 extracted" in out and "random:text-8: 9 rows x 8" in out
    code, out, err = run_cli([*argv, "-n", "7"], capsys)
    assert code == 0, err
    assert "random:text-8: 7 rows x 8" in out


def test_bad_settings_and_encoders_fail_before_the_probe_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest with a missing image would fail at load; an unknown backend, an impossible
    device or no encoder at all must be found first (no model and no image touched)."""
    manifest = _manifest(tmp_path / "data", 6, missing=1)
    probe = ["-p", str(manifest), "--cache", "off", "-q"]
    code, _, err = run_cli(["extract", "-e", "nosuch:model", *probe], capsys)
    assert code == 1 and "unknown encoder backend 'nosuch'" in err
    code, _, err = run_cli(["extract", *probe], capsys)
    assert code == 1 and "--encoder must name at least one encoder spec" in err
    code, _, err = run_cli(
        ["extract", "-e", "random:text-16", "--device", "cuda:9", *probe], capsys
    )
    assert code == 1 and "device" in err and "img005" not in err
    # the image problem itself: one line that names --skip-bad, and --skip-bad drops the row
    code, _, err = run_cli(["extract", "-e", "random:image-16", *probe], capsys)
    assert code == 1 and "img005" in err and "--skip-bad" in err and "skip_bad" not in err
    code, out, err = run_cli(["extract", "-e", "random:image-16", *probe, "--skip-bad"], capsys)
    assert code == 0, err
    assert "5 rows, fingerprint" in out


def test_class_names_give_a_labelled_manifest_without_captions_its_captions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path / "data", 9, labelled=True)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    argv = ["extract", "-e", "random:text-16", "-p", str(manifest), "--cache", "off", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "--class-names" in err and "class_names=" not in err
    code, out, err = run_cli([*argv, "--class-names", str(names)], capsys)
    assert code == 0, err
    assert "random:text-16: 9 rows x 16 extracted" in out


def test_threads_hold_for_the_command_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from alignkit import _threads
    from alignkit.features import extract

    seen: list[str | None] = []

    def spy(*args: object, **kwargs: object) -> int:
        seen.append(os.environ.get(_threads.ENV))
        return 1

    monkeypatch.delenv(_threads.ENV, raising=False)
    monkeypatch.setattr(extract, "choose_threads", spy)
    argv = ["extract", "-e", "random:text-16", "-p", "synthetic", "-n", "6", "--cache", "off", "-q"]
    code, _, err = run_cli([*argv, "--threads", "3"], capsys)
    assert code == 0, err
    assert seen == ["3"]  # the model's forwards ran under --threads
    assert _threads.ENV not in os.environ  # and only they did
    code, _, err = run_cli([*argv, "--threads", "0"], capsys)
    assert code == 1 and "--threads must be an integer >= 1: got 0" in err


def test_a_manifest_split_is_named_as_on_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--probe rows.jsonl:train`` reads the manifest's split column, as ``--split train``."""
    import json

    manifest = _manifest(tmp_path / "data", 10)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["split"] = "train" if i < 7 else "dev"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["extract", "-e", "random:text-16", "--cache", "off", "-q"]
    code, out, err = run_cli([*base, "-p", f"{manifest}:train"], capsys)
    assert code == 0, err
    assert ": 7 rows, fingerprint" in out
    code, out2, err = run_cli([*base, "-p", str(manifest), "--split", "train"], capsys)
    assert code == 0, err
    assert out2.split("fingerprint ")[1][:16] == out.split("fingerprint ")[1][:16]
    code, _, err = run_cli([*base, "-p", f"{manifest}:test"], capsys)
    assert code == 1 and "train" in err and "dev" in err


def test_the_probe_help_names_the_formats_at_scale() -> None:
    """A new user with shards, a CLIP_benchmark folder or parquet learns from --help that
    --probe takes them (it listed named probes and manifests only)."""
    from alignkit.config import RankConfig
    from alignkit.features.config import ExtractConfig
    from alignkit.options import declared
    from alignkit.training.config import TrainRunConfig

    for cls in (RankConfig, ExtractConfig, TrainRunConfig):
        help_text = {f.name: opt.help for f, opt in declared(cls)}["probe"]
        for words in ("webdataset shards", "CLIP_benchmark folder", "HF parquet"):
            assert words in help_text, (cls.__name__, words)
