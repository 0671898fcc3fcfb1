"""``alignkit train``: train the projectors of one encoder pair, or of the K best pairs."""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from alignkit.cli import app, silence_third_party_progress
from alignkit.errors import AlignkitError

_HELP = (
    "Train projectors that align a frozen vision encoder with a frozen text encoder on cached "
    "features of a probe's training split (every caption of an image is used), with early "
    "stopping on --val, and write a run folder (config.json + projector.safetensors, which "
    "alignkit.load_aligned reads; checkpoints, history.csv/png, run.json).\n\n"
    "An interrupted run resumes from its last checkpoint when the same command is run again. "
    "Every TrainConfig field is an option below and a key of --config FILE (TOML or YAML; "
    "also vision, text, probe, val, n, tokens, out); the command line wins over the file.\n\n"
    "With --from-ranking RUN_DIR --top K: train the K best real (non-control) pairs of a "
    "ranking folder's ranking.csv, each into OUT/<rank>-<vision>__<text>, and print a table."
)


def _opt(help_: str, *names: str, metavar: str | None = None) -> Any:
    return typer.Option(*names, help=help_, metavar=metavar, show_default=False)


# TrainConfig fields: help text; "(default: ...)" is appended from TrainConfig's own defaults,
# so the help cannot drift from the dataclass.
_FIELDS_TEXT = {
    "projector": "projector of both towers: linear, mlp (Linear-GELU-Linear), residual "
    "(linear + MLP branch, freeze-align's), glu (gated, SAIL)",
    "text_head": "token-level text only: head after the masked mean",
    "width": "shared embedding width",
    "hidden": "hidden width of mlp/residual/glu",
    "dropout": "dropout probability in the projectors, in [0, 1)",
    "loss": "clip (InfoNCE, learnable temperature) or siglip (sigmoid, scale + bias)",
    "captions": "one (a random caption of each image per step) or all (every caption a positive)",
    "epochs": "epochs; the cosine schedule decays to 0 over them",
    "batch_size": "images per optimizer step (global, split across torchrun ranks)",
    "lr": "peak learning rate of AdamW",
    "weight_decay": "AdamW weight decay on matrices",
    "warmup": "fraction of the steps with a linear warmup, then cosine decay",
    "clip_grad": "max gradient L2 norm; 0 = no clipping",
    "precision": "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16, fp64",
    "seed": "seed of initialisation, batch order, caption sampling, dropout",
    "eval_every": "steps between validations and checkpoints; 0 = every epoch",
    "patience": "stop after this many validations without improvement; 0 = never",
    "early_stop_metric": "mean_recall, i2t_r1/5/10, t2i_r1/5/10 or val_loss",
}


def _shown_default(name: str, default: Any) -> str:
    """A TrainConfig default as its option spells it: None is "0" (off) or "--width"."""
    if default is None:
        return {"hidden": "--width", "patience": "0", "clip_grad": "0"}[name]
    return f"{default:g}" if isinstance(default, float) else str(default)


def _fields_help() -> dict[str, str]:
    """Each TrainConfig field's option help, ending in its default."""
    from alignkit.training.config import TrainConfig

    return {
        f.name: f"{_FIELDS_TEXT[f.name]} (default: {_shown_default(f.name, f.default)})"
        for f in dataclasses.fields(TrainConfig)
    }


_FIELDS_HELP = _fields_help()
_RUN_KEYS = ("vision", "text", "probe", "val", "n", "val_n", "tokens", "out")


