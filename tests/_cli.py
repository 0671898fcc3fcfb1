"""Run the ``alignkit`` command in this process, as the CLI tests do."""

from __future__ import annotations

import pytest

from alignkit.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``alignkit ARGV`` through :func:`alignkit.cli.main`: (exit status, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
