"""The command-line words that are not config fields, spelled once for every command.

``--out/-o`` (the run folder), ``--config/-c`` (a TOML or YAML file with the config fields'
keys), ``--overwrite`` and ``--quiet/-q`` mean the same on every command that has them. A command
that needs to say more (what its folder holds) passes its own ``help`` through :func:`out_option`
and friends; the flag and the short flag stay fixed (and the metavar, but for a command whose
``--out`` is one FILE). The config fields shared by
several commands are in :mod:`alignkit.vocabulary`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def out_option(help: str = "Run folder for this command's results.", metavar: str = "DIR") -> Any:
    """``--out/-o``; ``metavar`` FILE where the command writes one file (``extract``)."""
    return typer.Option("--out", "-o", metavar=metavar, help=help)


def config_option(
    help: str = "Settings file, .toml or .yaml, with the options' names as keys; "
    "options given on the command line override it. Unknown keys are an error.",
) -> Any:
    return typer.Option("--config", "-c", metavar="FILE", help=help)


def overwrite_option(
    help: str = "Replace an earlier run in --out (the new results are swapped "
    "in only once the new run has written everything).",
) -> Any:
    return typer.Option("--overwrite", help=help)


QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars or status lines; still prints the results and the folder.",
    ),
]
ConfigOpt = Annotated[Path | None, config_option()]
OverwriteOpt = Annotated[bool, overwrite_option()]

__all__ = [
    "ConfigOpt",
    "OverwriteOpt",
    "QuietOpt",
    "config_option",
    "out_option",
    "overwrite_option",
]
