"""The default recipe follows the data: TrainConfig fields left "auto", resolved for n images.

:func:`resolve_recipe` turns a :class:`TrainConfig` whose ``batch_size`` and/or ``epochs`` are
``"auto"`` into one with numbers, for a training set of ``n_images`` images, and says what it
chose and why. A value the user gave is never changed, only checked: a batch larger than the data
is an error (it used to be clamped silently). The trainer calls it first and records the resolved
config (checkpoint, ``config.json``), so a run folder says what was actually used.

The rule (measured on Flickr8k with linear projectors, InfoNCE and every caption, at 500 to
6,000 images on two encoder pairs: ``benchmarks/small_data.py``; docs/training-results.md,
"Small training sets", has the sweep)::

    batch_size = the largest power of two <= n_images / BATCH_FRACTION (4), within
                 [MIN_BATCH, MAX_BATCH] = [16, 512], and never above n_images
    epochs     = max(MIN_EPOCHS, ceil(MIN_STEPS / steps_per_epoch)) = max(10, ceil(60 / ...))

At 6,000 images that is the recipe tuned there (batch 512, 10 epochs, 110 steps: unchanged); at
500 to 2,000 images a batch of a quarter to an eighth of the data, 4 to 7 steps an epoch, 10
epochs (at 1,000 images: batch 128, 70 steps, instead of 10 steps of 512 with 488 images left out
of each). Contrastive learning wants the large batches (more negatives a step: at 1,000 images
batch 32-64 lost 3 points of dev recall against 128-256) and small data wants few epochs (at
batches of n/16 to n/8, 20 epochs ended below 10 in every run: the dev recall peaks early and
falls as the projector memorises the training captions).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.training.config import AUTO, TrainConfig

__all__ = ["RecipeNote", "resolve_recipe", "auto_batch_size", "auto_epochs", "TOO_FEW_IMAGES"]

BATCH_FRACTION = 4  # at least 4 optimizer steps an epoch
MIN_BATCH = 16
MAX_BATCH = 512
MIN_STEPS = 60  # a cosine schedule shorter than this under-trains (30 steps lost 2-7 points)
MIN_EPOCHS = 10
# Flickr8k dev mean recall 1.1 / 6.3 / 8.5 / 11.8 / 17.3 from 3 / 25 / 50 / 100 / 200 images
TOO_FEW_IMAGES = 100
FEW_STEPS = 30  # a user-given schedule shorter than this is reported


@dataclass(frozen=True)
class RecipeNote:
    """One line about the recipe: what ``"auto"`` became, or a warning (``warning=True``)."""

    message: str
    warning: bool = False


def auto_batch_size(n_images: int) -> int:
    """Images per optimizer step for ``n_images`` training images: the largest power of two
    <= ``n_images / BATCH_FRACTION``, clipped to [MIN_BATCH, MAX_BATCH], and at most ``n_images``.
    """
    target = max(1, n_images // BATCH_FRACTION)
    power = 1 << (target.bit_length() - 1)
    return min(n_images, max(MIN_BATCH, min(MAX_BATCH, power)))


def auto_epochs(n_images: int, batch_size: int) -> int:
    """MIN_EPOCHS epochs, or more where that is fewer than MIN_STEPS optimizer steps at
    ``batch_size`` images a step (the last, short batch of an epoch is dropped)."""
    per_epoch = max(1, n_images // batch_size)
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / per_epoch))


def resolve_recipe(config: TrainConfig, n_images: int) -> tuple[TrainConfig, list[RecipeNote]]:
    """``config`` with every ``"auto"`` field resolved for ``n_images`` training images, and notes.

    Returns (the resolved TrainConfig, a list of :class:`RecipeNote`: one per resolved field, plus
    warnings: fewer than TOO_FEW_IMAGES images (too few to learn anything that carries over to
    new images), or a user-given schedule of fewer than FEW_STEPS optimizer steps). A config
    without ``"auto"`` comes back equal. Pure: nothing is logged or written.

    Raises :class:`AlignkitError` when ``n_images`` < 2 or a user-given ``batch_size`` exceeds
    ``n_images`` (pass a smaller one, or leave the default ``"auto"``).
    """
    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 2:
        raise AlignkitError(
            f"a contrastive recipe needs at least 2 training images: got n_images={n_images!r}"
        )
    notes: list[RecipeNote] = []
    batch = config.batch_size
    if batch == AUTO:
        batch = auto_batch_size(n_images)
        notes.append(
            RecipeNote(
                f"batch_size auto -> {batch} images a step ({n_images} training images: "
                f"the largest power of two <= n/{BATCH_FRACTION}, within "
                f"[{MIN_BATCH}, {MAX_BATCH}])"
            )
        )
    elif batch > n_images:
        raise AlignkitError(  # in words both a Python and a CLI user can act on
            f"a batch size of {batch} is larger than the training set ({n_images} images): give "
            f"one of at most {n_images}, or leave it unset (the default, auto, takes "
            f"{auto_batch_size(n_images)} here)"
        )
    per_epoch = max(1, n_images // batch)
    epochs = config.epochs
    if epochs == AUTO:
        epochs = auto_epochs(n_images, batch)
        notes.append(
            RecipeNote(
                f"epochs auto -> {epochs} ({per_epoch} steps an epoch, {epochs * per_epoch} "
                f"steps in all: at least {MIN_EPOCHS} epochs and {MIN_STEPS} steps)"
            )
        )
    elif epochs * per_epoch < FEW_STEPS:
        notes.append(
            RecipeNote(
                f"epochs={epochs} x {per_epoch} steps an epoch (batch_size={batch}, {n_images} "
                f"images) is only {epochs * per_epoch} optimizer steps: the projector is likely "
                f"under-trained; leave epochs and batch_size at their default 'auto' "
                f"({auto_epochs(n_images, auto_batch_size(n_images))} epochs of "
                f"{auto_batch_size(n_images)} here)",
                warning=True,
            )
        )
    if n_images < TOO_FEW_IMAGES:
        notes.append(
            RecipeNote(
                f"only {n_images} training images: fewer than {TOO_FEW_IMAGES} teach a projector "
                "little that carries over to new images (Flickr8k dev mean recall: 1.1 from 3 "
                "images, chance 0.5; 8.5 from 50; 26 from 500); train on more images where "
                "you have them",
                warning=True,
            )
        )
    resolved = dataclasses.replace(config, batch_size=batch, epochs=epochs)
    return resolved, notes
