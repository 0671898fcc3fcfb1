"""A training run's folder: made ready before the work, marked honestly however the work ends.

``run.json`` says what the folder holds: ``status`` is ``running`` while a run works on it,
``done`` once the run wrote everything, ``failed`` (with ``error``, the one-line reason) or
``interrupted`` when it stopped early. A folder whose run is not ``done`` resumes from its last
checkpoint when the same run starts again (the trainer refuses a run that differs from the
checkpoint's, listing the fields). With ``overwrite`` an earlier run is moved aside to a hidden
sibling and deleted only once the new run is done; a new run that fails puts it back.

``fits/<image|text>/`` holds the fit of an encoder fitted on the texts it is given
(``needs_fit``, e.g. ``tfidf:``): fitted once on every caption of the training probe, saved by
:func:`save_fits` before training, and loaded by :func:`load_fit` wherever the run is used
(``evaluate``, :func:`alignkit.load_aligned`), so validation, test and prompt texts are encoded
by the training fit, never by a fit of their own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit._files import atomic_write_text
from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder

__all__ = [
    "FITS",
    "RUN_FILE",
    "UNFINISHED",
    "check_out_dir",
    "end_out_dir",
    "fit_folder",
    "load_fit",
    "now",
    "prepare_out_dir",
    "read_status",
    "save_fits",
    "write_run_file",
]

log = logging.getLogger("alignkit.training.pair")

RUN_FILE = "run.json"
UNFINISHED = ("running", "failed", "interrupted")
FITS = "fits"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_run_file(out_dir: Path, body: dict[str, Any]) -> None:
    atomic_write_text(out_dir / RUN_FILE, json.dumps(body, indent=1, sort_keys=True, default=str))


def read_status(out_dir: Path) -> str | None:
    """The ``status`` of ``out_dir/run.json``; None when there is no readable run.json."""
    try:
        return json.loads((out_dir / RUN_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def check_out_dir(out_dir: Path, *, overwrite: bool) -> str | None:
    """Refuse an ``out_dir`` a run may not use (nothing is changed): returns its run status
    (None for a new or empty folder).

    New or empty: fine. Holds an unfinished alignkit run (status running, failed or
    interrupted): fine, the run resumes from its checkpoint. Holds a finished run: refused
    unless ``overwrite``. Anything else: refused (never delete a folder alignkit did not write).
    """
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise AlignkitError(f"out_dir {out_dir} is a file: expected a folder for the run")
    if not any(out_dir.iterdir()):
        return None
    status = read_status(out_dir)
    if status is None:
        raise AlignkitError(
            f"out_dir {out_dir} exists and is not an alignkit training run: pick another out_dir"
        )
    if status not in UNFINISHED and not overwrite:
        raise AlignkitError(
            f"out_dir {out_dir} already holds a finished run: pass overwrite=True to replace "
            "it, or pick another out_dir"
        )
    return status


def prepare_out_dir(out_dir: Path, *, overwrite: bool) -> Path | None:
    """Make ``out_dir`` ready for a run (after :func:`check_out_dir`); returns the folder an
    overwritten run was moved to (see :func:`end_out_dir`), or None. Without ``overwrite`` an
    unfinished run stays and resumes; with it, an earlier run is moved aside."""
    status = check_out_dir(out_dir, overwrite=overwrite)
    if status is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        return None
    if not overwrite:
        log.info("%s holds an unfinished run (%s): resuming it", out_dir, status)
        return None
    aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, aside)  # atomic: the old run is whole until the new one is done
    out_dir.mkdir()
    return aside


def end_out_dir(
    out_dir: Path, aside: Path | None, body: dict[str, Any], error: BaseException | None
) -> None:
    """Leave ``out_dir`` saying how the run ended.

    ``error`` None: the run is done; an overwritten old run is deleted. Otherwise an overwritten
    old run is put back (the new run's files are removed), or, without one, run.json records
    ``failed`` with the error's first line (``interrupted`` for Ctrl-C) and the checkpoint stays.
    """
    if error is None:
        write_run_file(out_dir, {**body, "status": "done", "finished": now()})
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return
    if aside is not None and aside.exists():
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(aside, out_dir)
        log.warning("the new run failed: the earlier run in %s is back in place", out_dir)
        return
    interrupted = isinstance(error, KeyboardInterrupt)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    write_run_file(
        out_dir,
        {
            **body,
            "status": "interrupted" if interrupted else "failed",
            "stopped": now(),
            **({} if interrupted else {"error": f"{type(error).__name__}: {reason}"}),
        },
    )


# -- the fits of encoders fitted on their training texts ------------------------------------------
def fit_folder(run_dir: str | Path, modality: str) -> Path:
    """Where a run folder keeps the fit of its ``modality`` (``image`` or ``text``) encoder."""
    return Path(run_dir) / FITS / modality


def save_fits(out_dir: str | Path, encoders: Sequence[Encoder]) -> None:
    """Save the fit of every encoder with ``needs_fit`` (already fitted on the training probe)
    into ``out_dir`` (:func:`fit_folder`); other encoders have nothing to save."""
    for enc in encoders:
        if getattr(enc, "needs_fit", False):
            enc.save_fit(fit_folder(out_dir, enc.modality))


def load_fit(run_dir: str | Path, encoder: Encoder, weights: str = "") -> Encoder:
    """``encoder`` (built from the run's spec and options) given the fit the run trained with,
    when it has ``needs_fit``; any other encoder is returned untouched. ``weights``: the weights
    identity the run recorded for it (checked when given).

    Raises:
        AlignkitError (one line naming the file): the run folder holds no fit for it, the fit
            is damaged, or it is not the fit the projectors were trained on.
    """
    if not getattr(encoder, "needs_fit", False):
        return encoder
    folder = fit_folder(run_dir, encoder.modality)
    if not folder.is_dir():
        raise AlignkitError(
            f"{folder} is missing: {encoder.name} is fitted on the training captions and the "
            "projectors need that fit, which this run folder does not hold; retrain the run"
        )
    encoder.load_fit(folder)  # its errors name the file and say to retrain
    have = encoder.weights_identity()
    if weights and have != weights:
        raise AlignkitError(
            f"{folder} holds the fit {have!r}, but the projectors in {run_dir} were trained on "
            f"{weights!r}: the fit does not belong to this run; retrain the run"
        )
    return encoder
