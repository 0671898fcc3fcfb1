"""``alignkit evaluate`` (zero-shot, retrieval, human judgements of trained runs) and
``alignkit predictivity`` (did the ranking predict the trained result?)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated

import typer

from alignkit.cli._app import app
from alignkit.cli._cache_option import OldCacheDirOpt
from alignkit.cli._common import ConfigOpt, QuietOpt, config_option, out_option, overwrite_option
from alignkit.cli._options import cli_words, config_options
from alignkit.errors import AlignkitError
from alignkit.evaluation.config import EvaluateConfig
from alignkit.evaluation.predictivity.config import PredictivityConfig


def _keeps_log_level(command):
    """Put the ``alignkit`` logger's level back when ``command`` returns or raises, so that
    ``--quiet`` lasts for the command only (tests and notebooks call commands in-process)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        log = logging.getLogger("alignkit")
        level = log.level
        try:
            return command(*args, **kwargs)
        finally:
            log.setLevel(level)

    return wrapper


_EVALUATE_HELP = (
    "Zero-shot classification, retrieval and human-judgement correlation of trained pairs."
    "\n\nMerges its results into metrics.json (flat keys such as "
    "retrieval/flickr8k:test/image_to_text_R@5, each with n, the chance level, when and on which "
    "probe fingerprint it was computed; recalls as fractions) in each --run folder, or in --out, "
    "and prints a table (one column per run). Raw features come from the feature cache. Rows the "
    "run was trained or validated on are refused unless --allow-overlap."
)
RunOpt = Annotated[
    list[Path],
    typer.Option(
        "--run", "-r", metavar="DIR", help="A training run folder (repeatable: compares runs)."
    ),
]


@app.command("evaluate", help=_EVALUATE_HELP)
@config_options(EvaluateConfig)
@_keeps_log_level
def evaluate_command(
    cfg_values: dict,
    run: RunOpt,
    config: ConfigOpt = None,
    out: Annotated[
        Path | None,
        out_option("Write metrics.json (and comparison.csv) here instead of into each run folder."),
    ] = None,
    cache_dir: OldCacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The options of EvaluateConfig (alignkit/evaluation/config.py) come from @config_options."""
    from alignkit.cli._evaluate import evaluate

    try:
        evaluate(cfg_values, run, config, out, cache_dir, quiet)
    except AlignkitError as exc:  # the library names Python arguments; say them as flags
        raise AlignkitError(cli_words(str(exc), EvaluateConfig)) from exc


_PREDICTIVITY_HELP = (
    "Did the ranking predict the result? Score every pair of a grid, train each with one "
    "recipe, evaluate, and report Spearman/Kendall (bootstrap intervals over pairs) and "
    "leave-one-encoder-out rho of every pre-training metric against every result.\n\n"
    "The grid comes from --vision/--text and the options below, or a --config file (TOML, YAML "
    "or JSON, the options' names as keys, the recipe as a table named train; see "
    "docs/evaluation.md); options given on the command line override it. --out resumes: "
    "finished stages and pairs are reused."
)
GridOpt = Annotated[
    Path | None,
    config_option(
        "Grid file, .toml/.yaml/.json, with the options' names as keys (the recipe as a table "
        "named train). Unknown keys are an error."
    ),
]
OldGridOpt = Annotated[
    Path | None, typer.Option("--grid", hidden=True, help="deprecated spelling of --config")
]


@app.command("predictivity", help=_PREDICTIVITY_HELP)
@config_options(PredictivityConfig)
@_keeps_log_level
def predictivity_command(
    cfg_values: dict,
    out: Annotated[Path, out_option("Experiment folder (resumes when it holds this experiment).")],
    config: GridOpt = None,
    grid: OldGridOpt = None,
    overwrite: Annotated[
        bool,
        overwrite_option(
            "Start over in a folder that holds an experiment with another recipe (its results "
            "are deleted first); without it such a folder is refused."
        ),
    ] = False,
    cache_dir: OldCacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """``alignkit predictivity``: the CLI over :func:`run_predictivity`."""
    from alignkit.cli._predictivity import predictivity

    if grid is not None:
        if config is not None:
            raise AlignkitError("give the grid file once, as --config FILE: got both --grid")
        typer.secho("note: --grid is deprecated; use --config FILE", err=True)
        config = grid
    try:
        predictivity(cfg_values, out, config, overwrite, cache_dir, quiet)
    except AlignkitError as exc:  # the library names Python arguments; say them as flags
        words = cli_words(str(exc), PredictivityConfig, {"overwrite": "--overwrite"})
        raise AlignkitError(words) from exc
