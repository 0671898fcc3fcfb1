"""The user's commands around the feature cache: one ``--cache`` option naming the cache root on
every command, where a manifest stops being UTF-8, files ``extract --out`` writes, and importing
WordLlama leaving the process's logging alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_cli

REPO = Path(__file__).resolve().parents[1]


# -- item 4: a manifest that is not UTF-8 names the line ----------------------------------------
def test_non_utf8_manifest_names_line_column_and_byte_offset(tmp_path, capsys):
    lines = [
        json.dumps({"id": "a", "image": "a.jpg", "captions": ["a dog"]}) + "\n",
        json.dumps({"id": "b", "image": "b.jpg", "captions": ["two cats"]}) + "\n",
    ]
    bad = b'{"id": "c", "image": "c.jpg", "captions": ["caf\xe9 on the corner"]}\n'
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_bytes("".join(lines).encode() + bad)
    offset = len("".join(lines).encode()) + bad.index(b"\xe9")  # counted here, independently
    column = bad.index(b"\xe9") + 1  # the line is ASCII before the bad byte

    code, _, err = run_cli(
        ["extract", "-e", "random:text-384", "--probe", str(manifest), "--quiet"], capsys
    )
    assert code == 1
    assert "line 3" in err and f"column {column}" in err
    assert f"byte offset {offset}" in err and "0xE9" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


# -- item 17: extract --out honours the umask -----------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_extract_out_file_honours_the_umask(tmp_path, capsys, umask, mode):
    out = tmp_path / "feats.safetensors"
    old = os.umask(umask)
    try:
        code, stdout, err = run_cli(
            [
                "extract",
                "-e",
                "random:text-384",
                "--probe",
                "synthetic",
                "--n",
                "8",
                "--cache",
                "off",
                "--out",
                str(out),
                "--quiet",
            ],
            capsys,
        )
    finally:
        os.umask(old)
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == mode


# -- item 17: importing wordllama does not turn on INFO logging ---------------------------------
def test_wordllama_leaves_the_process_logging_as_it_was():
    pytest.importorskip("wordllama")
    script = (
        "import logging\n"
        "from alignkit.encoders import create_encoder\n"
        "enc = create_encoder('wordllama:l2_supercat')\n"
        "enc.encode(['a dog runs'])\n"
        "root = logging.getLogger()\n"
        "logging.getLogger('some.library').info('SHOULD-NOT-PRINT')\n"
        "print(len(root.handlers), root.level)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", str(30)]  # no handler added; root still at WARNING
    assert "SHOULD-NOT-PRINT" not in done.stderr


# -- item 10: one --cache option, naming the cache root, on every command -------------------------
def _keys(features: Path) -> set[str]:
    return {p.stem for p in features.glob("[0-9a-f][0-9a-f]/*.json")}  # not the _memo folder


def test_extract_and_cache_list_agree_on_the_cache_root(tmp_path, capsys, caplog):
    root = tmp_path / "root"
    argv = ["extract", "-e", "random:text-384", "--probe", "synthetic", "--n", "8", "--quiet"]
    code, _, err = run_cli([*argv, "--cache", str(root)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in root.iterdir()) == ["features"]  # nothing else in the root
    (key,) = _keys(root / "features")

    code, out, _ = run_cli(["cache", "list", "--cache", str(root)], capsys)
    assert code == 0 and key[:12] in out and "1 entries" in out

    # the features folder given in place of its root is recognised, with a note
    code, out, _ = run_cli(["cache", "list", "--cache", str(root / "features")], capsys)
    assert code == 0 and key[:12] in out
    assert "using its parent" in caplog.text

    # the same folder as ALIGNKIT_CACHE_DIR is the same cache: a hit, no second entry
    os.environ["ALIGNKIT_CACHE_DIR"], old = str(root), os.environ.get("ALIGNKIT_CACHE_DIR")
    try:
        code, out, err = run_cli(argv, capsys)
        code2, listing, _ = run_cli(["cache", "list"], capsys)
    finally:
        os.environ["ALIGNKIT_CACHE_DIR"] = old or ""
    assert code == 0 and "from the cache" in out, err
    assert key[:12] in listing and _keys(root / "features") == {key}


def test_rank_encoders_reads_what_extract_wrote_under_the_same_root(tmp_path, capsys):
    root = tmp_path / "root"
    common = ["--probe", "synthetic", "--n", "40", "--cache", str(root), "--quiet"]
    code, _, err = run_cli(["extract", "-e", "random:image-512", *common], capsys)
    assert code == 0, err
    before = _keys(root / "features")
    code, _, err = run_cli(
        [
            "rank-encoders",
            "-v",
            "random:image-512",
            "-t",
            "random:text-384",
            *common,
            "--permutations",
            "0",
            "--subsamples",
            "0",
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 0, err
    after = _keys(root / "features")
    assert before < after and len(after) == 2  # the image entry was reused, the text one added
    assert sorted(p.name for p in root.iterdir()) == ["features"]


def test_cache_off_and_the_deprecated_spellings(tmp_path, capsys):
    root = tmp_path / "root"
    argv = ["extract", "-e", "random:text-384", "--probe", "synthetic", "--n", "8", "--quiet"]
    code, out, err = run_cli([*argv, "--cache", "off"], capsys)
    assert code == 0 and "not cached" in out, err

    code, _, err = run_cli([*argv, "--cache-dir", str(root)], capsys)
    assert code == 0 and "--cache-dir is deprecated" in err
    assert len(_keys(root / "features")) == 1  # the old spelling now also names the root

    code, out, err = run_cli([*argv, "--no-cache"], capsys)
    assert code == 0 and "not cached" in out and "--no-cache is deprecated" in err

    code, _, err = run_cli([*argv, "--cache", str(root), "--no-cache"], capsys)
    assert code == 1 and "--cache and --no-cache" in err

    code, _, err = run_cli(["cache", "list", "--cache", "off"], capsys)
    assert code == 1 and "pass --cache DIR" in err


def test_old_layout_folder_holding_entries_directly_is_still_read(tmp_path, capsys, caplog):
    from alignkit.features import FeatureCache, locate_cache

    old = tmp_path / "mycache"  # what `rank-encoders --cache mycache` used to fill
    argv = ["extract", "-e", "random:text-384", "--probe", "synthetic", "--n", "8", "--quiet"]
    code, _, err = run_cli([*argv, "--cache", str(tmp_path / "fresh")], capsys)
    assert code == 0, err
    (tmp_path / "fresh" / "features").rename(old)
    where = locate_cache(old)
    assert where.features == old and where.note
    assert len(FeatureCache.at(old).list()) == 1
    code, out, _ = run_cli([*argv, "--cache", str(old)], capsys)
    assert code == 0 and "from the cache" in out
    assert not (old / "features").exists()
