"""Start a Python script in a fresh process, or as 2 ranks under torchrun, for the distributed
tests: a clean torchrun environment, one thread per process, and no orphans on a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def launch(
    argv: list[str], *, torchrun: bool = True, timeout: float = 150
) -> subprocess.CompletedProcess:
    """Run ``python ARGV`` (2 gloo ranks with ``torchrun``); fails the test after ``timeout`` s,
    killing the launcher and its workers."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = TORCHRUN if torchrun else [sys.executable]
    proc = subprocess.Popen(
        [*launcher, *argv],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a timeout can kill every rank
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(argv)[:200]} timed out after {timeout} s: {err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
