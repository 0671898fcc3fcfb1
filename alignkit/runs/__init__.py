"""Run folders: the one place for what every command's output folder is and holds.

* :mod:`alignkit.runs.folder`: :class:`RunFolder` (all files or none, swapped in atomically),
  ``run.json`` (command, config, versions, time), ``default_run_dir``; used by
  ``rank-encoders``, ``train``, ``evaluate`` and ``predictivity``.
* :mod:`alignkit.runs.trained`: the trained-run folder (``config.json`` +
  ``projector.safetensors``): writing, checking, and saying what a folder is when it is not one.
* :mod:`alignkit.runs.metrics`: ``metrics.json``, merged across evaluations.

Building models from a trained run is :mod:`alignkit.aligned` (``load_aligned``, ``load_pair``).
"""

from __future__ import annotations

from alignkit.runs.folder import (
    RUN_FILE,
    VERSION_PACKAGES,
    OutputExistsError,
    RunFolder,
    default_run_dir,
    jsonable,
    read_run_json,
    versions,
    write_run_json,
)
from alignkit.runs.metrics import METRICS_FORMAT, read_metrics, stamp_metrics, write_metrics
from alignkit.runs.trained import (
    EncoderRecord,
    check_run_folder,
    describe_folder,
    read_config,
    write_config,
    write_run_config,
)

__all__ = [
    "METRICS_FORMAT",
    "RUN_FILE",
    "VERSION_PACKAGES",
    "EncoderRecord",
    "OutputExistsError",
    "RunFolder",
    "check_run_folder",
    "default_run_dir",
    "describe_folder",
    "jsonable",
    "read_config",
    "read_metrics",
    "read_run_json",
    "stamp_metrics",
    "versions",
    "write_config",
    "write_metrics",
    "write_run_config",
    "write_run_json",
]
