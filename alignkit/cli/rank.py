"""`alignkit rank-encoders`: score and rank every vision x text encoder pair on a probe set."""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

from alignkit._words import counted
from alignkit.cli._app import app, silence_third_party_progress
from alignkit.cli._common import OverwriteOpt, QuietOpt, config_option, out_option
from alignkit.cli._options import cli_words, config_options
from alignkit.config import DEFAULT_N, RankConfig
from alignkit.errors import AlignkitError

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

ConfigOpt = Annotated[
    Path | None,
    config_option(
        "Run config, .toml or .yaml, with the options' names as keys (set, vision, text, "
        "probe, n, metrics, permutations, ...); encoders may be tables "
        "{spec = ..., pooling = ...}. Unknown keys are an error."
    ),
]
OutOpt = Annotated[
    Path | None,
    out_option(
        "Output folder for scores.csv, ranking.csv, heatmaps, run.json, summary.md. "
        "Default runs/<probe>-<timestamp>."
    ),
]
TopOpt = Annotated[int, typer.Option("--top", help="Pairs shown in the console table.")]


@app.command("rank-encoders", help=_HELP)
@config_options(RankConfig)
def rank_encoders_command(
    cfg_values: dict,
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    top: TopOpt = 10,
    quiet: QuietOpt = False,
) -> None:
    """The options of RankConfig (alignkit/config.py) are added by @config_options."""
    try:
        _rank(cfg_values, config, out, overwrite, top, quiet)
    except AlignkitError as exc:  # the library names Python arguments; say them as flags
        words = cli_words(str(exc), RankConfig, {"overwrite": "--overwrite"})
        raise AlignkitError(words) from exc


def _rank(
    cfg_values: dict, config: Path | None, out: Path | None, overwrite: bool, top: int, quiet: bool
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window

    from alignkit.config import load_config
    from alignkit.ranking import default_probe, rank_encoders
    from alignkit.ranking.folder import write as write_folder
    from alignkit.runs import RunFolder, default_run_dir

    started = time.perf_counter()
    base = load_config(config) if config is not None else RankConfig()
    cfg = base.replace(**cfg_values)

    probe_spec = cfg.probe or default_probe()
    out_dir = out if out is not None else default_run_dir(probe_spec)
    run_folder = RunFolder(out_dir, overwrite=overwrite)  # refuse before any work

    rows = {None: f"all rows up to {DEFAULT_N}", 0: "all rows"}.get(cfg.n, f"n={cfg.n}")
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
        real = bool((~ranking.table["control"].astype(bool)).any())
        step = next_step(run_folder.out, probe_spec) if real else ""
        with run_folder as tmp:  # all files or none; an earlier run is replaced only at the end
            write_folder(ranking, tmp)
            if step:
                summary = tmp / "summary.md"
                text = summary.read_text(encoding="utf-8")
                summary.write_text(text + "\n## Next step\n\n" + step + "\n", encoding="utf-8")
        folder = run_folder.out
    finally:
        if handler is not None:
            rank_log.removeHandler(handler)
            rank_log.propagate = True
            rank_log.setLevel(logging.NOTSET)

    elapsed = time.perf_counter() - started
    md = ranking.metadata
    typer.echo("")
    typer.echo(
        f"{len(ranking.vision)} vision x {counted(len(ranking.text), 'text encoder')} on "
        f"{md['probe']['name']} "
        f"(n={md['probe']['n']:,} of "
        f"{md['probe'].get('rows_available') or md['probe']['n']:,} rows), "
        f"ranked by {ranking.metric}:"
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
    skipped_rows = md["probe"].get("skipped_rows", [])
    if skipped_rows:
        ids = ", ".join(d["id"] for d in skipped_rows[:5]) + (
            ", ..." if len(skipped_rows) > 5 else ""
        )
        typer.secho(
            f"skipped {counted(len(skipped_rows), 'bad probe row')} ({ids}); see run.json",
            err=True,
            fg=typer.colors.YELLOW,
        )
    typer.echo(f"\nwrote {folder}  ({elapsed:.1f} s)")
    if step:  # train the best real pairs (a ranking of controls only has none)
        command, _, note = step.partition("\n")
        typer.echo("\nnext: " + command.strip("`") + ("\n  " + note if note else ""))


def next_step(folder: Path, probe: str) -> str:
    """The ``alignkit train --from-ranking`` command line that trains this ranking's best pairs,
    in backticks; for a probe other than Flickr8k, a second line says what to put for the
    placeholders. Printed at the end of the run and written at the end of summary.md."""
    if probe.split(":")[0] == "flickr8k":
        train, val, note = "flickr8k:train", "flickr8k:dev", ""
    else:
        train, val = "TRAIN_PAIRS", "VAL_PAIRS"
        note = (
            "\nTRAIN_PAIRS, VAL_PAIRS: your training and validation image-caption pairs (a "
            "manifest, webdataset shards, an HF dataset or a named probe), disjoint from each "
            "other and from the probe ranked here."
        )
    argv = ["alignkit", "train", "--from-ranking", str(folder), "--top", "3"]
    argv += ["--probe", train, "--val", val, "--out", f"{folder}-train"]
    return "`" + " ".join(shlex.quote(a) for a in argv) + "`" + note


def _command(cfg: RankConfig, out: Path, top: int, probe: str) -> list[str]:
    """The run as one explicit command line (every option resolved), for run.json."""
    from alignkit.config import EncoderEntry, declared

    argv = ["alignkit", "rank-encoders"]
    for f, opt in declared(RankConfig):
        value = probe if f.name == "probe" else getattr(cfg, f.name)
        flag = opt.flag or "--" + f.name.replace("_", "-")
        if opt.repeat:
            for item in value:
                argv += [flag, item.label if isinstance(item, EncoderEntry) else str(item)]
        elif isinstance(value, bool):
            if f.name == "cache" and value is False:
                argv += [flag, "off"]
            elif value is True and f.name != "cache":
                argv.append(flag)
        elif value is not None:
            argv += [flag, str(value)]
    argv += ["--out", str(out), "--top", str(top)]
    return [shlex.quote(a) if " " in a else a for a in argv]
