"""What a predictivity run is about to do, and roughly how long it will take, before it starts.

The estimate is deliberately rough (a coarse per-row cost, measured on the 2-core CPU machines
this was built on, for small CNN and MiniLM encoders; larger encoders cost more, a GPU less): it
tells a user whether to expect minutes or hours, and features already in the cache cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: seconds per image / per text / per (training row x epoch) on CPU, and the GPU speed-up
IMAGE_S, TEXT_S, TRAIN_ROW_EPOCH_S, GPU_SPEEDUP = 0.03, 0.004, 5e-4, 10.0


@dataclass(frozen=True)
class Plan:
    """``pairs`` in the grid, ``finished`` already evaluated in the folder (reused), ``images``
    and ``texts`` per encoder across every probe, and a rough upper bound ``seconds`` (every
    feature uncached, every unfinished pair trained for all its epochs)."""

    pairs: int
    finished: int
    vision: int
    text: int
    images: int
    texts: int
    seconds: float

    def describe(self) -> str:
        todo = self.pairs - self.finished
        done = f", {self.finished} already finished (reused)" if self.finished else ""
        return (
            f"plan: {self.pairs} pairs ({self.vision} vision x {self.text} text encoders){done}; "
            f"features of {self.images} images and {self.texts} texts per encoder; "
            f"{todo} pairs to train and evaluate; rough estimate up to {_duration(self.seconds)} "
            "(cached features make it much less)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def make_plan(config: Any, probes: dict[str, Any], finished: int, device: str) -> Plan:
    """The plan of ``config`` over its loaded ``probes`` (see :mod:`.stages`)."""
    from alignkit.evaluation.prompts import caption_probe

    def captions(probe: Any) -> int:
        return len(caption_probe(probe)[0])

    every = [probes["score"], probes["train"], *probes["zeroshot"], *probes["retrieval"]]
    if probes.get("val") is not None:
        every.append(probes["val"])
    images = sum(len(p) for p in every)
    texts = len(probes["score"]) + sum(captions(p) for p in probes["retrieval"])
    train_texts = (
        captions(probes["train"]) if config.train_captions == "all" else len(probes["train"])
    )
    texts += train_texts + sum(len(p.class_names or []) for p in probes["zeroshot"])
    epochs = int(config.train_config().epochs)
    todo = len(config.pairs) - finished
    seconds = (
        len(config.vision) * images * IMAGE_S
        + len(config.text) * texts * TEXT_S
        + todo * epochs * len(probes["train"]) * TRAIN_ROW_EPOCH_S
    )
    if str(device).startswith("cuda"):
        seconds /= GPU_SPEEDUP
    return Plan(
        len(config.pairs), finished, len(config.vision), len(config.text), images, texts, seconds
    )


__all__ = ["Plan", "make_plan"]
