"""``alignkit extract`` and ``alignkit cache list|clear``: features into the cache, and upkeep."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from alignkit.cli import app, silence_third_party_progress

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="feature cache folder [default: $ALIGNKIT_CACHE_DIR/features]"
    ),
]

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


@app.command("extract")
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
    cache_dir: CacheDir = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="compute without reading or writing the cache")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="also copy the features to this .safetensors file (one encoder)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Extract features of a probe set with one or more encoders into the feature cache.

    A second run with the same encoder, options and probe returns from the cache without model
    work; an interrupted run (Ctrl-C, a killed process) resumes from its last saved shard. Under
    torchrun the rows are split across ranks. Example:

        alignkit extract --encoder st:sentence-transformers/all-MiniLM-L6-v2 --probe flickr8k:test
    """
    from alignkit.encoders import create_encoder
    from alignkit.errors import AlignkitError
    from alignkit.features import FeatureCache, extract_features, feature_key
    from alignkit.features._distributed import local_cuda_device
    from alignkit.features.extract import fit_to_probe
    from alignkit.probes import load_probe

    # under torchrun every rank runs this command; only rank 0 reports
    say = typer.echo if os.environ.get("RANK", "0") == "0" else (lambda *args, **kwargs: None)
    if quiet:
        silence_third_party_progress()
    if out is not None and len(encoder) != 1:
        raise AlignkitError(f"--out takes the features of one encoder: got {len(encoder)} encoders")
    probe_set = load_probe(
        probe, n=n, split=split, seed=seed, skip_bad=skip_bad, data_dir=data_dir, progress=not quiet
    )
    say(f"probe {probe_set.name}: {len(probe_set)} rows, fingerprint {probe_set.fingerprint}")
    store = None if no_cache else FeatureCache(cache_dir)
    for spec in encoder:
        started = time.perf_counter()
        gpu = local_cuda_device() if device == "auto" else None  # torchrun: this rank's GPU
        enc = create_encoder(spec, device=gpu or device)
        loaded = time.perf_counter()
        fit_to_probe(enc, probe_set)  # tfidf: has a weights identity (and a key) once fitted
        key = feature_key(enc, probe_set, caption_policy, seed)
        cached = store is not None and key in store
        fs = extract_features(
            enc,
            probe_set,
            batch_size=batch_size,
            num_workers=workers,
            caption_policy=caption_policy,
            seed=seed,
            cache=store if store else False,
            progress=not quiet,
            distributed=True,  # under torchrun: split the rows (a group only for this call)
        )
        took = time.perf_counter() - loaded
        where = f"cache {store.path(key)}" if store else "not cached"
        how = "from the cache" if cached else "extracted"
        say(
            f"{spec}: {fs.n} rows x {fs.dim}{f' x {fs.n_layers} layers' if fs.layered else ''} "
            f"{how} in {took:.2f} s (model load {loaded - started:.1f} s; {where})"
        )
        if out is not None and os.environ.get("RANK", "0") == "0":
            say(f"wrote {fs.save(out)}")


@cache_app.command("list")
def cache_list_command(
    pattern: Annotated[
        str, typer.Argument(help="glob on encoder spec, probe name or key (prefix)")
    ] = "*",
    cache_dir: CacheDir = None,
) -> None:
    """List complete cache entries, newest first: key, encoder, probe, rows, dim, size, created."""
    from alignkit.features import FeatureCache

    store = FeatureCache(cache_dir)
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
    cache_dir: CacheDir = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete the cache entries that match PATTERN (and, for '*', unfinished extractions)."""
    from alignkit.features import FeatureCache

    store = FeatureCache(cache_dir)
    entries = store.list(pattern)
    if not entries and pattern != "*":
        typer.echo(f"no cache entries match {pattern!r} in {store.root}")
        return
    if not yes:
        typer.confirm(f"delete {len(entries)} cache entries from {store.root}?", abort=True)
    removed = store.clear(pattern)
    typer.echo(f"removed {removed} entries from {store.root}")
