"""The trained-run folder: what ``alignkit train`` leaves behind and what loading reads.

A trained run folder holds::

    config.json              what to rebuild (format ``alignkit.aligned/1``): the vision and text
                             encoders ({"spec", "options", "weights", "dim", "tokens"}; a bare
                             spec string is read too), the TrainConfig, probes, validation metrics
    projector.safetensors    the projector pair (format ``alignkit.projector/1``)
    run.json                 the command and its status (:mod:`alignkit.runs.folder`)
    metrics.json             evaluations so far (:mod:`alignkit.runs.metrics`)

This module writes and checks ``config.json`` and says what a folder is when it is not a finished
trained run (a ranking, a predictivity experiment, the parent of ``--from-ranking`` runs, an
unfinished run). Building models from it is :func:`alignkit.load_aligned` (raw images and texts)
and :func:`alignkit.aligned.load_pair` (cached features, for evaluation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit._files import atomic_write_text
from alignkit._words import counted
from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder

CONFIG = "config.json"
PROJECTOR = "projector.safetensors"
FORMAT = "alignkit.aligned/1"
RUN_FORMATS = (FORMAT,)
REQUIRED_FILES = (CONFIG, PROJECTOR)


@dataclass(frozen=True)
class EncoderRecord:
    """One frozen encoder as a run folder names it."""

    spec: str
    options: dict[str, Any]
    weights: str  # Encoder.weights_identity() at training time
    dim: int  # width of the features the projector takes (pooled dim, or token width)
    tokens: bool  # trained on token-level features
    prefix_tokens: int = 0  # image CLS/register tokens in front of the patch tokens

    @classmethod
    def read(cls, value: Any, width: int) -> EncoderRecord:
        """The record of a config.json entry; a bare spec string or a record written from a spec
        (no weights identity, no width) gets an empty ``weights`` (not checked) and the
        projector's input ``width``."""
        value = {"spec": value} if isinstance(value, str) else dict(value)
        return cls(
            spec=value["spec"],
            options=dict(value.get("options", {})),
            weights=str(value.get("weights", "")),
            dim=int(value.get("dim", width)),
            tokens=bool(value.get("tokens", False)),
            prefix_tokens=int(value.get("prefix_tokens", 0)),
        )

    @classmethod
    def of(cls, encoder: Encoder, options: dict[str, Any], tokens: bool, dim: int) -> EncoderRecord:
        return cls(
            spec=encoder.name,
            options=dict(options),
            weights=encoder.weights_identity(),
            dim=int(dim),
            tokens=bool(tokens),
            prefix_tokens=int(getattr(encoder, "n_prefix", 0) or 0) if tokens else 0,
        )


