"""`alignkit rank-encoders`: score and rank every vision x text encoder pair on a probe set."""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

from alignkit.cli import app, silence_third_party_progress

_HELP = (
    "Score every vision x text encoder pair on paired images and captions, rank the pairs, and "
    "write the tables and figures to --out.\n\n"
    "With no arguments: the offline-small encoder set (with its random-initialised controls) on "
    "flickr8k:test (500 rows) when ALIGNKIT_DATA_DIR holds Flickr8k, else on the built-in "
    "synthetic probe. Features are cached (ALIGNKIT_CACHE_DIR): a second run reads them back "
    "instead of running the models.\n\n"
    "Encoders come from --vision/--text, --set, or a --config file (TOML or YAML, same keys as "
    'the options, e.g. `vision = ["torchvision:mobilenet_v2"]`, `permutations = 200`); options '
    "given on the command line override the file."
)

VisionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--vision",
        "-v",
        metavar="SPEC",
        help="Vision encoder spec, repeatable (e.g. torchvision:mobilenet_v2). "
        "See `alignkit encoders`.",
    ),
]
TextOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--text",
        "-t",
        metavar="SPEC",
        help="Text encoder spec, repeatable (e.g. st:sentence-transformers/all-MiniLM-L6-v2).",
    ),
]
SetOpt = Annotated[
    str | None,
    typer.Option(
        "--set",
        metavar="NAME",
        help="Named encoder set (offline-small, offline-all): its vision, text and control "
        "encoders are added to --vision/--text. Default offline-small when no encoder is given.",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Run config, .toml or .yaml, with the options' names as keys (set, vision, text, "
        "probe, n, "
        "metrics, permutations, ...); encoders may be tables {spec = ..., pooling = ...}. "
        "Unknown keys are an error.",
    ),
]
ProbeOpt = Annotated[
    str | None,
    typer.Option(
        "--probe",
        "-p",
        metavar="SPEC",
        help="Probe set: flickr8k[:train|dev|test], imagenet-samples, coco-val2017, synthetic, "
        "or a "
        "manifest path. Default flickr8k:test when ALIGNKIT_DATA_DIR holds it, else synthetic.",
    ),
]
NOpt = Annotated[
    int | None,
    typer.Option(
        "--n",
        metavar="ROWS",
        help="Probe rows: a seeded, stable subsample (0 = all rows). Default 500.",
    ),
]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        "-m",
        metavar="NAME",
        help="Metric, repeatable; the first orders the ranking. Choices: linear_cka_unbiased, "
        "linear_cka (biased, as in the reference code), rbf_cka, mutual_knn, cknna, svcca. "
        "Default: linear_cka_unbiased, linear_cka, mutual_knn.",
    ),
]
PermOpt = Annotated[
    int | None,
    typer.Option(
        "--permutations",
        metavar="B",
        help="Permutations of the image-caption pairing for the null (null mean, z, p). 0 = none. "
        "Default 100 (smallest possible p = 1/(B+1)).",
    ),
]
SubOpt = Annotated[
    int | None,
    typer.Option(
        "--subsamples",
        metavar="S",
        help="Row subsamples (without replacement) for the score intervals. 0 = none. Default 10.",
    ),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers",
        metavar="last|all",
        help="'all': also score every vision layer x text layer (first metric), draw a layer x "
        "layer "
        "heatmap per pair and give the best layer pair with a p-value corrected for picking the "
        "maximum. Default last.",
    ),
]
KOpt = Annotated[
    int | None,
    typer.Option("--k", metavar="K", help="Neighbours for mutual_knn and cknna. Default 10."),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed", help="Seed of the probe subsample, permutations and subsamples. Default 0."
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", metavar="B", help="Extraction batch size. Default 64.")
]
CaptionOpt = Annotated[
    str | None,
    typer.Option(
        "--caption-policy",
        metavar="first|mean|random",
        help="Which caption a text encoder sees for a row with several: the first, the mean of all "
        "caption embeddings (as the reference code), or a seeded random one. Default first.",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="auto (CUDA when available), cpu, cuda, cuda:N. Default auto."),
]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        "--cache",
        metavar="DIR|off",
        help="Feature cache folder, or 'off' to recompute. Default ALIGNKIT_CACHE_DIR "
        "(~/.cache/alignkit).",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        metavar="DIR",
        help="Output folder for scores.csv, ranking.csv, heatmaps, run.json, summary.md. "
        "Default runs/<probe>-<timestamp>.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the results of an earlier run in --out (swapped in only once "
        "the new run has written everything).",
    ),
]
KeepGoingOpt = Annotated[
    bool,
    typer.Option(
        "--keep-going",
        help="Skip encoders that fail to load (reported, and listed in run.json) "
        "instead of stopping.",
    ),
]
TopOpt = Annotated[int, typer.Option("--top", help="Pairs shown in the console table.")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars or status lines; still prints the table and the folder.",
    ),
]


