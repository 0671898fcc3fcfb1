"""The ``alignkit`` command: a thin typer layer over the library.

Each command group lives in its own module and registers itself on :data:`app` (defined in
:mod:`alignkit.cli._app`, so that the command modules import it without importing this package
back). Library errors
(:class:`alignkit.errors.AlignkitError`) become one line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

import typer

from alignkit.cli._app import app, silence_third_party_progress  # noqa: F401 (re-exported)

# Command modules register themselves on `app` at import.
# In this order, the workflow's, `alignkit --help` lists them.
# isort: off
from alignkit.cli import encoders as _encoders  # noqa: E402,F401
from alignkit.cli import extract as _extract  # noqa: E402,F401
from alignkit.cli import rank as _rank  # noqa: E402,F401
from alignkit.cli import train as _train  # noqa: E402,F401
from alignkit.cli import evaluate as _evaluate  # noqa: E402,F401

# isort: on
from alignkit.errors import AlignkitError


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Library errors become ``error: <one line>`` on stderr and exit 1.

    Tests call ``main([...])`` and read ``SystemExit.code`` and stderr (pytest's ``capsys``).
    Called without ``argv`` (the ``alignkit`` command, ``python -m alignkit``), the process ends
    through :func:`_exit_now` instead of raising ``SystemExit``.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code: int | str | None = 0
    try:
        with _old_names_as_notes():
            app(args=argv, prog_name="alignkit")
    except SystemExit as exc:  # click ends every command this way
        code = exc.code
    except AlignkitError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        code = 1
    except KeyboardInterrupt:
        typer.secho(
            "interrupted: finished work is kept in the cache; run again to resume", err=True
        )
        code = 130
    if argv is None:
        _exit_now(code)
    sys.exit(code)


@contextlib.contextmanager
def _old_names_as_notes() -> Iterator[None]:
    """An old spelling that still works (a deprecated config-file key) is a ``note:`` line on
    stderr, each time, not a Python warning with a file and line number."""
    from alignkit.options import DeprecatedName

    with warnings.catch_warnings():
        warnings.simplefilter("always", DeprecatedName)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if issubclass(category, DeprecatedName):
                typer.secho(f"note: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show  # put back by catch_warnings
        yield


def _exit_now(code: int | str | None) -> None:
    """End the command's process as ``sys.exit(code)`` would, but without the interpreter's
    teardown of every imported module: after torch, pandas, matplotlib and scipy that teardown
    took 1.4-2.6 s on the loaded 2-core machine, after the command's work was done. Nothing of
    alignkit's needs it (its files are closed and written atomically by then): the exit
    handlers still run (logging, temporary folders, multiprocessing) and the streams are
    flushed. While a non-daemon thread is still running, or where the interpreter has no
    ``atexit._run_exitfuncs``, this is the ordinary ``sys.exit``."""
    import atexit
    import os
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    main_thread = threading.main_thread()
    busy = [t for t in threading.enumerate() if t is not main_thread and not t.daemon]
    if run_exit_handlers is None or busy:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`alignkit ... | head`) or stream
            pass
    os._exit(status)
