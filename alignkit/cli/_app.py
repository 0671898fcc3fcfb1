"""The typer app every command registers on, and what all commands share at run time."""

from __future__ import annotations

import importlib

import typer

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
