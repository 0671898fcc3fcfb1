"""TrainConfig: every hyperparameter of one projector training run, frozen and JSON-able."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.features.store import check_store_dtype
from alignkit.options import option
from alignkit.vocabulary import shared

__all__ = [
    "TrainConfig", "TrainRunConfig", "PRECISIONS", "CAPTION_MODES", "EARLY_STOP_METRICS", "AUTO",
]  # fmt: skip

AUTO = "auto"  # batch_size / epochs resolved for the data (alignkit.training.recipe)


def _auto_or_int(value: str) -> int | str:
    """A command-line ``auto`` or whole number (``--batch-size 128``, ``--epochs auto``)."""
    return AUTO if value.strip().lower() == AUTO else int(value)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")
CAPTION_MODES = ("one", "all")
EARLY_STOP_METRICS = (
    "mean_recall",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "val_loss",
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a projector training run.

    The defaults are the recipe measured best on Flickr8k (docs/training-results.md): a linear
    projector, InfoNCE, every caption of an image as its positives, a cosine schedule that decays
    to 0, and ``batch_size`` / ``epochs`` ``"auto"``: chosen for the number of training images by
    :func:`alignkit.training.recipe.resolve_recipe` (batch 512 and 10 epochs at 6,000 images;
    smaller batches, and more epochs where the steps are few, for less data). Stopping early while
    the learning rate is still near its peak cost 2-4 recall points.

    Model
      projector   registry key (``alignkit.training.PROJECTORS``): the pooled projector of both
                  towers, or, on token-level features, the per-token projection of image patches,
                  of the image CLS token and of text tokens (freeze-align uses ``residual``)
      text_head   token-level text only: the head after the masked mean (freeze-align: ``mlp_head``)
      width       shared embedding width D
      hidden      hidden width of mlp/residual/glu (None: ``width``)
      dropout     dropout probability where the projectors have one (freeze-align: 0.1)
    Loss
      loss        ``clip`` (InfoNCE, learnable temperature) or ``siglip`` (sigmoid, scale + bias)
      captions    ``one``: one random caption of each image per step; ``all``: every caption of
                  the batch's images, as positives of their image
    Optimisation
      epochs, batch_size (images per global step, split across ranks), lr (peak, AdamW),
      weight_decay (AdamW, on matrices only; norms, biases and loss scalars get none),
      warmup (fraction of all steps, linear from 0 to lr; then cosine to 0),
      clip_grad (max global L2 norm of the gradient; None: no clipping),
      precision (``auto``: bf16 autocast on CUDA where supported, else fp16 with a grad scaler;
      always fp32 on CPU; ``fp32``; ``bf16``; ``fp16``; ``fp64`` runs the projectors in float64)
      seed        seeds initialisation, batch order, caption sampling and dropout
    Validation and checkpoints
      eval_every        steps between validations and checkpoints (0: at each epoch's end)
      patience          stop after this many validations without improvement (None: never)
      early_stop_metric one of EARLY_STOP_METRICS (recalls in %, higher is better; val_loss lower)
    """

    projector: str = option(
        "linear",
        "Projector of both towers: linear, mlp (Linear-GELU-Linear), residual (linear + MLP "
        "branch, freeze-align's), glu (gated, SAIL).",
        metavar="NAME",
    )
    text_head: str = option(
        "mlp_head", "Token-level text only: the head after the masked mean.", metavar="NAME"
    )
    width: int = option(512, "Shared embedding width.", metavar="D")
    hidden: int | None = option(
        None, "Hidden width of mlp/residual/glu. Default: --width.", metavar="H", type=int
    )
    dropout: float = option(0.0, "Dropout probability in the projectors, in [0, 1).", metavar="P")
    loss: str = option(
        "clip",
        "clip (InfoNCE, learnable temperature) or siglip (sigmoid, scale + bias).",
        metavar="NAME",
    )
    captions: str = option(
        "all",
        "one (a random caption of each image per step) or all (every caption a positive).",
        metavar="MODE",
    )
    epochs: int | str = option(
        AUTO,
        "Epochs; the cosine schedule decays to 0 over them. auto: 10, or more where that is "
        "under 60 optimizer steps (alignkit.training.recipe).",
        metavar="E|auto",
        type=str,
        from_cli=_auto_or_int,
    )
    batch_size: int | str = option(
        AUTO,
        "Images per optimizer step (global, split across torchrun ranks); at most the "
        "training set's size, and at least 2. auto: the largest power of two <= a quarter of "
        "the training images, within [16, 512] (512 at 6,000 images).",
        metavar="B|auto",
        type=str,
        from_cli=_auto_or_int,
    )
    lr: float = option(1e-3, "Peak learning rate of AdamW.", metavar="LR")
    weight_decay: float = option(0.02, "AdamW weight decay on matrices.", metavar="WD")
    warmup: float = option(
        0.05, "Fraction of the steps with a linear warmup, then cosine decay.", metavar="F"
    )
    clip_grad: float | None = option(
        1.0, "Max gradient L2 norm; 0 = no clipping.", metavar="NORM", type=float
    )
    precision: str = option(
        "auto",
        "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16, fp64.",
        metavar="NAME",
    )
    seed: int = shared("seed")
    eval_every: int = option(
        0, "Steps between validations and checkpoints; 0 = every epoch.", metavar="STEPS"
    )
    patience: int | None = option(
        5,
        "Stop after this many validations without improvement; 0 = never.",
        metavar="K",
        type=int,
    )
    early_stop_metric: str = option(
        "mean_recall", "mean_recall, i2t_r1/5/10, t2i_r1/5/10 or val_loss.", metavar="NAME"
    )

    def __post_init__(self) -> None:
        from alignkit.errors import unknown_key
        from alignkit.training.losses import LOSSES
        from alignkit.training.modules import PROJECTORS

        if self.projector not in PROJECTORS:
            raise unknown_key("projector (TrainConfig.projector)", self.projector, list(PROJECTORS))
        if self.text_head not in PROJECTORS:
            raise unknown_key("text head (TrainConfig.text_head)", self.text_head, list(PROJECTORS))
        if self.loss not in LOSSES:
            raise unknown_key("loss (TrainConfig.loss)", self.loss, list(LOSSES))
        if self.captions not in CAPTION_MODES:
            raise unknown_key("caption mode (TrainConfig.captions)", self.captions, CAPTION_MODES)
        if self.precision not in PRECISIONS:
            raise unknown_key("precision (TrainConfig.precision)", self.precision, PRECISIONS)
        if self.early_stop_metric not in EARLY_STOP_METRICS:
            raise unknown_key(
                "metric (TrainConfig.early_stop_metric)", self.early_stop_metric, EARLY_STOP_METRICS
            )
        _positive_int("width", self.width)
        for name in ("epochs", "batch_size"):  # "auto": resolve_recipe picks it for the data
            if getattr(self, name) != AUTO:
                _positive_int(name, getattr(self, name), "; or 'auto' to fit it to the data")
        if self.batch_size != AUTO and self.batch_size < 2:
            raise AlignkitError(
                "TrainConfig.batch_size must be >= 2: a contrastive loss needs another image in "
                f"the batch as a negative (with 1 the loss is exactly 0): got {self.batch_size}"
            )
        if self.hidden is not None:
            _positive_int("hidden", self.hidden)
        if self.patience is not None:
            _positive_int("patience", self.patience)
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise AlignkitError(
                f"TrainConfig.eval_every must be an int >= 0: got {self.eval_every!r}"
            )
        if not isinstance(self.seed, int):
            raise AlignkitError(f"TrainConfig.seed must be an int: got {self.seed!r}")
        _in_range("dropout", self.dropout, 0.0, 1.0, upper_open=True)
        _in_range("warmup", self.warmup, 0.0, 1.0)
        if not self.lr > 0:
            raise AlignkitError(f"TrainConfig.lr must be > 0: got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise AlignkitError(f"TrainConfig.weight_decay must be >= 0: got {self.weight_decay!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise AlignkitError(
                f"TrainConfig.clip_grad must be > 0 or None: got {self.clip_grad!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a config file, a checkpoint); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise AlignkitError(
                f"unknown TrainConfig keys {unknown}; expected some of: {', '.join(sorted(names))}"
            )
        return cls(**values)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for the fields that differ."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _positive_int(name: str, value: object, alternative: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AlignkitError(
            f"TrainConfig.{name} must be a positive int: got {value!r}{alternative}"
        )


def _in_range(name: str, value: float, lo: float, hi: float, upper_open: bool = False) -> None:
    ok = lo <= value < hi if upper_open else lo <= value <= hi
    if not ok:
        bracket = ")" if upper_open else "]"
        raise AlignkitError(f"TrainConfig.{name} must lie in [{lo}, {hi}{bracket}: got {value!r}")


@dataclass(frozen=True)
class TrainRunConfig:
    """What one ``alignkit train`` run trains on and how it gets its features (the recipe is
    :class:`TrainConfig`). Each field is a command-line option and a ``--config`` file key."""

    vision: str | None = option(None, "Vision encoder spec.", short="-v", metavar="SPEC", type=str)
    text: str | None = option(None, "Text encoder spec.", short="-t", metavar="SPEC", type=str)
    probe: str = option(
        "flickr8k:train",
        "Training probe: one training split (a named probe's, or a manifest's `split` column "
        "as PATH:train), or webdataset shards, a CLIP_benchmark folder or HF parquet files.",
        short="-p",
        metavar="PROBE",
    )
    val: str | None = option(
        None,
        "Validation probe for early stopping and the best weights, disjoint from --probe by id "
        "and image content (e.g. flickr8k:dev); not a test split. Default: no validation "
        "(train --epochs, keep the last weights).",
        metavar="PROBE",
        type=str,
    )
    val_test_split: bool = option(
        False,
        "Allow a --val whose rows are a test split (its numbers then pick the weights: "
        "report them as validation, not as held-out test results).",
    )
    n: int | None = shared("n", help_extra="Of the training probe. Default: all rows.")
    val_n: int | None = option(
        None,
        "Validation rows: a seeded subsample of ROWS --val rows; 0 = all rows.",
        metavar="ROWS",
        type=int,
    )
    tokens: bool = option(
        False,
        "Token-level features (CNN map / ViT tokens / text token states, float16, "
        "memory-mapped) instead of pooled ones; both encoders must have token features.",
    )
    from_ranking: str | None = option(
        None,
        "A rank-encoders run folder: train its --top best real (non-control) pairs, each into "
        "OUT/<rank>-<vision>__<text>; a pair whose folder holds a finished run is kept, not "
        "retrained.",
        metavar="RUN_DIR",
        type=str,
    )
    top: int = option(3, "With --from-ranking: how many pairs.", metavar="K")
    cache_only: bool = option(
        False, "Never run an encoder: fail at once when a feature set is not in the cache."
    )
    device: str = shared("device")
    cache: str | bool = shared("cache")
    store_dtype: str = shared("store_dtype")
    extract_batch: int = shared("extract_batch")
    skip_bad: bool = shared("skip_bad")
    class_names: str | None = shared("class_names")
    image_column: str | None = shared("image_column")
    caption_columns: tuple[str, ...] = shared("caption_columns")
    id_column: str | None = shared("id_column")
    label_column: str | None = shared("label_column")
    threads: int | None = shared("threads")

    def __post_init__(self) -> None:
        for name in ("n", "val_n"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise AlignkitError(f"{name} must be a number of rows >= 0: got {value!r}")
        if not isinstance(self.top, int) or self.top < 1:
            raise AlignkitError(f"top must be >= 1: got {self.top!r}")
        if not isinstance(self.extract_batch, int) or self.extract_batch < 1:
            raise AlignkitError(f"extract_batch must be >= 1: got {self.extract_batch!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise AlignkitError(f"threads must be >= 1: got {self.threads!r}")
        check_store_dtype(self.store_dtype)
