"""``alignkit train``: train the projectors of one encoder pair, or of the K best pairs.

The options are the fields of :class:`~alignkit.training.TrainRunConfig` (what to train on) and
:class:`~alignkit.training.TrainConfig` (the recipe), declared once there; ``--out``,
``--config``, ``--overwrite`` and ``--quiet`` come from :mod:`alignkit.cli._common`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from alignkit.cli._app import app, silence_third_party_progress
from alignkit.cli._common import ConfigOpt, OverwriteOpt, QuietOpt, out_option
from alignkit.cli._options import cli_words, config_options
from alignkit.errors import AlignkitError
from alignkit.options import option
from alignkit.training.config import TrainConfig, TrainRunConfig

_HELP = (
    "Train projectors that align a frozen vision encoder with a frozen text encoder on cached "
    "features of a probe's training split (every caption of an image is used), with early "
    "stopping on --val, and write a run folder (config.json + projector.safetensors, which "
    "alignkit.load_aligned reads; checkpoints, history.csv/png, run.json).\n\n"
    "An interrupted or failed run resumes from its last checkpoint when the same command is run "
    "again; a run with other settings or inputs is refused, naming what differs. Every option "
    "is also a key of --config FILE (TOML or YAML, plus `out`); the command line wins.\n\n"
    "With --from-ranking RUN_DIR --top K: train the K best real (non-control) pairs of a "
    "ranking folder's ranking.csv, each into OUT/<rank>-<vision>__<text>, and print a table."
)


def _options_class() -> type:
    """One dataclass with the fields of TrainRunConfig, TrainConfig and ``out`` (a file key
    only): what the command line and a --config file may set."""
    own = [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
        for cls in (TrainRunConfig, TrainConfig)
        for f in dataclasses.fields(cls)
    ]
    out = option(None, "The run folder (as --out).", cli=False)
    return dataclasses.make_dataclass(
        "TrainOptions", [*own, ("out", "str | None", out)], frozen=True
    )


TrainOptions = _options_class()
_RECIPE = {f.name for f in dataclasses.fields(TrainConfig)}
_RUN = {f.name for f in dataclasses.fields(TrainRunConfig)}
_FLAGS = {"overwrite": "--overwrite", "out_dir": "--out", "resume": "--overwrite"}

OutOpt = Annotated[
    Path | None,
    out_option(
        "Run folder. Required (here or as `out` in --config); with --from-ranking, the parent "
        "of one folder per pair. Run the same command with the same --out to resume."
    ),
]


def cli_message(message: str) -> str:
    """A library message in this command's words (``val_test_split=True`` ->
    ``--val-test-split``, ``pass probe=X`` -> ``pass --probe X``, ``out_dir`` -> ``--out``)."""
    from alignkit.options import declared

    flags = {
        f.name: opt.flag or "--" + f.name.replace("_", "-") for f, opt in declared(TrainOptions)
    }
    message = re.sub(r"TrainConfig\.(\w+)", lambda m: flags.get(m[1], m[0]), message)
    message = cli_words(message, TrainOptions, _FLAGS)
    message = message.replace("resume=False", "--overwrite")
    return re.sub(r"(?<![\w-])out_dir\b", "--out", message)


@app.command("train", help=_HELP)
@config_options(TrainOptions)
def train_command(
    cfg_values: dict,
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The options of TrainRunConfig and TrainConfig are added by @config_options."""
    try:
        _train(cfg_values, config, out, overwrite, quiet)
    except AlignkitError as exc:  # the library names Python arguments; say them as flags
        raise AlignkitError(cli_message(str(exc))) from exc


def _configs(cfg_values: dict, config: Path | None) -> tuple[TrainRunConfig, TrainConfig, Any]:
    """(what to train on, the recipe, the --out of the file) from the file and the options."""
    from alignkit.options import load_config

    base = load_config(config, TrainOptions) if config is not None else TrainOptions()
    values = {**dataclasses.asdict(base), **cfg_values}
    for name in ("clip_grad", "patience"):  # 0 = off on the command line and in files
        if values[name] == 0:
            values[name] = None
    for name in ("n", "val_n"):
        if values[name] == 0:
            values[name] = None
    if isinstance(values["cache"], str):  # a file's `cache = "off"` means what --cache off does
        from alignkit.vocabulary import cache_from_cli

        values["cache"] = cache_from_cli(values["cache"])
    try:
        recipe = TrainConfig(**{k: v for k, v in values.items() if k in _RECIPE})
        run = TrainRunConfig(**{k: v for k, v in values.items() if k in _RUN})
    except TypeError as exc:
        raise AlignkitError(f"bad option value: {exc}") from None
    return run, recipe, values.get("out")


