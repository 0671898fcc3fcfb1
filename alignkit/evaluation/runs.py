"""Trained run folders as :class:`AlignedPair` s, and the metrics.json they get.

A run folder (written by ``alignkit train`` / :func:`alignkit.training.train_projector`) holds

* ``projector.safetensors``: the projector pair (format ``alignkit.projector/1``);
* ``config.json``: the encoders it was trained on, as ``{"vision": SPEC, "text": SPEC}`` where
  SPEC is a spec string or ``{"spec": ..., "options": {create_encoder options}}``, optionally
  nested under ``"encoders"``, and an optional ``"format"`` (``alignkit.aligned/1``).

``metrics.json`` (format ``alignkit.metrics/1``) holds the flat metrics ``{key: {"value", "n",
"chance"}}`` plus what was evaluated; it is written atomically and only when every requested
evaluation finished, so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.evaluation.evaluate import AlignedPair

RUN_FORMATS = ("alignkit.aligned/1",)
METRICS_FORMAT = "alignkit.metrics/1"
REQUIRED_FILES = ("config.json", "projector.safetensors")


def _encoder_entry(cfg: Mapping[str, Any], modality: str, path: Path) -> tuple[str, dict]:
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
    """Write ``config.json`` naming the encoders of a trained pooled-feature pair (atomically),
    in the layout :func:`alignkit.load_aligned` reads. ``vision``/``text``: spec strings or built
    encoders (then their weights identity is recorded and checked at evaluation)."""
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
        "format": RUN_FORMATS[0],
        "vision": record(vision, "image", dims[0] if dims else None),
        "text": record(text, "text", dims[1] if dims else None),
        "train_config": dict(train_config or {}),
        **dict(extra or {}),
    }
    path = Path(folder) / "config.json"
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def check_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json, after checking the folder holds a finished run (cheap: no model
    is loaded). Raises a one-line AlignkitError naming the missing files or wrong version."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AlignkitError(
            f"run folder {run} does not exist; give --run a folder `alignkit train` wrote"
        )
    missing = [f for f in REQUIRED_FILES if not (run / f).is_file()]
    if missing:
        raise AlignkitError(
            f"run folder {run} lacks {', '.join(missing)}: expected a finished training run "
            f"({', '.join(REQUIRED_FILES)}); finish or rerun `alignkit train`"
        )
    try:
        cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"{run / 'config.json'} is not readable JSON: {exc}") from None
    if not isinstance(cfg, Mapping):
        raise AlignkitError(f"{run / 'config.json'} must hold a JSON object")
    fmt = cfg.get("format")
    if fmt is not None and fmt not in RUN_FORMATS:
        raise AlignkitError(
            f"run folder {run} has format {fmt!r}; this alignkit reads {', '.join(RUN_FORMATS)}: "
            "evaluate it with the alignkit version that trained it, or retrain"
        )
    _encoder_entry(cfg, "image", run / "config.json")
    _encoder_entry(cfg, "text", run / "config.json")
    return dict(cfg)


def load_pair(run_dir: str | Path, device: str = "cpu") -> AlignedPair:
    """An :class:`AlignedPair` from a run folder: its encoder specs and its trained heads."""
    run = Path(run_dir)
    cfg = check_run_folder(run)
    vision, v_opts = _encoder_entry(cfg, "image", run / "config.json")
    text, t_opts = _encoder_entry(cfg, "text", run / "config.json")
    try:
        from alignkit.training import load_model
    except ImportError as exc:  # pragma: no cover - part of alignkit once merged
        raise AlignkitError(f"loading a trained projector needs alignkit.training: {exc}") from exc
    model, *_ = load_model(run / "projector.safetensors", device="cpu")
    model.eval()
    holder = cfg.get("encoders", cfg)
    weights = {
        m: holder[k]["weights"]
        for m, k in (("image", "vision"), ("text", "text"))
        if isinstance(holder.get(k), Mapping) and holder[k].get("weights")
    }
    return AlignedPair(
        vision,
        text,
        model.encode_image,
        model.encode_text,
        name=run.name,
        encoder_options={"image": v_opts, "text": t_opts},
        weights=weights,
    )


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary sibling + ``os.replace``)."""
    try:
        from alignkit._files import atomic_write_text as shared
    except ImportError:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    shared(path, text)


def write_metrics(
    folder: str | Path, metrics: Mapping[str, Any], *, about: Mapping[str, Any] | None = None
) -> Path:
    """Write ``metrics.json`` (format :data:`METRICS_FORMAT`) atomically; returns its path."""
    import alignkit

    data = {
        "format": METRICS_FORMAT,
        "alignkit_version": alignkit.__version__,
        "complete": True,
        **dict(about or {}),
        "metrics": dict(metrics),
    }
    path = Path(folder) / "metrics.json"
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False))
    return path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The flat metrics of a ``metrics.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"cannot read metrics from {path}: {exc}") from None
    if data.get("format") != METRICS_FORMAT or not data.get("complete"):
        raise AlignkitError(f"{path} is not a complete alignkit metrics file")
    return dict(data["metrics"])


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> Any:
    """A pandas DataFrame: one row per metric key, ``n`` and ``chance``, one column per run."""
    import pandas as pd

    keys = list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    rows = []
    for key in keys:
        first = next(m[key] for m in results.values() if key in m)
        row = {"metric": key, "n": first.get("n"), "chance": first.get("chance")}
        for run, metrics in results.items():
            row[run] = metrics[key]["value"] if key in metrics else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: Any) -> str:
    """Plain-text table: recalls and accuracies in %, ranks and correlations as numbers."""

    def fmt(key: str, value: Any) -> str:
        if value is None or value != value:  # NaN
            return "-"
        if key.endswith("_rank"):
            return f"{value:.1f}"
        if key.startswith("judgements/"):
            return f"{value:.3f}"
        return f"{100 * value:.1f}%"

    runs = [c for c in table.columns if c not in ("metric", "n", "chance")]
    header = ["metric", "n", "chance", *runs]
    lines = [
        [str(r["metric"]), str(r["n"]), fmt(r["metric"], r["chance"])]
        + [fmt(r["metric"], r[c]) for c in runs]
        for _, r in table.iterrows()
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    for line in lines:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    return "\n".join(out)
