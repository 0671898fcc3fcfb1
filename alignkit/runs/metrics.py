"""``metrics.json``: the evaluations of a trained run, merged across evaluations, never replaced.

Format ``alignkit.metrics/1``::

    {"format": "alignkit.metrics/1", "alignkit_version": ..., "complete": true,
     "updated": "2026-12-07T05:10:00+0000",
     "evaluations": [{"computed": ..., "templates": ..., "zeroshot": [...], ...}, ...],
     "metrics": {"retrieval/flickr8k:test/image_to_text_R@5":
                     {"value": 0.41, "n": 1000, "chance": 0.005,
                      "computed": "2026-12-07T05:10:00+0000", "probe_fingerprint": "ab12..",
                      "overlap": {"rows": 12, "of": 1000}}   # only where overlap was allowed
                 ...}}

A second evaluation adds its keys and replaces the keys it computed again; the keys it did not
compute stay as they were, each with the time and the probe fingerprint it was computed from.
The file is written atomically and only once every requested evaluation has finished, so a file
that exists is complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alignkit._files import atomic_write_text
from alignkit.errors import AlignkitError

METRICS_FILE = "metrics.json"
METRICS_FORMAT = "alignkit.metrics/1"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def stamp_metrics(
    metrics: Mapping[str, Mapping[str, Any]],
    fingerprints: Mapping[str, str],
    *,
    overlap: Mapping[str, tuple[int, int]] | None = None,
    when: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``metrics`` with each key's provenance added: ``computed`` (time) and
    ``probe_fingerprint`` (of the probe named in the key's second segment, as in
    ``retrieval/<probe>/R@5``; looked up in ``fingerprints``), and ``overlap`` ``{"rows", "of"}``
    for keys whose probe overlaps the run's training or validation rows (``overlap``: probe name
    -> (overlapping rows, rows))."""
    when = when or now()
    out = {}
    for key, value in metrics.items():
        probe = key.split("/")[1] if key.count("/") >= 2 else ""
        rec = {**dict(value), "computed": when}
        if probe in fingerprints:
            rec["probe_fingerprint"] = fingerprints[probe]
        if overlap and overlap.get(probe, (0, 0))[0]:
            rows, of = overlap[probe]
            rec["overlap"] = {"rows": int(rows), "of": int(of)}
        out[key] = rec
    return out


def _read(path: Path) -> dict[str, Any] | None:
    """The whole metrics file, ``None`` when there is none (a damaged one is an error: merging
    into it would lose what it held). The pair files of alignkit 0.x predictivity runs
    (``{"stage_key", "metrics", ...}`` without a format) are read too."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(
            f"cannot merge into {path}: {exc}; move it aside to start a new metrics file"
        ) from None
    legacy = isinstance(data, Mapping) and "stage_key" in data and "metrics" in data
    if not isinstance(data, Mapping) or (data.get("format") != METRICS_FORMAT and not legacy):
        raise AlignkitError(
            f"cannot merge into {path}: it is not an alignkit metrics file; move it aside"
        )
    return dict(data)


def merged_metrics(
    folder: str | Path, metrics: Mapping[str, Any], *, about: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The content :func:`write_metrics` would write: the folder's metrics.json (if any) with
    ``metrics`` merged in and ``about`` appended to its evaluations."""
    import alignkit

    old = _read(Path(folder) / METRICS_FILE) or {}
    if "format" not in old and old.get("stage_key"):  # an earlier predictivity pair file
        old["metrics"] = {
            k: {**v, "stage_key": old["stage_key"]} for k, v in old["metrics"].items()
        }
    evaluations = list(old.get("evaluations", []))
    if not evaluations and old:  # a file from before merging: its run description is kept
        evaluations.append({k: v for k, v in old.items() if k not in _OWN})
    evaluations.append({"computed": now(), **dict(about or {})})
    return {
        "format": METRICS_FORMAT,
        "alignkit_version": alignkit.__version__,
        "complete": True,
        "updated": now(),
        "evaluations": evaluations,
        "metrics": {**dict(old.get("metrics", {})), **dict(metrics)},
    }


_OWN = ("format", "alignkit_version", "complete", "updated", "evaluations", "metrics")


def write_metrics(
    folder: str | Path, metrics: Mapping[str, Any], *, about: Mapping[str, Any] | None = None
) -> Path:
    """Merge ``metrics`` into ``folder/metrics.json`` (atomically; see the module docstring).

    Raises:
        AlignkitError: an existing metrics.json cannot be read (it is left as it is).
        OSError: the file cannot be written (read-only folder, full disk).
    """
    data = merged_metrics(folder, metrics, about=about)
    path = Path(folder) / METRICS_FILE
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False))
    return path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The flat metrics of a ``metrics.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"cannot read metrics from {path}: {exc}") from None
    if data.get("format") != METRICS_FORMAT or not data.get("complete"):
        raise AlignkitError(f"{path} is not a complete alignkit metrics file")
    return dict(data["metrics"])


__all__ = [
    "METRICS_FILE",
    "METRICS_FORMAT",
    "merged_metrics",
    "read_metrics",
    "stamp_metrics",
    "write_metrics",
]