def _train(
    cfg_values: dict, config: Path | None, out: Path | None, overwrite: bool, quiet: bool
) -> None:
    run, recipe, file_out = _configs(cfg_values, config)  # bad values fail before any work
    out = out if out is not None else file_out
    if out is None:
        raise AlignkitError("--out is required: the run folder to write (or `out` in --config)")
    out_dir = Path(out)
    if run.threads is not None:
        from alignkit._threads import ENV as THREADS_ENV

        os.environ[THREADS_ENV] = str(run.threads)  # the library's choice defers to it
    if quiet:
        silence_third_party_progress()
    # under torchrun every rank runs this command; only rank 0 reports
    say = typer.echo if os.environ.get("RANK", "0") == "0" else (lambda *args, **kwargs: None)
    summary, folders = [], []
    for vision, text, folder, rank in _pairs(run, out_dir):
        folders.append(folder)
        if rank is not None and not overwrite and _finished(folder):
            say(f"kept {vision} x {text}: {folder} holds a finished run")
            summary.append(_row_of_folder(rank, vision, text, folder))
            continue
        say(f"training {vision} x {text} -> {folder}")
        command = _command(cfg_values, config, run, vision, text, folder)
        summary.append(
            _train_one(run, recipe, vision, text, folder, rank, overwrite, quiet, command)
        )
    say("")
    say(_table(summary, validated=run.val is not None))
    say("")
    say("next: " + _evaluate_line(run.probe, folders))


def _train_one(
    run: TrainRunConfig,
    recipe: TrainConfig,
    vision: str,
    text: str,
    folder: Path,
    rank: str | None,
    overwrite: bool,
    quiet: bool,
    command: list[str],
) -> dict[str, Any]:
    from alignkit.probes.containers import COLUMN_OPTIONS
    from alignkit.training.pair import train_pair

    try:
        result = train_pair(
            vision, text, run.probe, recipe, folder,
            val=run.val, n=run.n, val_n=run.val_n, tokens=run.tokens, cache=run.cache,
            cache_only=run.cache_only, device=run.device, extract_batch=run.extract_batch,
            store_dtype=run.store_dtype,
            skip_bad=run.skip_bad, val_test_split=run.val_test_split,
            class_names=run.class_names, columns={k: getattr(run, k) for k in COLUMN_OPTIONS},
            overwrite=overwrite,
            progress=not quiet, command=command,
        )  # fmt: skip
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per rank
            typer.secho(_interrupted(folder, command, overwrite), err=True)
        raise typer.Exit(130) from None
    m = result.result.metrics
    return {
        "rank": rank or "-",
        "vision": vision,
        "text": text,
        "best_step": result.result.best_step,
        "i2t_r5": m.get("i2t_r5"),
        "t2i_r5": m.get("t2i_r5"),
        "mean_recall": m.get("mean_recall"),
        "train_s": result.train_s,
        "folder": str(folder),
    }


def _as_launched(command: list[str]) -> list[str]:
    """``command`` (``alignkit train ...``) as the user launched it: under torchrun, with its
    launcher and ``-n`` for ``--n`` (torchrun's own parser would take ``--n``)."""
    ranks = os.environ.get("LOCAL_WORLD_SIZE")
    if "RANK" not in os.environ or ranks is None:
        return command
    rest = ["-n" if word == "--n" else word for word in command[1:]]
    return ["torchrun", "--nproc_per_node", ranks, "-m", "alignkit", *rest]


def _interrupted(folder: Path, command: list[str], overwrite: bool) -> str:
    """What Ctrl-C kept and the command that resumes it."""
    from alignkit.training.checkpoint import CHECKPOINT, read_meta

    command = _as_launched(command)

    if overwrite and _finished(folder):  # the new run was dropped, the earlier one put back
        return (
            f"interrupted: the earlier finished run in {folder} is back in place; run "
            f"{shlex.join(command)} --overwrite to replace it"
        )

    try:
        meta = read_meta(folder / CHECKPOINT)
    except AlignkitError:
        meta = None
    if meta is None:
        kept = "interrupted before the first checkpoint; saved feature shards stay in the cache"
    else:
        kept = f"interrupted: the checkpoint at step {meta['step']} is kept in {folder}"
    return f"{kept}; resume with: {shlex.join(command)}"