@app.command("rank-encoders", help=_HELP)
def rank_encoders_command(
    vision: VisionOpt = None,
    text: TextOpt = None,
    encoder_set: SetOpt = None,
    config: ConfigOpt = None,
    probe: ProbeOpt = None,
    n: NOpt = None,
    metric: MetricOpt = None,
    permutations: PermOpt = None,
    subsamples: SubOpt = None,
    layers: LayersOpt = None,
    k: KOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchOpt = None,
    caption_policy: CaptionOpt = None,
    device: DeviceOpt = None,
    cache: CacheOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    keep_going: KeepGoingOpt = False,
    top: TopOpt = 10,
    quiet: QuietOpt = False,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window

    from alignkit.config import RankConfig, load_config, merge
    from alignkit.ranking import check_out_dir, default_out_dir, default_probe, rank_encoders

    started = time.perf_counter()
    base = load_config(config) if config is not None else RankConfig()
    cache_value: str | bool | None = None
    if cache is not None:
        cache_value = False if cache.lower() in ("off", "no", "false", "0") else cache
    cfg = merge(
        base,
        vision=tuple(vision or ()),
        text=tuple(text or ()),
        encoder_set=encoder_set,
        probe=probe,
        metrics=tuple(metric or ()),
        permutations=permutations,
        subsamples=subsamples,
        layers=layers,
        k=k,
        seed=seed,
        batch_size=batch_size,
        caption_policy=caption_policy,
        device=device,
        cache=cache_value,
        keep_going=True if keep_going else None,
    )
    if n is not None:
        cfg = cfg.replace(n=None if n == 0 else n)

    probe_spec = cfg.probe or default_probe()
    out_dir = out if out is not None else default_out_dir(probe_spec)
    check_out_dir(out_dir, overwrite=overwrite)  # refuse before any work

    rows = "all rows" if cfg.n is None else f"n={cfg.n}"
    if cfg.probe is None:
        why = (
            "Flickr8k found in ALIGNKIT_DATA_DIR"
            if probe_spec != "synthetic"
            else "built-in synthetic scenes; set ALIGNKIT_DATA_DIR to a folder with flickr8k/ "
            "for real photos"
        )
        typer.echo(f"probe: {probe_spec} ({rows}) [default: {why}]")
    else:
        typer.echo(f"probe: {probe_spec} ({rows})")

    handler = None
    rank_log = logging.getLogger("alignkit.ranking")
    if quiet:
        silence_third_party_progress()
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        rank_log.addHandler(handler)
        rank_log.setLevel(logging.INFO)
        rank_log.propagate = False
    try:
        ranking = rank_encoders(
            config=cfg, progress=not quiet, command=_command(cfg, out_dir, top, probe_spec)
        )
        folder = ranking.save(out_dir, overwrite=overwrite)
    finally:
        if handler is not None:
            rank_log.removeHandler(handler)
            rank_log.propagate = True
            rank_log.setLevel(logging.NOTSET)

    elapsed = time.perf_counter() - started
    md = ranking.metadata
    typer.echo("")
    typer.echo(
        f"{len(ranking.vision)} vision x {len(ranking.text)} text encoders on "
        f"{md['probe']['name']} "
        f"(n={md['probe']['n']}), ranked by {ranking.metric}:"
    )
    typer.echo(ranking.format_table(top))
    if ranking.layers:
        lt = ranking.layer_table().head(top)
        typer.echo("\nbest layer pairs (p corrected for the maximum over layer pairs):")
        typer.echo(
            lt[
                [
                    "vision",
                    "text",
                    "best_vision_layer",
                    "best_text_layer",
                    "best_score",
                    "last_score",
                    "p_max_corrected",
                ]
            ].to_string(index=False, float_format="%.3f")
        )
    for f in md.get("failed_encoders", []):
        typer.secho(f"skipped {f['spec']}: {f['error']}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"\nwrote {folder}  ({elapsed:.1f} s)")


def _command(cfg: object, out: Path, top: int, probe: str) -> list[str]:
    """The run as one explicit command line (every option resolved), for run.json."""
    from alignkit.config import RankConfig

    assert isinstance(cfg, RankConfig)
    argv = ["alignkit", "rank-encoders"]
    if cfg.encoder_set:
        argv += ["--set", cfg.encoder_set]
    for e in cfg.vision:
        argv += ["--vision", e.spec]
    for e in cfg.text:
        argv += ["--text", e.spec]
    argv += ["--probe", probe, "--n", str(cfg.n or 0)]
    for m in cfg.metrics:
        argv += ["--metric", m]
    argv += [
        "--permutations",
        str(cfg.permutations),
        "--subsamples",
        str(cfg.subsamples),
        "--layers",
        cfg.layers,
        "--k",
        str(cfg.k),
        "--seed",
        str(cfg.seed),
        "--batch-size",
        str(cfg.batch_size),
        "--caption-policy",
        cfg.caption_policy,
        "--device",
        cfg.device,
        "--out",
        str(out),
        "--top",
        str(top),
    ]
    if cfg.cache is False:
        argv += ["--cache", "off"]
    elif isinstance(cfg.cache, str):
        argv += ["--cache", cfg.cache]
    if cfg.keep_going:
        argv.append("--keep-going")
    return [shlex.quote(a) if " " in a else a for a in argv]
