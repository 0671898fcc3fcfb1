"""How long does a fully cached ``alignkit rank-encoders`` re-run take, and where does it go?

Issue 10, items 11 and 13. Each configuration runs the real command (``python -m alignkit
rank-encoders --n N --out <tmp> --quiet``) in a fresh child process on a cache that already holds
every feature, and the child reports:

* wall-clock seconds and CPU seconds (user + system, the process and its children);
* seconds spent inside ``create_encoder`` (building models only to learn their weights identity),
  and their share of the wall clock;
* torch's intra-op thread count at the start.

Configurations: ``--code DIR`` (repeatable) puts an alignkit source tree first on ``PYTHONPATH``
(e.g. a ``git archive`` of the commit before the change, and this checkout), and ``--threads``
picks torch's threads: ``default`` (no ``OMP_NUM_THREADS``: torch starts one thread per core),
``1`` (``OMP_NUM_THREADS=1``), ``auto`` (``default`` env; alignkit chooses by work and free CPUs,
where the code has :mod:`alignkit._threads`). Repetitions alternate the configurations so that all
see the same machine load; the table gives medians and the load average around each run.
``--load K`` starts K busy-looping processes for the duration (to measure "under load" on an
otherwise quiet machine; 0 on a machine that is already busy).

Before the timed runs, each code tree runs once untimed (a warm-up: for code with the feature
memo, that first run builds every encoder once and records its cheap identity).

    python benchmarks/cached_rerun.py --code /tmp/base --code . --threads default auto 1 \\
        [--n 500] [--repeats 3] [--load 0] [--cache-dir $ALIGNKIT_CACHE_DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


# -- the child: one timed run of the real command ------------------------------------------------
def _child(spec: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    import torch

    import alignkit.encoders as encoders
    from alignkit.cli import main

    threads = torch.get_num_threads()
    built: list[float] = []
    real = encoders.create_encoder

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            built.append(time.perf_counter() - start)

    encoders.create_encoder = timed
    with tempfile.TemporaryDirectory() as out:
        argv = ["rank-encoders", "--n", str(spec["n"]), "--out", f"{out}/run", "--quiet"]
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    wall = time.perf_counter() - t0
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "build_s": sum(built),
                "builds": len(built),
                "torch_threads": threads,
            }
        )
    )


# -- the parent -----------------------------------------------------------------------------------
def _busy() -> None:  # pragma: no cover - a load generator
    while True:
        pass


def _env(code: Path, threads: str, cache_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ALIGNKIT_THREADS")}
    env.update(PYTHONPATH=str(code), ALIGNKIT_CACHE_DIR=cache_dir)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if threads == "1":
        env["OMP_NUM_THREADS"] = "1"
    return env


def _run(
    code: Path, threads: str, n: int, cache_dir: str, timeout: float | None = None
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps({"n": n})],
            env=_env(code, threads, cache_dir),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:  # recorded as a lower bound
        wall = time.perf_counter() - t0
        nan = float("nan")
        load = (load_before + os.getloadavg()[0]) / 2
        return {"wall_s": wall, "cpu_s": nan, "build_s": nan, "timed_out": True, "load": load}
    if done.returncode != 0:
        raise SystemExit(f"{code} threads={threads} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = (load_before + os.getloadavg()[0]) / 2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--code", action="append", type=Path, default=[])
    parser.add_argument("--threads", nargs="+", default=["default", "auto", "1"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=0)
    parser.add_argument("--cache-dir", default=os.environ.get("ALIGNKIT_CACHE_DIR", ""))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeout", type=float, help="seconds; a slower run is recorded as >=")
    parser.add_argument("--no-warmup", action="store_true", help="the memo is already written")
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    if not args.cache_dir:
        raise SystemExit("pass --cache-dir (a cache that holds the default run's features)")
    codes = [c.resolve() for c in (args.code or [Path(__file__).resolve().parents[1]])]
    configs = [(c, t) for c in codes for t in args.threads]
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    try:
        for code in [] if args.no_warmup else codes:  # warm-up, untimed
            _run(code, "1", args.n, args.cache_dir)
        results: dict[tuple[Path, str], list[dict[str, Any]]] = {c: [] for c in configs}
        for _ in range(args.repeats):
            for config in configs:
                results[config].append(_run(*config, args.n, args.cache_dir, args.timeout))
                print(config[0].name, config[1], results[config][-1], flush=True)
    finally:
        for p in busy:
            p.terminate()

    def med(rows: list[dict[str, Any]], field: str) -> float:
        return statistics.median(r[field] for r in rows)

    print(
        f"\ncached rank-encoders --n {args.n}, {args.repeats} runs each "
        f"(medians; {os.cpu_count()} CPUs, --load {args.load})"
    )
    print(
        f"{'code':>12} {'threads':>8} {'wall s':>8} {'CPU s':>7} {'build s':>8} {'build %':>8}"
        f" {'load':>6}"
    )
    table = []
    for (code, threads), rows in results.items():
        wall, cpu, build = med(rows, "wall_s"), med(rows, "cpu_s"), med(rows, "build_s")
        load = med(rows, "load")
        table.append(
            {
                "code": str(code),
                "threads": threads,
                "wall_s": wall,
                "cpu_s": cpu,
                "build_s": build,
                "load": load,
                "runs": rows,
            }
        )
        more = ">=" if any(r.get("timed_out") for r in rows) else "  "  # killed at --timeout
        print(
            f"{code.name:>12} {threads:>8} {more}{wall:6.1f} {cpu:7.1f} {build:8.1f} "
            f"{100 * build / wall:7.0f}% {load:6.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
