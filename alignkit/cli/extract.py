"""``alignkit extract`` and ``alignkit cache list|clear``: features into the cache, and upkeep."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from alignkit.cli._app import app, silence_third_party_progress
from alignkit.cli._cache_option import CacheOpt, OldCacheDirOpt, OldNoCacheOpt, cache_setting
from alignkit.cli._common import ConfigOpt, QuietOpt, out_option
from alignkit.cli._options import config_options, in_cli_words
from alignkit.errors import AlignkitError
from alignkit.features.config import ExtractConfig, check, load

if TYPE_CHECKING:
    from alignkit.features import FeatureCache

cache_app = typer.Typer(
    help="Inspect and prune the feature cache (safetensors + JSON sidecar per entry, keyed by a "
    "hash of encoder, weights, options, caption policy and probe fingerprint).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""  # unreachable


def _store(cache: str | None, cache_dir: Path | None, command: str) -> FeatureCache:
    from alignkit.features import FeatureCache

    setting = cache_setting(cache, cache_dir=cache_dir)
    if setting is False:
        raise AlignkitError(f"cache {command} needs a cache: got --cache off; pass --cache DIR")
    return FeatureCache.at(setting)


_EXTRACT_HELP = (
    "Extract features of a probe set with one or more encoders into the feature cache.\n\n"
    "A second run with the same encoder, options and probe returns from the cache without model "
    "work; an interrupted run (Ctrl-C, a killed process) resumes from its last saved shard. "
    "Under torchrun the rows are split across ranks. Options can also come from a --config file "
    "(TOML or YAML, the options' names as keys); the command line wins.\n\n"
    "Example: alignkit extract --encoder st:sentence-transformers/all-MiniLM-L6-v2 "
    "--probe flickr8k:test"
)
OutFileOpt = Annotated[
    Path | None,
    out_option("Also copy the features to this .safetensors file (one encoder).", "FILE"),
]


@app.command("extract", help=_EXTRACT_HELP)
@config_options(ExtractConfig)
def extract_command(
    cfg_values: dict,
    config: ConfigOpt = None,
    out: OutFileOpt = None,
    cache_dir: OldCacheDirOpt = None,
    no_cache: OldNoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The options of ExtractConfig (alignkit/features/config.py) are added by @config_options."""
    from alignkit.features.config import extract
    from alignkit.options import load_config

    # under torchrun every rank runs this command; only rank 0 reports
    rank0 = os.environ.get("RANK", "0") == "0"
    say = typer.echo if rank0 else (lambda *args, **kwargs: None)
    if quiet:
        silence_third_party_progress()
    with in_cli_words(ExtractConfig):
        base = load_config(config, ExtractConfig) if config is not None else ExtractConfig()
        cfg = base.replace(**{**cfg_values, **_old_cache(cfg_values, cache_dir, no_cache)})
        if out is not None and len(cfg.encoders) != 1:
            raise AlignkitError(
                f"--out takes the features of one encoder: got {len(cfg.encoders)} encoders"
            )
        check(cfg)  # settings and encoder specs, before the probe's images are read
        probe_set = load(cfg, progress=not quiet)
        say(f"probe {probe_set.name}: {len(probe_set)} rows, fingerprint {probe_set.fingerprint}")
        finished: list[str] = []
        try:
            for done in extract(cfg, probe_set, progress=not quiet):
                fs = done.features
                layers = f" x {fs.n_layers} layers" if fs.layered else ""
                say(
                    f"{done.spec}: {fs.n} rows x {fs.dim}{layers} {done.how} in "
                    f"{done.seconds:.2f} s ({done.where})" + _skipped(fs)
                )
                finished.append(done.spec)
                if out is not None and rank0:
                    say(f"wrote {fs.save(out)}")
        except KeyboardInterrupt:
            # what the interrupted encoder kept is logged by the library; say what is complete
            _interrupted(finished, cfg)


def _skipped(fs: Any) -> str:
    """``; skipped N rows ...`` for the rows whose images extraction skipped (--skip-bad)."""
    from alignkit._words import counted
    from alignkit.features.skipped import FIRST, SKIPPED

    rows = fs.provenance.get(SKIPPED) or []
    if not rows:
        return ""
    first = ", ".join(repr(d["id"]) for d in rows[:FIRST])
    more = ", ..." if len(rows) > FIRST else ""
    return f"; skipped {counted(len(rows), 'row')} whose image cannot be read ({first}{more})"


def _old_cache(cfg_values: dict, cache_dir: Path | None, no_cache: bool) -> dict:
    """``--cache-dir DIR`` / ``--no-cache`` (deprecated, noted) as a ``cache`` value."""
    if cache_dir is None and not no_cache:
        return {}
    given = cfg_values.get("cache")
    setting = cache_setting(
        None if given is None else "off" if given is False else str(given),
        cache_dir=cache_dir,
        no_cache=no_cache,
    )
    return {"cache": False if setting is False else str(setting)}


def _interrupted(finished: list[str], cfg: ExtractConfig) -> None:
    done = ", ".join(finished) if finished else "none"
    resume = "; run the same command again to resume" if cfg.cache is not False else ""
    typer.secho(
        f"interrupted: {len(finished)} of {len(cfg.encoders)} encoders finished ({done}){resume}",
        err=True,
    )
    raise typer.Exit(130) from None


@cache_app.command("list")
def cache_list_command(
    pattern: Annotated[
        str, typer.Argument(help="glob on encoder spec, probe name or key (prefix)")
    ] = "*",
    cache: CacheOpt = None,
    cache_dir: OldCacheDirOpt = None,
) -> None:
    """List complete cache entries, newest first: key, encoder, probe, rows, dim, size, created."""
    store = _store(cache, cache_dir, "list")
    entries = store.list(pattern)
    if not entries:
        typer.echo(f"no cache entries match {pattern!r} in {store.root}")
        return
    header = ["key", "encoder", "probe", "n", "dim", "size", "created"]
    rows = [
        [
            e.key[:12],
            e.encoder,
            e.probe,
            str(e.n),
            str(e.dim) + (f" x{e.shape[0]}L" if len(e.shape) == 3 else ""),
            _size(e.size),
            e.created,
        ]
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    total = sum(e.size for e in entries)
    typer.echo(f"{len(entries)} entries, {_size(total)} in {store.root}")


@cache_app.command("clear")
def cache_clear_command(
    pattern: Annotated[
        str,
        typer.Argument(help="glob on encoder spec, probe name or key (prefix); '*' = everything"),
    ] = "*",
    cache: CacheOpt = None,
    cache_dir: OldCacheDirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete the cache entries that match PATTERN (and, for '*', unfinished extractions)."""
    store = _store(cache, cache_dir, "clear")
    entries = store.list(pattern)
    if not entries and pattern != "*":
        typer.echo(f"no cache entries match {pattern!r} in {store.root}")
        return
    if not yes:
        typer.confirm(f"delete {len(entries)} cache entries from {store.root}?", abort=True)
    removed = store.clear(pattern)
    typer.echo(f"removed {removed} entries from {store.root}")
