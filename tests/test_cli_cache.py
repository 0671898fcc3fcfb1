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

from alignkit.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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

    code, _, err = _run(
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
        code, stdout, err = _run(
            [
                "extract",
                "-e",
                "random:text-384",
                "--probe",
                "synthetic",
                "--n",
                "8",
                "--no-cache",
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
