"""`alignkit train` as a user runs it, in real subprocesses: Ctrl-C says what was kept and the
command that resumes (issue 17 item 11), and a resume with another text encoder of the same width
or another validation set is refused before any extraction (issue 16 item 9)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from encoders import tiny  # tests/encoders/tiny.py
from test_train_cli import _manifest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ALIGNKIT_THREADS": "1"}


def _train(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignkit", "train", *args]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_sigint_says_how_to_resume_and_resume_refuses_other_inputs(tmp_path):
    vit = f"hf:{tiny.save_vision(tmp_path / 'vit', 'vit')}"
    bert = f"hf:{tiny.save_bert(tmp_path / 'bert')}"
    train = _manifest(tmp_path / "probes", "train", 24, 0)
    dev = _manifest(tmp_path / "probes", "dev", 8, 1)
    other_dev = _manifest(tmp_path / "probes", "dev2", 8, 2)
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = [
        "--vision", vit, "--text", bert, "--probe", str(train), "--val", str(dev),
        "--epochs", "100000", "--batch-size", "8", "--width", "16", "--eval-every", "1",
        "--patience", "0", "--out", str(out), "--device", "cpu", "--cache", str(cache), "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(
        _train(*args),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a runner started in the background ignores SIGINT and its children inherit that;
        # give the command the disposition it has in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    checkpoint = out / "checkpoint.safetensors"
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "train ended before its first checkpoint: " + proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: the checkpoint at step " in err, err
    assert f"is kept in {out}" in err
    resume = shlex.split(err.split("resume with: ", 1)[1].strip().splitlines()[0])
    assert resume[:2] == ["alignkit", "train"] and resume[resume.index("--out") + 1] == str(out)
    assert resume[resume.index("--text") + 1] == bert and "--epochs" in resume
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"

    cached = _files(cache)
    # another text encoder of the same width (32): the same architecture, random weights
    other_text = [*args]
    other_text[other_text.index(bert)] = f"random-init:{bert}"
    done = subprocess.run(_train(*other_text), env=_env(), capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "holds an unfinished run with other inputs (text.spec: " in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    other_val = [*args]
    other_val[other_val.index(str(dev))] = str(other_dev)
    done = subprocess.run(_train(*other_val), env=_env(), capture_output=True, text=True)
    assert done.returncode == 1 and "val.name: " in done.stderr, done.stderr
    assert "val.fingerprint: " in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert _files(cache) == cached  # refused before any extraction
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
