"""The one ``--cache DIR|off`` option every command that reads or writes features shares.

``DIR`` names the cache ROOT, exactly like ``$ALIGNKIT_CACHE_DIR``: feature entries live under
``DIR/features``. A features folder given in its place is recognised (see
:func:`alignkit.features.cache.locate_cache`). ``off`` computes without reading or writing the
cache. The older spellings ``--cache-dir DIR`` and ``--no-cache`` still work, hidden, with a note.

A command declares::

    def command(..., cache: CacheOpt = None, cache_dir: OldCacheDirOpt = None,
                no_cache: OldNoCacheOpt = False):
        setting = cache_setting(cache, cache_dir=cache_dir, no_cache=no_cache)
        # None -> the default cache; False -> off; a Path -> that cache root
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignkit.cli._options import shared_option
from alignkit.errors import AlignkitError

OFF = ("off", "no", "none", "false", "0")

CacheOpt = Annotated[str | None, shared_option("cache")]  # the shared --cache DIR|off
OldCacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", hidden=True, help="deprecated spelling of --cache DIR"),
]
OldNoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", hidden=True, help="deprecated spelling of --cache off")
]


def cache_setting(
    cache: str | None, *, cache_dir: Path | None = None, no_cache: bool = False
) -> Path | bool | None:
    """``--cache`` (and its deprecated spellings) -> None (the default cache), False (off) or the
    cache root as given (resolve it with :func:`alignkit.features.cache.locate_cache`)."""
    given = [name for name, v in (("--cache", cache), ("--cache-dir", cache_dir)) if v is not None]
    if no_cache:
        given.append("--no-cache")
    if len(given) > 1:
        raise AlignkitError(f"give the cache once, as --cache DIR|off: got {' and '.join(given)}")
    if cache_dir is not None:
        typer.secho("note: --cache-dir is deprecated; use --cache DIR", err=True)
        return cache_dir
    if no_cache:
        typer.secho("note: --no-cache is deprecated; use --cache off", err=True)
        return False
    if cache is None:
        return None
    if cache.strip().lower() in OFF:
        return False
    if not cache.strip():
        raise AlignkitError("--cache takes a folder or 'off': got an empty string")
    return Path(cache)


__all__ = [
    "OFF",
    "CacheOpt",
    "OldCacheDirOpt",
    "OldNoCacheOpt",
    "cache_setting",
    "with_old_cache_dir",
]


def with_old_cache_dir(cfg_values: dict, cache_dir: Path | None) -> dict:
    """A config command's option values with the deprecated ``--cache-dir DIR`` folded in as
    ``cache`` (with a note); given beside ``--cache`` it is an error."""
    if cache_dir is None:
        return cfg_values
    if "cache" in cfg_values:
        raise AlignkitError("give the cache once, as --cache DIR|off: got --cache and --cache-dir")
    typer.secho("note: --cache-dir is deprecated; use --cache DIR", err=True)
    return {**cfg_values, "cache": str(cache_dir)}
