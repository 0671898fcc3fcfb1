"""Does an evaluation probe hold rows the run was trained or validated on?

A trained run's config.json records its training probe (``probe``: spec, n, fingerprint) and its
validation probe (``val``: name, n, fingerprint). Those probes are loaded again (cheap: no model)
and every evaluation row is compared with them by row id and captions
(:func:`alignkit.features.row_identity`: ids alone collide between unrelated webdataset sets) and
by image content (sha256 of the image bytes), so a renamed copy of a training image counts as
overlap too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenRows:
    """The rows (id and captions) and image digests a run was trained and validated on."""

    ids: frozenset[tuple[str, tuple[str, ...]]]
    digests: frozenset[str]
    source: str  # what they come from, for messages

    def count(self, probe: Any) -> int:
        """Rows of ``probe`` whose id and captions, or image content, are among these rows."""
        from alignkit.features.paired import row_identity

        return sum(
            1 for r in probe.rows if row_identity(r) in self.ids or r.image_digest() in self.digests
        )


def _reload(record: Mapping[str, Any]) -> Any:
    """The probe a config.json record names (spec or name, n), checked by fingerprint."""
    from alignkit.probes import load_probe

    spec = record.get("spec") or str(record.get("name", "")).split("[")[0]
    if not spec:
        return None
    probe = load_probe(spec, progress=False)
    n = record.get("n")
    if n is not None and n < len(probe):
        probe = probe.subsample(int(n))
    want = record.get("fingerprint")
    if want and probe.fingerprint != want:
        return None
    return probe


def seen_rows(run_dir: str | Path, cfg: Mapping[str, Any]) -> SeenRows | None:
    """The training and validation rows of the run whose config is ``cfg``; ``None`` when its
    config.json records no probe, or the recorded probe cannot be loaded here as it was (then
    overlap cannot be checked, and a warning says so)."""
    records = [("training", cfg.get("probe")), ("validation", cfg.get("val"))]
    records = [(kind, r) for kind, r in records if isinstance(r, Mapping)]
    if not records:
        return None
    from alignkit.features.paired import row_identity

    ids: set[tuple[str, tuple[str, ...]]] = set()
    digests: set[str] = set()
    for kind, record in records:
        try:
            probe = _reload(record)
        except AlignkitError:
            probe = None
        if probe is None:
            log.warning(
                "%s: cannot load the %s probe %s as it was at training time; its overlap with "
                "the evaluation probes is not checked",
                run_dir, kind, record.get("spec") or record.get("name"),
            )  # fmt: skip
            continue
        ids.update(row_identity(r) for r in probe.rows)
        digests.update(r.image_digest() for r in probe.rows)
    return SeenRows(frozenset(ids), frozenset(digests), str(run_dir)) if ids else None


def check_overlap(
    run_dir: str | Path, cfg: Mapping[str, Any], probes: list[Any], *, allow: bool
) -> dict[str, tuple[int, int]]:
    """``{probe name: (overlapping rows, rows)}`` for the probes that overlap the run's
    training or validation rows.

    Raises:
        AlignkitError: some probe overlaps and ``allow`` is false (names the probe, the count
            and the option that allows it).
    """
    seen = seen_rows(run_dir, cfg)
    if seen is None:
        return {}
    found = {}
    for probe in probes:
        k = seen.count(probe)
        if k:
            found[probe.name] = (k, len(probe))
    if found and not allow:
        name, (k, n) = next(iter(found.items()))
        more = f" (and {len(found) - 1} more probes)" if len(found) > 1 else ""
        raise AlignkitError(
            f"{k} of {n} rows of {name}{more} are rows the run {run_dir} was trained or "
            "validated on (same row id and captions, or same image): its numbers would not be "
            "held out; evaluate on another split, or pass allow_overlap=True to evaluate anyway "
            "(the numbers are then marked)"
        )
    return found


__all__ = ["SeenRows", "check_overlap", "seen_rows"]
