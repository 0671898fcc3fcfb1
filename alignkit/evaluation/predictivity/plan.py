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
    """``pairs`` in the grid, ``finished`` training runs already evaluated in the folder
    (reused), ``images`` and ``texts`` per encoder across every probe, a rough upper bound
    ``seconds`` (every feature uncached, every unfinished run trained for all its epochs), and
    ``extra_runs``: the runs of the extra seeds (``repeated`` pairs x ``seeds``)."""

    pairs: int
    finished: int
    vision: int
    text: int
    images: int
    texts: int
    seconds: float
    extra_runs: int = 0
    repeated: int = 0
    seeds: tuple[int, ...] = ()

    def describe(self) -> str:
        todo = self.pairs + self.extra_runs - self.finished
        extra = ""
        if self.extra_runs:
            seeds = ", ".join(map(str, self.seeds))
            extra = f", {self.repeated} of them trained again with seeds {seeds}"
        what = "pairs" if not self.extra_runs else "runs"
        done = ""
        if self.finished:
            done = f", {self.finished} {'runs ' * bool(self.extra_runs)}already finished (reused)"
        return (
            f"plan: {self.pairs} pairs ({self.vision} vision x {self.text} text encoders)"
            f"{extra}{done}; features of {self.images} images and {self.texts} texts per "
            f"encoder; {todo} {what} to train and evaluate; rough estimate up to "
            f"{_duration(self.seconds)} (cached features make it much less)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def make_plan(config: Any, probes: dict[str, Any], finished: int, device: str) -> Plan:
    """The plan of ``config`` over its loaded ``probes`` (see :mod:`.stages`); ``finished``:
    training runs already evaluated."""
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
    extra = len(config.runs) - len(config.pairs)
    todo = len(config.runs) - finished
    seconds = (
        len(config.vision) * images * IMAGE_S
        + len(config.text) * texts * TEXT_S
        + todo * epochs * len(probes["train"]) * TRAIN_ROW_EPOCH_S
    )
    if str(device).startswith("cuda"):
        seconds /= GPU_SPEEDUP
    return Plan(
        len(config.pairs), finished, len(config.vision), len(config.text), images, texts, seconds,
        extra, len(config.repeated_pairs), tuple(config.seeds),
    )  # fmt: skip


__all__ = ["Plan", "make_plan"]
