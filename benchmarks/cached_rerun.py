"""How long does a fully cached ``alignkit rank-encoders`` re-run take, and where does it go?

Issue 10, items 11 and 13. Each configuration runs the real command (``alignkit rank-encoders
--n N --out <tmp>``, through ``alignkit.cli.main``) in a fresh child process on a cache that
already holds every feature, and the child reports:

* wall-clock seconds and CPU seconds (user + system, the process and its children);
* seconds spent inside ``create_encoder`` (building models only to learn their weights identity),
  and their share of the wall clock;
* torch's intra-op thread count at the start;
* CPU and wall seconds by phase: the imports (torch, pandas, scipy.stats, matplotlib, alignkit:
  done first, so the later phases hold no import), the probe, reading the features, scoring,
  drawing the figures, writing them (per format), summary.md; "rest" is what no phase covers.

The command is the default one a user types (``--quiet`` adds ``--quiet``; its bars then go
nowhere instead of to the captured stderr). Configurations: ``--code DIR`` (repeatable) puts an
alignkit source tree first on ``PYTHONPATH`` (e.g. a ``git archive`` of the commit before the
change, and this checkout), and ``--threads``
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
        [--quiet] [--phases]
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
class _Phases:
    """CPU (process) and wall seconds spent inside wrapped functions, by phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}

    def add(self, name: str, cpu: float, wall: float) -> None:
        got = self.seconds.setdefault(name, [0.0, 0.0])
        got[0] += cpu
        got[1] += wall

    def timed(self, name: str, function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.process_time() - c0, time.perf_counter() - w0)

        return run

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        setattr(owner, attr, self.timed(name, getattr(owner, attr)))


def _instrument(phases: _Phases) -> None:
    """Import the heavy libraries first (timed), then time the run's phases by wrapping the
    functions the command calls (they exist in every alignkit version the benchmark compares)."""
    for name, module in [
        ("import torch", "torch"),
        ("import pandas", "pandas"),
        ("import scipy.stats", "scipy.stats"),
        ("import matplotlib", "matplotlib.pyplot"),
        ("import alignkit", "alignkit.cli"),
        ("import alignkit", "alignkit.ranking"),
    ]:
        c0, w0 = time.process_time(), time.perf_counter()
        if module == "matplotlib.pyplot":
            import matplotlib

            matplotlib.use("Agg")
        __import__(module)
        phases.add(name, time.process_time() - c0, time.perf_counter() - w0)
    from matplotlib.figure import Figure

    import alignkit.metrics as metrics
    import alignkit.ranking.pipeline as pipeline
    from alignkit.ranking import report

    phases.wrap(pipeline, "load_ranking_probe", "probe")
    phases.wrap(pipeline, "_extract", "features (cache)")
    phases.wrap(metrics, "score_pairs", "scoring")
    for attr in ("plot_heatmap", "plot_agreement", "plot_top_pairs", "plot_layers"):
        phases.wrap(report, attr, "figures: draw")
    phases.wrap(report, "summary", "summary.md")
    save = Figure.savefig

    def savefig(fig: Any, fname: Any, *args: Any, **kwargs: Any) -> Any:
        name = "figures: write ." + str(fname).rsplit(".", 1)[-1]
        return phases.timed(name, save)(fig, fname, *args, **kwargs)

    Figure.savefig = savefig


def _child(spec: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    c0 = time.process_time()
    phases = _Phases()
    if spec.get("phases"):
        _instrument(phases)
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
        argv = ["rank-encoders", "--n", str(spec["n"]), "--out", f"{out}/run"]
        argv += ["--quiet"] if spec.get("quiet") else []
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
    split = {k: [round(c, 3), round(w, 3)] for k, (c, w) in phases.seconds.items()}
    if split:
        covered = [sum(v[i] for k, v in phases.seconds.items()) for i in (0, 1)]
        split["rest"] = [
            round(time.process_time() - c0 - covered[0], 3),
            round(time.perf_counter() - t0 - covered[1], 3),
        ]
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "build_s": sum(built),
                "builds": len(built),
                "torch_threads": threads,
                "phases_cpu_wall_s": split,
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
    code: Path,
    threads: str,
    n: int,
    cache_dir: str,
    timeout: float | None = None,
    quiet: bool = False,
    phases: bool = False,
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    spec = {"n": n, "quiet": quiet, "phases": phases}
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
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
    parser.add_argument("--quiet", action="store_true", help="run the command with --quiet")
    parser.add_argument("--phases", action="store_true", help="CPU and wall seconds by phase")
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
            _run(code, "1", args.n, args.cache_dir, quiet=args.quiet)
        results: dict[tuple[Path, str], list[dict[str, Any]]] = {c: [] for c in configs}
        for _ in range(args.repeats):
            for config in configs:
                results[config].append(
                    _run(*config, args.n, args.cache_dir, args.timeout, args.quiet, args.phases)
                )
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
    if args.phases:
        _print_phases(results)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


def _print_phases(results: dict[tuple[Path, str], list[dict[str, Any]]]) -> None:
    """Median CPU s (wall s) of each phase, one column per configuration."""
    names = list(
        dict.fromkeys(k for rows in results.values() for r in rows for k in r["phases_cpu_wall_s"])
    )
    heads = [f"{code.name} {threads}" for code, threads in results]
    print("\nmedian CPU s (wall s) by phase")
    print(f"{'phase':>22} " + " ".join(f"{h:>18}" for h in heads))
    for name in names:
        cells = []
        for rows in results.values():
            got = [r["phases_cpu_wall_s"].get(name, [0.0, 0.0]) for r in rows]
            cpu = statistics.median(g[0] for g in got)
            wall = statistics.median(g[1] for g in got)
            cells.append(f"{cpu:8.2f} ({wall:6.2f})")
        print(f"{name:>22} " + " ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