def write_config(
    run_dir: str | Path,
    vision: EncoderRecord,
    text: EncoderRecord,
    train_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` of a run folder atomically (full records, as ``train`` does)."""
    body = {
        "format": FORMAT,
        "vision": vision.__dict__,
        "text": text.__dict__,
        "train_config": train_config,
        **(extra or {}),
    }
    path = Path(run_dir) / CONFIG
    atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True, default=str))
    return path


def write_run_config(
    folder: str | Path,
    vision: Any,
    text: Any,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    dims: tuple[int, int] | None = None,
    train_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` naming the encoders of a trained pooled-feature pair (atomically).
    ``vision``/``text``: spec strings or built encoders (then their weights identity is recorded
    and checked at evaluation); ``dims``: the projector's input widths (checked at load)."""
    options = options or {}

    def record(encoder: Any, modality: str, dim: int | None) -> dict[str, Any]:
        spec = encoder if isinstance(encoder, str) else encoder.name
        rec = {"spec": spec, "options": dict(options.get(modality, {})), "tokens": False}
        if not isinstance(encoder, str):
            rec["weights"] = encoder.weights_identity()
        if dim is not None:
            rec["dim"] = int(dim)
        return rec

    data = {
        "format": FORMAT,
        "vision": record(vision, "image", dims[0] if dims else None),
        "text": record(text, "text", dims[1] if dims else None),
        "train_config": dict(train_config or {}),
        **dict(extra or {}),
    }
    path = Path(folder) / CONFIG
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def encoder_entry(cfg: Mapping[str, Any], modality: str, path: Path) -> tuple[str, dict]:
    """``(spec, create_encoder options)`` of the ``image`` or ``text`` encoder in a config."""
    holder = cfg.get("encoders", cfg)
    keys = ("vision", "image") if modality == "image" else ("text",)
    for key in keys:
        value = holder.get(key) if isinstance(holder, Mapping) else None
        if isinstance(value, str):
            return value, {}
        if isinstance(value, Mapping) and isinstance(value.get("spec"), str):
            if value.get("tokens"):
                raise AlignkitError(
                    f"{path}: the {key} projector was trained on token-level features; "
                    "alignkit evaluate reads pooled features only: evaluate a pooled run, or use "
                    "alignkit.load_aligned(run_dir) on raw images and texts"
                )
            return value["spec"], dict(value.get("options", {}))
    raise AlignkitError(
        f"{path} names no {keys[0]} encoder (expected a {keys[0]!r} key with a spec string or "
        "{'spec': ...}); is this folder from another alignkit version? Retrain it with "
        "`alignkit train`"
    )


def encoder_records(cfg: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{"image": record, "text": record}`` of a config (records as dicts; a bare spec string
    becomes ``{"spec": ...}``)."""
    holder = cfg.get("encoders", cfg)
    out = {}
    for modality, keys in (("image", ("vision", "image")), ("text", ("text",))):
        for key in keys:
            value = holder.get(key) if isinstance(holder, Mapping) else None
            if isinstance(value, str):
                out[modality] = {"spec": value}
                break
            if isinstance(value, Mapping):
                out[modality] = value
                break
    return out


def describe_folder(folder: Path) -> str | None:
    """What ``folder`` is when it is a known alignkit folder other than a trained run: a ranking,
    a predictivity experiment, the parent of ``--from-ranking`` runs; ``None`` otherwise."""
    if (folder / "ranking.csv").is_file():
        return (
            "a ranking folder (alignkit rank-encoders); train its top pairs with `alignkit train "
            f"--from-ranking {folder} --out DIR`, then evaluate one of DIR's run folders"
        )
    saved = folder / CONFIG
    if saved.is_file():
        try:
            fmt = json.loads(saved.read_text(encoding="utf-8")).get("format", "")
        except (OSError, ValueError, AttributeError):
            fmt = ""
        if str(fmt).startswith("alignkit.predictivity"):
            runs = trained_runs_inside(folder / "pairs")
            inside = f"; its pair runs are in {folder / 'pairs'}" if runs else ""
            return (
                "a predictivity experiment (alignkit predictivity; its results are "
                f"correlations.csv and pairs.csv){inside}"
            )
    runs = trained_runs_inside(folder)
    if runs:
        shown = ", ".join(r.name for r in runs[:6]) + (", ..." if len(runs) > 6 else "")
        return (
            f"a folder of {counted(len(runs), 'trained run')} (as `alignkit train "
            f"--from-ranking` writes): give one of them ({shown})"
        )
    return None


def trained_runs_inside(folder: Path) -> list[Path]:
    """The direct subfolders of ``folder`` that hold a finished trained run."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and all((p / f).is_file() for f in REQUIRED_FILES)
    )


def _unfinished(run: Path) -> str | None:
    """The status line of an unfinished ``train`` run, ``None`` when run.json says nothing."""
    try:
        status = json.loads((run / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    if status in (None, "done"):
        return None
    return str(status)


def check_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json, after checking the folder holds a finished trained run (cheap: no
    model is loaded).

    Raises:
        AlignkitError (one line): the folder is missing; it is another kind of alignkit folder
            (says which, and what to give instead); the run is unfinished; files are missing;
            config.json is unreadable or of another format version.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise AlignkitError(
            f"run folder {run} does not exist; give --run a folder `alignkit train` wrote"
        )
    missing = [f for f in REQUIRED_FILES if not (run / f).is_file()]
    if missing:
        what = describe_folder(run)
        if what is not None:
            raise AlignkitError(
                f"{run} has no {' or '.join(missing)}: it is {what}; a trained run folder "
                f"({', '.join(REQUIRED_FILES)}, written by `alignkit train`) is expected"
            )
        status = _unfinished(run)
        if status is not None:
            raise AlignkitError(
                f"run folder {run} holds an unfinished training run (run.json status "
                f"{status!r}; no {', '.join(missing)} yet): let `alignkit train` finish, or "
                "rerun it with the same --out to resume"
            )
        raise AlignkitError(
            f"run folder {run} lacks {', '.join(missing)}: expected a finished training run "
            f"({', '.join(REQUIRED_FILES)}); finish or rerun `alignkit train`"
        )
    try:
        cfg = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"{run / CONFIG} is not readable JSON: {exc}") from None
    if not isinstance(cfg, Mapping):
        raise AlignkitError(f"{run / CONFIG} must hold a JSON object")
    fmt = cfg.get("format")
    if fmt is not None and fmt not in RUN_FORMATS:
        raise AlignkitError(
            f"run folder {run} has format {fmt!r}; this alignkit reads {', '.join(RUN_FORMATS)}: "
            "evaluate it with the alignkit version that trained it, or retrain"
        )
    encoder_entry(cfg, "image", run / CONFIG)
    encoder_entry(cfg, "text", run / CONFIG)
    return dict(cfg)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run folder with full encoder records (one-line error
    when the folder is missing, unfinished, another kind of folder, or foreign)."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        check_run_folder(run)  # says what the folder is instead
    path = run / CONFIG
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(body, Mapping) or body.get("format") != FORMAT:
        fmt = body.get("format") if isinstance(body, Mapping) else None
        raise AlignkitError(f"{path} is not an alignkit run config (format {fmt!r})")
    return dict(body)


def check_projector(run_dir: str | Path, model: Any, image_dim: int, text_dim: int) -> None:
    """Refuse a projector whose weights are not all finite, or whose input widths disagree with
    the widths config.json records (one line naming the file). ``model``: a torch module."""
    import torch

    run = Path(run_dir)
    bad = [
        name for name, p in model.state_dict().items() if not bool(torch.isfinite(p).all().item())
    ]
    if bad:
        raise AlignkitError(
            f"{run / PROJECTOR} holds non-finite weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): the file is damaged or the training diverged; "
            "retrain the run"
        )
    try:
        cfg = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    records = encoder_records(cfg) if isinstance(cfg, Mapping) else {}
    for modality, width in (("image", image_dim), ("text", text_dim)):
        dim = records.get(modality, {}).get("dim")
        if dim is not None and int(dim) != int(width):
            raise AlignkitError(
                f"{run / CONFIG} says the {modality} encoder "
                f"{records[modality].get('spec')} gives {dim}-wide features, but {run / PROJECTOR} "
                f"takes {width}: the two files come from different runs; retrain the run"
            )


__all__ = [
    "CONFIG",
    "FORMAT",
    "PROJECTOR",
    "REQUIRED_FILES",
    "RUN_FORMATS",
    "EncoderRecord",
    "check_projector",
    "check_run_folder",
    "describe_folder",
    "encoder_entry",
    "encoder_records",
    "read_config",
    "trained_runs_inside",
    "write_config",
    "write_run_config",
]
