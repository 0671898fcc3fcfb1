"""``alignkit extract`` and ``alignkit cache list|clear``: features into the cache, and upkeep."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from alignkit._threads import ENV as THREADS_ENV
from alignkit.cli import app, silence_third_party_progress
from alignkit.cli._cache_option import CacheOpt, OldCacheDirOpt, OldNoCacheOpt, cache_setting

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
    from alignkit.errors import AlignkitError
    from alignkit.features import FeatureCache

    setting = cache_setting(cache, cache_dir=cache_dir)
    if setting is False:
        raise AlignkitError(f"cache {command} needs a cache: got --cache off; pass --cache DIR")
    return FeatureCache.at(setting)


@app.command(
    "extract",
    help="Extract features of a probe set with one or more encoders into the feature cache.\n\n"
    "A second run with the same encoder, options and probe returns from the cache without model "
    "work; an interrupted run (Ctrl-C, a killed process) resumes from its last saved shard. "
    "Under torchrun the rows are split across ranks.\n\n"
    "Example: alignkit extract --encoder st:sentence-transformers/all-MiniLM-L6-v2 "
    "--probe flickr8k:test",
)
def extract_command(
    encoder: Annotated[
        list[str],
        typer.Option(
            "--encoder", "-e", help="encoder spec, repeatable (see `alignkit list-encoders`)"
        ),
    ],
    probe: Annotated[
        str,
        typer.Option(
            "--probe", "-p", help="probe spec: a name (flickr8k:test, synthetic, ...) or a path"
        ),
    ] = "synthetic",
    n: Annotated[
        int | None,
        typer.Option(
            "--n", "-n", help="seeded, stable subsample of this many rows (under torchrun: -n)"
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="keep only this split (train, dev, test)")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="seed of the subsample and of --caption-policy random")
    ] = 0,
    caption_policy: Annotated[
        str, typer.Option(help="text encoders: first, random, or mean (average over all captions)")
    ] = "first",
    batch_size: Annotated[int, typer.Option(help="rows per forward pass")] = 64,
    workers: Annotated[
        int | None,
        typer.Option(
            help="image decoding workers [default: 1 on <= 2 cores, else 2; GPU: up to 8]"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    skip_bad: Annotated[bool, typer.Option(help="drop unreadable rows instead of failing")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="where named probes live [default: $ALIGNKIT_DATA_DIR]")
    ] = None,
    cache: CacheOpt = None,
    cache_dir: OldCacheDirOpt = None,
    no_cache: OldNoCacheOpt = False,
    out: Annotated[
        Path | None,
        typer.Option(help="also copy the features to this .safetensors file (one encoder)"),
    ] = None,
    checkpoint_every: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="save a resumable shard at the first batch boundary after this many seconds "
            "(besides every 8 batches), so Ctrl-C keeps the work done",
        ),
    ] = 60.0,
    threads: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="CPU threads for torch [default: by work size and the CPUs free now; "
            "$ALIGNKIT_THREADS]",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """``alignkit extract`` (its help is the decorator's)."""
    from alignkit.errors import AlignkitError
    from alignkit.features import FeatureCache, cached_features, extract_features
    from alignkit.probes import load_probe

    # under torchrun every rank runs this command; only rank 0 reports
    say = typer.echo if os.environ.get("RANK", "0") == "0" else (lambda *args, **kwargs: None)
    if quiet:
        silence_third_party_progress()
    if out is not None and len(encoder) != 1:
        raise AlignkitError(f"--out takes the features of one encoder: got {len(encoder)} encoders")
    setting = cache_setting(cache, cache_dir=cache_dir, no_cache=no_cache)
    if threads is not None:
        if threads < 1:
            raise AlignkitError(f"--threads takes a positive number: got {threads}")
        os.environ[THREADS_ENV] = str(threads)  # the library's choice defers to it
    probe_set = load_probe(
        probe, n=n, split=split, seed=seed, skip_bad=skip_bad, data_dir=data_dir, progress=not quiet
    )
    say(f"probe {probe_set.name}: {len(probe_set)} rows, fingerprint {probe_set.fingerprint}")
    store = None if setting is False else FeatureCache.at(setting, shard_seconds=checkpoint_every)
    common = {"caption_policy": caption_policy, "seed": seed, "device": device}
    finished: list[str] = []
    try:
        for spec in encoder:
            started = time.perf_counter()
            since = datetime.now(timezone.utc).replace(microsecond=0)
            fs = cached_features(spec, probe_set, cache=store, **common) if store else None
            how = "from the cache (encoder not built)"
            if fs is None:
                fs = extract_features(
                    spec,
                    probe_set,
                    batch_size=batch_size,
                    num_workers=workers,
                    cache=store if store else False,
                    progress=not quiet,
                    distributed=True,  # under torchrun: split the rows (a group only for this call)
                    **common,
                )
                created = datetime.fromisoformat(str(fs.provenance.get("created")))
                how = "from the cache" if store and created < since else "extracted"
            took = time.perf_counter() - started
            key = str(fs.provenance.get("cache_key", ""))
            where = f"cache {store.path(key)}" if store and key else "not cached"
            layers = f" x {fs.n_layers} layers" if fs.layered else ""
            say(f"{spec}: {fs.n} rows x {fs.dim}{layers} {how} in {took:.2f} s ({where})")
            finished.append(spec)
            if out is not None and os.environ.get("RANK", "0") == "0":
                say(f"wrote {fs.save(out)}")
    except KeyboardInterrupt:
        # what the interrupted encoder kept is logged by the library; say what is complete
        done = ", ".join(finished) if finished else "none"
        resume = "; run the same command again to resume" if store else ""
        typer.secho(
            f"interrupted: {len(finished)} of {len(encoder)} encoders finished ({done}){resume}",
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
