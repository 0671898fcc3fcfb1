"""The ``alignkit`` command: a thin typer layer over the library.

Each command group lives in its own module and registers itself on :data:`app`. Library errors
(:class:`alignkit.errors.AlignkitError`) become one line on stderr and exit status 1.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from alignkit.errors import AlignkitError

app = typer.Typer(
    name="alignkit",
    help="Rank frozen vision x text encoder pairs by how aligned they already are, "
    "then train and evaluate the projectors that align them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Rank frozen vision x text encoder pairs, then train and evaluate their projectors."""
    # A callback keeps `alignkit` a command group even while only one command is registered.


def silence_third_party_progress() -> None:
    """``--quiet`` means no bars at all: also turn off transformers' and the hub's own
    ("Loading weights", download bars), which do not go through alignkit's ``progress=``."""
    for module, function in (
        ("transformers.utils.logging", "disable_progress_bar"),
        ("huggingface_hub.utils", "disable_progress_bars"),
    ):
        try:
            getattr(importlib.import_module(module), function)()
        except (ImportError, AttributeError):  # an older or absent library has no bar to silence
            pass


# Command modules register themselves on `app` at import.
from alignkit.cli import encoders as _encoders  # noqa: E402,F401
from alignkit.cli import evaluate as _evaluate  # noqa: E402,F401
from alignkit.cli import extract as _extract  # noqa: E402,F401
from alignkit.cli import rank as _rank  # noqa: E402,F401
from alignkit.cli import train as _train  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Library errors become ``error: <one line>`` on stderr and exit 1.

    Tests call ``main([...])`` and read ``SystemExit.code`` and stderr (pytest's ``capsys``).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, prog_name="alignkit")
    except AlignkitError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho(
            "interrupted: finished work is kept in the cache; run again to resume", err=True
        )
        sys.exit(130)
