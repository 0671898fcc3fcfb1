"""The body of ``alignkit predictivity``: the grid, the plan, the run, and a report that leads
with one sentence per result (or says plainly that the grid is too small to conclude)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from alignkit.cli._cache_option import with_old_cache_dir
from alignkit.errors import AlignkitError
from alignkit.evaluation.predictivity.config import PredictivityConfig

COLUMNS = [
    "pre", "kind", "post", "spearman", "spearman_low", "spearman_high", "kendall", "loeo_min",
    "rho_no_controls",
]  # fmt: skip


def grid_config(cfg_values: dict, config: Path | None, cache_dir: Any) -> PredictivityConfig:
    """The grid file (if any) with the command-line options over it."""
    from alignkit.evaluation.predictivity import read_grid

    cfg_values = with_old_cache_dir(cfg_values, cache_dir)
    if config is not None:
        return read_grid(config, **cfg_values)
    if not cfg_values.get("vision") or not cfg_values.get("text"):
        raise AlignkitError(
            "give the grid: --vision and --text (repeatable; 3 or more pairs), or a --config "
            "grid file"
        )
    return PredictivityConfig(**cfg_values)


def kept(out: Path, config: PredictivityConfig) -> str:
    """What an interrupted run leaves in ``out`` (for the Ctrl-C message)."""
    from alignkit.evaluation.predictivity.stages import finished_pairs

    parts = []
    if (out / "scores.csv").is_file():
        parts.append("scores.csv")
    done = len(finished_pairs(out, config)) if out.is_dir() else 0
    parts.append(f"{done} of {len(config.pairs)} pairs trained and evaluated")
    return ", ".join(parts)


def predictivity(
    cfg_values: dict, out: Path, config: Path | None, overwrite: bool, cache_dir: Any, quiet: bool
) -> None:
    """``alignkit predictivity`` (see the module docstring)."""
    from alignkit.cli._app import silence_third_party_progress
    from alignkit.evaluation.predictivity import printable, run_predictivity, verdicts
    from alignkit.runs.folder import check_writable

    if quiet:
        silence_third_party_progress()
        logging.getLogger("alignkit").setLevel(logging.ERROR)  # put back by the command
    cfg = grid_config(cfg_values, config, cache_dir)
    check_writable(out, "the experiment")
    try:
        result = run_predictivity(
            cfg, out, progress=not quiet, overwrite=overwrite,
            on_plan=lambda plan: typer.echo(plan.describe()),
        )  # fmt: skip
    except KeyboardInterrupt:
        typer.secho(
            f"interrupted: kept {kept(out, cfg)} in {out}; run the same command again to resume "
            "from there",
            err=True,
        )
        raise typer.Exit(130) from None
    except OSError as exc:
        raise AlignkitError(
            f"could not write into {out}: {exc.strerror or exc} ({getattr(exc, 'filename', '')}); "
            "finished stages are kept: free space or fix the folder, then run again to resume"
        ) from None
    assert result is not None
    typer.echo("")
    for sentence in verdicts(result.correlations, cfg):
        typer.echo(sentence[0].upper() + sentence[1:] + ".")
    raw_rows = result.correlations[result.correlations["kind"] == "raw"]
    table, notes = printable(raw_rows, COLUMNS)
    typer.echo("")
    typer.echo(table.round(3).to_string(index=False))
    typer.echo(f"(raw-score rows; the permutation-null z rows are in {out / 'correlations.csv'})")
    for note in dict.fromkeys(notes):
        typer.echo(note)
    if result.decisions is not None:  # seed noise measured: which pair to train, decided right?
        decided = result.decisions[result.decisions["metric"] == cfg.metrics[0]]
        typer.echo("")
        typer.echo(decided.round(3).to_string(index=False))
        typer.echo(
            "(decision accuracy of the first metric; every metric and its z in decisions.csv)"
        )
    written = ["correlations.csv", "pairs.csv", "seeds.csv", "noise.csv"]
    written += ["decisions.csv"] * (result.decisions is not None) + ["predictivity.png"]
    typer.echo(f"wrote {', '.join(str(out / name) for name in written)}")
