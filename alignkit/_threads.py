"""How many CPU threads torch may use, chosen by the size of the work and the CPUs actually free.

torch starts one intra-op thread per core. On a machine other jobs are using, those threads wait
for each other at every small operation (OpenMP workers spin, then sleep, at each barrier): a fully
cached ``rank-encoders --n 200`` took 28-81 s with the default threads under load and 10 s with
one thread. So alignkit runs its own work under :func:`limit_threads` with
:func:`choose_threads`: one thread for small operations or a busy machine, up to the free CPUs
for large ones; numpy's BLAS (threadpoolctl) is held to the same count, since its idle threads
spin the same way (the null moments' (n, n) products took 0.32 CPU s on two BLAS threads against
0.18 s on one, on the loaded 2-core machine). ``ALIGNKIT_THREADS=N`` (or a command's
``--threads N``) overrides the choice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: Work (multiply-adds of one operation, roughly) below which a second thread costs more in
#: synchronisation than it saves; above it, one thread per this much work, up to the free CPUs.
WORK_PER_THREAD = 1 << 22
ENV = "ALIGNKIT_THREADS"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _own_load() -> float:
    """This process's own share of the 1-minute load average: the load average is an exponential
    average over about 60 s, so a process that has run ``t`` seconds at ``u`` busy CPUs adds about
    ``u * (1 - exp(-t / 60))``. Read from /proc (Linux); 0 elsewhere."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        elapsed = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    if elapsed <= 0:
        return 0.0
    busy = time.process_time() / elapsed  # CPUs this process kept busy on average
    return busy * (1.0 - math.exp(-elapsed / 60.0))


def free_cpus(cpus: int | None = None, load: float | None = None) -> int:
    """Usable CPUs minus the 1-minute load average of everything else, rounded to the nearest
    integer, at least 1.

    ``load`` given: the others' load. Not given: ``os.getloadavg()`` minus this process's own
    share of it (:func:`_own_load`), so a long run does not count itself as another job. On a
    machine without ``getloadavg`` every usable CPU counts as free.
    """
    cpus = usable_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = max(0.0, os.getloadavg()[0] - _own_load())
        except (AttributeError, OSError):
            return cpus
    return max(1, min(cpus, math.floor(cpus - load + 0.5)))


def _env_threads() -> int | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        log.warning("%s=%r is not an integer; choosing threads by work and load", ENV, value)
        return None
    return max(1, n)


def choose_threads(
    work: float | None = None, *, cpus: int | None = None, load: float | None = None
) -> int:
    """Threads for CPU work of size ``work`` (about the multiply-adds of its typical operation;
    None: large). ``ALIGNKIT_THREADS`` wins; else ``min(free CPUs, ceil(work / WORK_PER_THREAD))``,
    at least 1. ``cpus`` and ``load`` default to this machine's (tests pass them).
    """
    forced = _env_threads()
    if forced is not None:
        return forced
    free = free_cpus(cpus, load)
    if work is None:
        return free
    return max(1, min(free, math.ceil(max(0.0, float(work)) / WORK_PER_THREAD)))


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (n >= 1), and numpy's BLAS (OpenBLAS,
    MKL: the exact null moments multiply (n, n) matrices in numpy) at no more than n threads,
    then put the old counts back. Only lowers the counts: a caller that already asked for fewer
    threads keeps its choice. Like torch's, a BLAS product's last bits can depend on its thread
    count, so bitwise comparisons pin the threads on both sides."""
    import torch

    before = torch.get_num_threads()
    n = max(1, min(int(n), before))
    if n != before:
        torch.set_num_threads(n)
    try:
        with _limit_blas(n):
            yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def threads_setting(n: int | None) -> Iterator[None]:
    """Run the block as if ``ALIGNKIT_THREADS=n`` were set (a config's or a command's
    ``threads``); ``None`` leaves the environment's setting, or the automatic choice."""
    if n is None:
        yield
        return
    before = os.environ.get(ENV)
    os.environ[ENV] = str(int(n))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def _limit_blas(n: int) -> contextlib.AbstractContextManager[object]:
    """threadpoolctl's limit of every loaded BLAS to at most ``n`` threads (a no-op where no
    BLAS pool uses more)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    over = {
        pool["filepath"]: n
        for pool in threadpool_info()
        if pool.get("user_api") == "blas" and pool.get("num_threads", 1) > n
    }
    return threadpool_limits(limits=over) if over else contextlib.nullcontext()


__all__ = [
    "ENV",
    "WORK_PER_THREAD",
    "choose_threads",
    "free_cpus",
    "limit_threads",
    "threads_setting",
    "usable_cpus",
]