def _read_file(path: Path) -> dict[str, Any]:
    """A TOML or YAML mapping of option names (underscores or dashes) to values."""
    if not path.is_file():
        raise AlignkitError(f"--config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise AlignkitError(f"--config must end in .toml, .yaml or .yml: got {path.name!r}")
    except AlignkitError:
        raise
    except Exception as exc:  # tomllib / yaml parse errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AlignkitError(f"{path}: not valid {path.suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise AlignkitError(f"{path}: expected a mapping of option names to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(_FIELDS_HELP) - set(_RUN_KEYS))
    if unknown:
        raise AlignkitError(
            f"{path}: unknown keys {unknown}; expected some of: "
            f"{', '.join([*_RUN_KEYS, *_FIELDS_HELP])}"
        )
    return data


def _train_config(values: dict[str, Any]):
    from alignkit.training import TrainConfig

    cfg = {k: v for k, v in values.items() if k in _FIELDS_HELP and v is not None}
    if cfg.get("clip_grad") == 0:
        cfg["clip_grad"] = None
    if cfg.get("patience") == 0:
        cfg["patience"] = None
    try:
        return TrainConfig.from_dict(cfg)
    except TypeError as exc:
        raise AlignkitError(f"bad TrainConfig value: {exc}") from None


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


@app.command("train", help=_HELP)
def train_command(
    vision: Annotated[
        str | None, _opt("vision encoder spec", "--vision", "-v", metavar="SPEC")
    ] = None,
    text: Annotated[str | None, _opt("text encoder spec", "--text", "-t", metavar="SPEC")] = None,
    probe: Annotated[
        str | None,
        _opt("training probe, one training split (default: flickr8k:train)", "--probe", "-p"),
    ] = None,
    val: Annotated[
        str | None,
        _opt(
            "validation probe for early stopping, disjoint from --probe by id and image "
            "content (e.g. flickr8k:dev); none: train --epochs without early stopping",
            "--val",
        ),
    ] = None,
    n: Annotated[int | None, _opt("train on a seeded subsample of N probe rows", "--n")] = None,
    val_n: Annotated[
        int | None, _opt("validate on a seeded subsample of N --val rows", "--val-n")
    ] = None,
    tokens: Annotated[
        bool | None,
        typer.Option(
            "--tokens/--pooled",
            help="token-level features (CNN map / ViT tokens / text token states, float16, "
            "memory-mapped) or pooled ones (default: pooled)",
            show_default=False,
        ),
    ] = None,
    projector: Annotated[str | None, _opt(_FIELDS_HELP["projector"], "--projector")] = None,
    text_head: Annotated[str | None, _opt(_FIELDS_HELP["text_head"], "--text-head")] = None,
    width: Annotated[int | None, _opt(_FIELDS_HELP["width"], "--width")] = None,
    hidden: Annotated[int | None, _opt(_FIELDS_HELP["hidden"], "--hidden")] = None,
    dropout: Annotated[float | None, _opt(_FIELDS_HELP["dropout"], "--dropout")] = None,
    loss: Annotated[str | None, _opt(_FIELDS_HELP["loss"], "--loss")] = None,
    captions: Annotated[str | None, _opt(_FIELDS_HELP["captions"], "--captions")] = None,
    epochs: Annotated[int | None, _opt(_FIELDS_HELP["epochs"], "--epochs")] = None,
    batch_size: Annotated[int | None, _opt(_FIELDS_HELP["batch_size"], "--batch-size")] = None,
    lr: Annotated[float | None, _opt(_FIELDS_HELP["lr"], "--lr")] = None,
    weight_decay: Annotated[
        float | None, _opt(_FIELDS_HELP["weight_decay"], "--weight-decay")
    ] = None,
    warmup: Annotated[float | None, _opt(_FIELDS_HELP["warmup"], "--warmup")] = None,
    clip_grad: Annotated[float | None, _opt(_FIELDS_HELP["clip_grad"], "--clip-grad")] = None,
    precision: Annotated[str | None, _opt(_FIELDS_HELP["precision"], "--precision")] = None,
    seed: Annotated[int | None, _opt(_FIELDS_HELP["seed"], "--seed")] = None,
    eval_every: Annotated[int | None, _opt(_FIELDS_HELP["eval_every"], "--eval-every")] = None,
    patience: Annotated[int | None, _opt(_FIELDS_HELP["patience"], "--patience")] = None,
    early_stop_metric: Annotated[
        str | None, _opt(_FIELDS_HELP["early_stop_metric"], "--early-stop-metric")
    ] = None,
    config: Annotated[
        Path | None,
        _opt("TOML/YAML file with any of these options as keys", "--config", "-c", metavar="FILE"),
    ] = None,
    out: Annotated[
        Path | None,
        _opt("run folder (with --from-ranking: the parent of one folder per pair)", "--out", "-o"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a finished (or unfinished) run in --out")
    ] = False,
    cache_only: Annotated[
        bool,
        typer.Option(
            "--cache-only",
            help="never run an encoder: fail at once when a feature set is not in the cache",
        ),
    ] = False,
    cache: Annotated[
        str | None,
        _opt("cache root, as ALIGNKIT_CACHE_DIR (features in DIR/features), or 'off'", "--cache"),
    ] = None,
    extract_batch_size: Annotated[
        int, typer.Option("--extract-batch-size", help="rows per encoder forward when extracting")
    ] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    from_ranking: Annotated[
        Path | None,
        _opt("a rank-encoders run folder: train its --top best real pairs", "--from-ranking"),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="with --from-ranking: how many pairs")] = 3,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    from alignkit.training.pair import train_pair

    values: dict[str, Any] = _read_file(config) if config is not None else {}
    given = {
        "vision": vision, "text": text, "probe": probe, "val": val, "n": n, "val_n": val_n,
        "tokens": tokens,
        "out": out, "projector": projector, "text_head": text_head, "width": width,
        "hidden": hidden, "dropout": dropout, "loss": loss, "captions": captions,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup": warmup, "clip_grad": clip_grad, "precision": precision, "seed": seed,
        "eval_every": eval_every, "patience": patience, "early_stop_metric": early_stop_metric,
    }  # fmt: skip
    values.update({k: v for k, v in given.items() if v is not None})
    train_config = _train_config(values)  # bad values fail before any work
    if values.get("out") is None:
        raise AlignkitError("--out is required: the run folder to write")
    out_dir = Path(values["out"])
    if top < 1:
        raise AlignkitError(f"--top must be >= 1: got {top}")
    cache_value: Any = True
    if cache is not None:
        cache_value = False if cache.lower() in ("off", "no", "false", "0") else cache
    if quiet:
        silence_third_party_progress()

    if from_ranking is not None:
        if values.get("vision") or values.get("text"):
            raise AlignkitError("--from-ranking trains the ranking's pairs: drop --vision/--text")
        pairs = [
            (r["vision"], r["text"], out_dir / f"{r['rank']}-{_slug(r['vision'])}__"
             f"{_slug(r['text'])}", r)
            for r in read_ranking(from_ranking, top)
        ]  # fmt: skip
    else:
        if not values.get("vision") or not values.get("text"):
            raise AlignkitError("pass --vision SPEC and --text SPEC (or --from-ranking RUN_DIR)")
        pairs = [(values["vision"], values["text"], out_dir, None)]

    summary = []
    for v, t, folder, ranked in pairs:
        typer.echo(f"training {v} x {t} -> {folder}")
        run = train_pair(
            v,
            t,
            values.get("probe") or "flickr8k:train",
            train_config,
            folder,
            val=values.get("val"),
            n=values.get("n"),
            val_n=values.get("val_n"),
            tokens=bool(values.get("tokens")),
            cache=cache_value,
            cache_only=cache_only,
            device=device,
            batch_size=extract_batch_size,
            overwrite=overwrite,
            progress=not quiet,
            command=_command(values, v, t, folder, cache, cache_only, device),
        )
        m = run.result.metrics
        summary.append(
            {
                "rank": ranked["rank"] if ranked else "-",
                "vision": v,
                "text": t,
                "best_step": run.result.best_step,
                "i2t_r5": m.get("i2t_r5"),
                "t2i_r5": m.get("t2i_r5"),
                "mean_recall": m.get("mean_recall"),
                "train_s": run.train_s,
                "folder": str(folder),
            }
        )
    typer.echo("")
    typer.echo(_table(summary, validated=values.get("val") is not None))


def _command(
    values: dict[str, Any],
    vision: str,
    text: str,
    folder: Path,
    cache: str | None,
    cache_only: bool,
    device: str,
) -> list[str]:
    """This pair's run as one explicit command line (every resolved option), for run.json."""
    argv = ["alignkit", "train", "--vision", vision, "--text", text]
    for key, value in values.items():
        if key in ("vision", "text", "out") or value is None:
            continue
        if key == "tokens":
            argv.append("--tokens" if value else "--pooled")
        else:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    argv += ["--out", str(folder), "--device", device]
    if cache is not None:
        argv += ["--cache", cache]
    if cache_only:
        argv.append("--cache-only")
    return argv


def _table(rows: list[dict[str, Any]], validated: bool) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.1f}"

    head = ["rank", "vision", "text", "best step", "val i2t R@5", "val t2i R@5", "val mean R",
            "train s", "folder"]  # fmt: skip
    lines = [" | ".join(head)]
    for r in rows:
        lines.append(
            " | ".join(
                [
                    str(r["rank"]),
                    r["vision"],
                    r["text"],
                    str(r["best_step"]),
                    f(r["i2t_r5"]),
                    f(r["t2i_r5"]),
                    f(r["mean_recall"]),
                    f"{r['train_s']:.1f}",
                    r["folder"],
                ]
            )
        )
    if not validated:
        lines.append("(no --val: no validation recall; evaluate with `alignkit evaluate`)")
    return "\n".join(lines)