def _pairs(run: TrainRunConfig, out_dir: Path) -> list[tuple[str, str, Path, str | None]]:
    """(vision, text, folder, rank or None) of each pair to train."""
    if run.from_ranking is not None:
        if run.vision or run.text:
            raise AlignkitError("--from-ranking trains the ranking's pairs: drop --vision/--text")
        return [
            (r["vision"], r["text"], out_dir / f"{r['rank']}-{_slug(r['vision'])}__"
             f"{_slug(r['text'])}", r["rank"])
            for r in read_ranking(Path(run.from_ranking), run.top)
        ]  # fmt: skip
    if not run.vision or not run.text:
        raise AlignkitError("pass --vision SPEC and --text SPEC (or --from-ranking RUN_DIR)")
    return [(run.vision, run.text, out_dir, None)]


def _finished(folder: Path) -> bool:
    from alignkit.training.folder import read_status

    return read_status(folder) == "done"


def _row_of_folder(rank: str, vision: str, text: str, folder: Path) -> dict[str, Any]:
    """The summary row of a pair trained by an earlier command (from its config.json)."""
    import json

    from alignkit.aligned import read_config

    cfg = read_config(folder)
    m = cfg.get("val_metrics") or {}
    try:
        train_s = json.loads((folder / "run.json").read_text()).get("train_s")
    except (OSError, ValueError):
        train_s = None
    return {
        "rank": rank, "vision": vision, "text": text, "best_step": cfg.get("best_step"),
        "i2t_r5": m.get("i2t_r5"), "t2i_r5": m.get("t2i_r5"),
        "mean_recall": m.get("mean_recall"), "train_s": train_s, "folder": str(folder),
    }  # fmt: skip


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split(":", 1)[-1].split("/")[-1])[:40]


def read_ranking(run_dir: Path, top: int) -> list[dict[str, str]]:
    """The ``top`` best real pairs of ``run_dir/ranking.csv`` (columns rank, vision, text,
    control, then metrics; see README), best first."""
    path = run_dir / "ranking.csv"
    if not path.is_file():
        raise AlignkitError(
            f"--from-ranking {run_dir}: no ranking.csv there; expected a folder written by "
            "`alignkit rank-encoders`"
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"rank", "vision", "text", "control"} - set(rows[0] if rows else {})
    if missing:
        raise AlignkitError(f"{path} lacks the columns {sorted(missing)}")
    real = [r for r in rows if str(r["control"]).strip().lower() not in ("true", "1", "yes")]
    real.sort(key=lambda r: float(r["rank"]))
    if not real:
        raise AlignkitError(f"{path} has no real (non-control) pairs to train")
    return real[:top]


def _command(
    cfg_values: dict,
    config: Path | None,
    run: TrainRunConfig,
    vision: str,
    text: str,
    folder: Path,
) -> list[str]:
    """This pair's run as one command line (the options given, with this pair and folder),
    for run.json and the resume line."""
    from alignkit.options import declared

    flags = {
        f.name: opt.flag or "--" + f.name.replace("_", "-") for f, opt in declared(TrainOptions)
    }
    argv = ["alignkit", "train", "--vision", vision, "--text", text]
    if config is not None:
        argv += ["--config", str(config)]
    for key, value in cfg_values.items():
        if key in ("vision", "text", "from_ranking", "top"):
            continue
        if key == "cache" and value is False:
            argv += [flags[key], "off"]
        elif value is True:
            argv.append(flags[key])
        elif value is not False:
            argv += [flags[key], str(value)]
    return [*argv, "--out", str(folder)]


def _evaluate_line(probe: str, folders: list[Path]) -> str:
    """The ``alignkit evaluate`` command for the trained folders, on the probe's test split."""
    base, _, split = probe.rpartition(":")
    held_out = f"{base}:test" if split == "train" and base else "TEST_PROBE"
    runs = " ".join(f"--run {shlex.quote(str(f))}" for f in folders)
    return f"alignkit evaluate {runs} --retrieval {shlex.quote(held_out)}"


def _table(rows: list[dict[str, Any]], validated: bool) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.1f}"

    head = ["rank", "vision", "text", "best step", "val i2t R@5", "val t2i R@5", "val mean R",
            "train s", "folder"]  # fmt: skip
    lines = [" | ".join(head)]
    for r in rows:
        step = "-" if r["best_step"] is None else str(r["best_step"])  # None: no --val
        cells = [str(r["rank"]), r["vision"], r["text"], step, f(r["i2t_r5"]),
                 f(r["t2i_r5"]), f(r["mean_recall"]), f(r["train_s"]), r["folder"]]  # fmt: skip
        lines.append(" | ".join(cells))
    if not validated:
        lines.append("(no --val: no validation recall; evaluate with `alignkit evaluate`)")
    return "\n".join(lines)
