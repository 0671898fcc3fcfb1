"""Say when a text encoder cuts the texts it is given (issue #16 item 5): once per encoder per
extraction, as one logged warning, and as a count in the FeatureSet's provenance, so that a
cached result says it too."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from alignkit.encoders.base import Encoder, Truncation

log = logging.getLogger("alignkit.features")


def _texts(probe: Any, caption_policy: str, seed: int) -> list[str]:
    """The texts an extraction of ``probe`` encodes under ``caption_policy``."""
    if caption_policy in ("all", "mean"):
        return [c for row in probe.rows for c in row.captions]
    return probe.captions(caption_policy, seed)


def check_truncation(
    enc: Encoder, probe: Any, caption_policy: str, seed: int, warn: bool = True
) -> dict[str, Any]:
    """Count the texts ``enc`` will cut, warn once when there are any, and return the provenance
    entry (``{"truncation": {"cut", "of", "limit", "longest"}}``; ``{}`` without a limit)."""
    cut = enc.truncation(_texts(probe, caption_policy, seed)) if enc.modality == "text" else None
    if cut is None:
        return {}
    if cut.cut and warn:
        log.warning("%s", cut.message(enc.name, f"probe {probe.name}"))
    return {"truncation": dataclasses.asdict(cut)}


def recall_truncation(provenance: dict[str, Any], probe: Any) -> None:
    """The same warning for features read from the cache (those written since it was counted)."""
    saved = provenance.get("truncation")
    if saved and saved.get("cut"):
        log.warning("%s", Truncation(**saved).message(provenance["encoder"], f"probe {probe.name}"))
