"""``alignkit list-encoders``: what alignkit knows by name, and what loads offline right now."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from alignkit.cli._app import app


def _plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@app.command("list-encoders")
def list_encoders_command(
    pattern: Annotated[
        str,
        typer.Argument(
            help="filter on the spec: a word matches anywhere (minilm), or shell-style ('onnx:*')"
        ),
    ] = "*",
    offline: Annotated[
        bool, typer.Option("--offline", help="only encoders that load with no network")
    ] = False,
    modality: Annotated[str, typer.Option(help="image, text, or all")] = "all",
) -> None:
    """List encoder specs: modality, width, whether they load offline now, and how to install."""
    from alignkit.encoders import list_encoders
    from alignkit.errors import AlignkitError

    if modality not in ("image", "text", "all"):
        raise AlignkitError(f"--modality must be image, text or all: got {modality!r}")
    infos = [
        i for i in list_encoders(pattern, offline_only=offline) if modality in ("all", i.modality)
    ]
    header = ["spec", "modality", "dim", "offline", "install / note"]
    rows = [
        [
            i.spec,
            i.modality,
            str(i.dim or "?"),
            "yes" if i.offline else "no",
            i.install_hint or i.description,
        ]
        for i in infos
    ]
    n_image = sum(
        1 for i in infos if i.offline and i.modality == "image" and "control" not in i.tags
    )
    n_text = sum(1 for i in infos if i.offline and i.modality == "text" and "control" not in i.tags)
    footer = (
        f"{len(infos)} encoders; offline now: {n_image} vision, {n_text} text "
        "(controls not counted)"
    )
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*header, title="alignkit encoders")
        for row in rows:
            table.add_row(
                *row[:3], "[green]yes[/green]" if row[3] == "yes" else "[red]no[/red]", row[4]
            )
        console = Console()
        console.print(table)
        console.print(footer)
    else:
        typer.echo(_plain_table(header, rows))
        typer.echo(footer)
