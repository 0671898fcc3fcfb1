"""Human judgements of image-caption pairs: reading the files, and the correlation protocol.

Three layouts are read (tab-separated, no quoting):

* ``simple``: ``image, caption, score`` (an optional header line). ``caption`` is the text or a
  caption id ``<image>#<k>``; one correlation row per line.
* ``expert``: Flickr8k-Expert's ``ExpertAnnotations.txt`` (Hodosh et al. 2013): ``image, caption
  id, score, score, score``, three expert scores from 1 (no relation) to 4 (describes the image
  without errors).
* ``crowdflower``: Flickr8k's ``CrowdFlowerAnnotations.txt``: ``image, caption id, fraction of
  yes votes, yes votes, no votes``.

The official layouts follow the protocol of CLIPScore (Hessel et al. 2021, "CLIPScore: A
Reference-free Evaluation Metric for Image Captioning", appendix A, and its
``flickr8k_example``): for Expert, one correlation row per expert rating (three per judged pair,
each with the pair's model score), the pairs whose caption is one of the judged image's own
reference captions left out (as SPICE did), and Kendall tau-c; for CrowdFlower, one row per
judged pair with the fraction of yes votes as its score, and Kendall tau-b. Every number records
the layout and the protocol it follows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError, unknown_key

LAYOUTS = ("auto", "simple", "expert", "crowdflower")

# layout -> (how the rows are made, the Kendall variant CLIPScore reports for it)
PROTOCOLS: dict[str, tuple[str, str | None]] = {
    "simple": ("one row per line of the file, its score as given", None),
    "expert": (
        "Flickr8k-Expert as CLIPScore (Hessel et al. 2021): one row per expert rating (3 per "
        "judged pair); pairs whose caption is one of the image's own references left out",
        "c",
    ),
    "crowdflower": (
        "Flickr8k-CrowdFlower as CLIPScore (Hessel et al. 2021): one row per judged pair, its "
        "score the fraction of yes votes",
        "b",
    ),
}


@dataclass(frozen=True)
class Judgements:
    """Correlation rows resolved against a probe: one per rating (``expert``) or per line.

    Attributes:
        rows: the probe row index of the judged image, per correlation row.
        captions: the judged caption's text, per row.
        scores: the human score, per row (1-4 for ``expert``, a fraction in [0, 1] for
            ``crowdflower``).
        layout: ``simple``, ``expert`` or ``crowdflower``.
        skipped: judged pairs left out by the protocol (``expert``: the caption is one of the
            image's own references).
    """

    rows: tuple[int, ...]
    captions: tuple[str, ...]
    scores: tuple[float, ...]
    layout: str = "simple"
    skipped: int = 0


def _expert_scores(fields: list[str]) -> list[float] | None:
    try:
        scores = [float(s) for s in fields]
    except ValueError:
        return None
    return scores if all(s in (1.0, 2.0, 3.0, 4.0) for s in scores) else None


def _crowdflower_score(fields: list[str]) -> float | None:
    try:
        share, yes, no = float(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    if yes < 0 or no < 0 or yes + no == 0 or abs(share - yes / (yes + no)) > 1e-4:
        return None
    return share


def _which(fields: list[str]) -> str | None:
    """The official layout a 5-field line fits, or ``None``."""
    if _expert_scores(fields[2:]) is not None:
        return "expert"
    if _crowdflower_score(fields[2:]) is not None:
        return "crowdflower"
    return None


def _records(path: Path, layout: str) -> tuple[str, list[tuple[int, list[str]]]]:
    """The file's layout and its (line number, fields) records, after checking each line."""
    records = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, rec in enumerate(reader, start=1):
            if rec and "".join(rec).strip():
                records.append((lineno, [x.strip() for x in rec]))
    if not records:
        raise AlignkitError(f"{path}: no judgements in the file")
    width = len(records[0][1])
    if layout == "auto":
        first = records[0][1]
        layout = "simple" if width == 3 else (_which(first) or "expert") if width == 5 else ""
    want = 3 if layout == "simple" else 5
    for lineno, rec in records:
        if len(rec) != want or not layout:
            raise AlignkitError(
                f"{path}:{lineno}: expected 3 tab-separated fields (image, caption, score) or 5 "
                "(Flickr8k ExpertAnnotations: image, caption id, 3 scores 1-4; CrowdFlower"
                "Annotations: image, caption id, fraction yes, yes votes, no votes): "
                f"got {len(rec)}"
            )
        if layout != "simple" and _which(rec) != layout:
            what = (
                "an ExpertAnnotations line needs three expert scores, each 1, 2, 3 or 4"
                if layout == "expert"
                else "a CrowdFlowerAnnotations line needs the fraction of yes votes (= yes / "
                "(yes + no)) and the two vote counts"
            )
            raise AlignkitError(f"{path}:{lineno}: {what}: got {' '.join(rec[2:])!r}")
    return layout, records


class _Resolver:
    """Probe row of an image name, and caption text of a caption id ``<image>#<k>``."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.by_name = {row.id: i for i, row in enumerate(probe.rows)}
        for i, row in enumerate(probe.rows):
            if not callable(row.image):
                self.by_name.setdefault(Path(row.image).name, i)
                self.by_name.setdefault(Path(row.image).stem, i)

    def image(self, name: str) -> int | None:
        return self.by_name.get(name, self.by_name.get(Path(name).stem))

    def caption(self, text: str, must_be_id: bool) -> str | None:
        m = re.fullmatch(r"(.+)#(\d+)", text)
        j = self.image(m.group(1)) if m else None
        if j is not None:
            k = int(m.group(2))  # type: ignore[union-attr]  # j is set only when m matched
            captions = self.probe.rows[j].captions
            return captions[k] if k < len(captions) else None
        return None if (m or must_be_id or not text) else text


def read_judgements(path: str | Path, probe: Any, layout: str = "auto") -> Judgements:
    """Read a judgements file in one of :data:`LAYOUTS` (``auto``: 3 fields are ``simple``;
    5 are ``expert`` or ``crowdflower``, told apart by their scores) against ``probe``.

    ``image`` is a probe row id or an image file name (``123_abc.jpg`` or its stem); a caption
    id ``<image>#<k>`` is the k-th caption of that probe row (Flickr8k's ids, which may name
    another image than the judged one). See the module docstring for the protocol of each layout.

    Raises:
        AlignkitError: an unknown layout, a malformed line (its number and what was expected),
            images or caption ids not in the probe (how many, and the first few), fewer than 3
            correlation rows.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise unknown_key("judgements layout", layout, LAYOUTS)
    if not path.is_file():
        raise AlignkitError(
            f"judgements file {path} not found; give a TSV of image, caption, score, or "
            "Flickr8k's ExpertAnnotations.txt / CrowdFlowerAnnotations.txt"
        )
    layout, records = _records(path, layout)
    find = _Resolver(probe)
    rows, caps, scores = [], [], []
    bad: dict[str, list[str]] = {"images": [], "caption ids": []}
    skipped = 0
    for lineno, rec in records:
        image, caption = rec[0], rec[1]
        if layout == "simple":
            try:
                values = [float(rec[2])]
            except ValueError:
                if lineno == records[0][0]:
                    continue  # a header
                raise AlignkitError(
                    f"{path}:{lineno}: the score must be a number: got {rec[2]!r}"
                ) from None
        elif layout == "expert":
            values = _expert_scores(rec[2:]) or []
        else:
            values = [_crowdflower_score(rec[2:]) or 0.0]
        i = find.image(image)
        if i is None:
            bad["images"].append(image)
            continue
        text = find.caption(caption, must_be_id=layout != "simple")
        if text is None:
            bad["caption ids"].append(caption)
            continue
        if layout == "expert" and text in probe.rows[i].captions:
            skipped += 1  # the image's own reference caption (SPICE, CLIPScore)
            continue
        for value in values:
            rows.append(i)
            caps.append(text)
            scores.append(value)
    for what, names in bad.items():
        if names:
            uniq = list(dict.fromkeys(names))
            raise AlignkitError(
                f"{path}: {len(names)} judgements name {what} not in probe {probe.name} "
                f"({len(uniq)} distinct: {', '.join(uniq[:5])}{', ...' if len(uniq) > 5 else ''}); "
                "give the probe they come from"
            )
    if len(rows) < 3:
        raise AlignkitError(f"{path}: need 3 or more judgements to correlate: got {len(rows)}")
    return Judgements(tuple(rows), tuple(caps), tuple(scores), layout, skipped)


