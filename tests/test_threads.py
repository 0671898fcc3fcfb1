"""Thread counts chosen by work size and free CPUs (issue 10, item 13)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from alignkit import _threads
from alignkit._threads import WORK_PER_THREAD, choose_threads, free_cpus, limit_threads
from alignkit.cli import main


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv("ALIGNKIT_THREADS", raising=False)


def test_free_cpus_subtracts_the_load_and_keeps_one():
    assert free_cpus(cpus=8, load=0.0) == 8
    assert free_cpus(cpus=8, load=2.6) == 5  # 5.4 rounds to 5
    assert free_cpus(cpus=8, load=2.4) == 6
    assert free_cpus(cpus=2, load=14.0) == 1  # a busy machine still gets one
    assert free_cpus(cpus=4, load=-1.0) == 4  # never more than the usable CPUs


def test_choose_threads_by_work_and_load(monkeypatch):
    assert choose_threads(0, cpus=8, load=0) == 1
    assert choose_threads(500**2, cpus=8, load=0) == 1  # the (n, n) ops of n = 500: small
    assert choose_threads(3 * WORK_PER_THREAD, cpus=8, load=0) == 3
    assert choose_threads(100 * WORK_PER_THREAD, cpus=8, load=0) == 8
    assert choose_threads(100 * WORK_PER_THREAD, cpus=8, load=7.0) == 1
    assert choose_threads(None, cpus=8, load=3.0) == 5
    monkeypatch.setenv("ALIGNKIT_THREADS", "3")
    assert choose_threads(0, cpus=8, load=7.0) == 3  # the user's number wins


def test_limit_threads_lowers_and_restores():
    before = torch.get_num_threads()
    with limit_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with limit_threads(before + 5) as n:  # never raises the count
        assert n == before
    with pytest.raises(RuntimeError), limit_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_limit_threads_limits_numpys_blas_too():
    # the exact null moments multiply (n, n) matrices in numpy: its BLAS pool obeys the limit
    from threadpoolctl import threadpool_info

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    before = blas()
    assert before, "no BLAS pool found"
    with limit_threads(1):
        assert blas() == [1] * len(before)
    assert blas() == before


def _forward_threads(monkeypatch) -> list[int]:
    """Record torch's thread count inside every forward of the random text encoder."""
    from alignkit.encoders._controls import RandomFeatures

    seen: list[int] = []
    real = RandomFeatures._forward

    def spy(self, batch):
        seen.append(torch.get_num_threads())
        return real(self, batch)

    monkeypatch.setattr(RandomFeatures, "_forward", spy)
    return seen


def test_extract_runs_one_thread_on_a_busy_machine_and_honours_threads(
    tmp_path, monkeypatch, capsys
):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = _forward_threads(monkeypatch)
        monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
        argv = ["extract", "-e", "random:text-384", "--probe", "synthetic", "--n", "6"]
        argv += ["--cache", "off", "--quiet"]
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code in (0, None)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # put back afterwards

        seen.clear()
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        monkeypatch.setattr(_threads, "usable_cpus", lambda: 2)
        with pytest.raises(SystemExit):
            main(argv)
        assert set(seen) == {2}  # a quiet machine: the free CPUs

        seen.clear()
        with pytest.raises(SystemExit):
            main([*argv, "--threads", "1"])
        assert set(seen) == {1}
        capsys.readouterr()
    finally:
        torch.set_num_threads(before)
        os.environ.pop("ALIGNKIT_THREADS", None)


def test_a_long_run_does_not_count_itself_as_load(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(_threads, "_own_load", lambda: 1.0)  # the load is this process's own
    assert free_cpus() == 2
    monkeypatch.setattr(_threads, "_own_load", lambda: 0.0)  # another job's
    assert free_cpus() == 1