def correlations(model: Sequence[float], judgements: Judgements, name: str) -> dict[str, Any]:
    """Kendall tau-b, tau-c and Spearman rho (``scipy.stats``) between the model's score of each
    correlation row and the human score, each recording its layout and protocol.

    Returns:
        ``{"judgements/<name>/kendall_tau_c": {"value", "n", "chance": 0.0, "p", "layout",
        "protocol"}, ...}``; ``n`` counts correlation rows (ratings for ``expert``).
    """
    from scipy import stats

    human = judgements.scores
    if len(model) != len(human):
        raise AlignkitError(
            f"need one model score per judgement row: got {len(model)} for {len(human)}"
        )
    rows, reported = PROTOCOLS[judgements.layout]
    if judgements.skipped:
        rows += f" ({judgements.skipped} such pairs)"
    out = {}
    for key, result, variant in (
        ("kendall_tau_b", stats.kendalltau(model, human, variant="b"), "b"),
        ("kendall_tau_c", stats.kendalltau(model, human, variant="c"), "c"),
        ("spearman", stats.spearmanr(model, human), None),
    ):
        if reported is None:
            note = ""
        elif variant == reported:
            note = "; the statistic CLIPScore reports for this layout"
        else:
            note = f"; CLIPScore reports Kendall tau-{reported} for this layout, not this one"
        out[f"judgements/{name}/{key}"] = {
            "value": float(result.statistic),
            "n": len(human),
            "chance": 0.0,
            "p": float(result.pvalue),
            "layout": judgements.layout,
            "protocol": rows + note,
        }
    return out
