"""TrainConfig: every hyperparameter of one projector training run, frozen and JSON-able."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from alignkit.errors import AlignkitError

__all__ = ["TrainConfig", "PRECISIONS", "CAPTION_MODES", "EARLY_STOP_METRICS", "AUTO"]

AUTO = "auto"  # batch_size / epochs resolved for the data (alignkit.projectors.recipe)

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
    :func:`alignkit.projectors.recipe.resolve_recipe` (batch 512 and 10 epochs at 6,000 images;
    smaller batches and more epochs for fewer). Stopping early while the learning rate is still
    near its peak cost 2-4 recall points.

    Model
      projector   registry key (``alignkit.projectors.PROJECTORS``): the pooled projector of both
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
      epochs, batch_size (images per global step, split across ranks; ``"auto"``: for the
      data, see alignkit.projectors.recipe), lr (peak, AdamW),
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

    projector: str = "linear"
    text_head: str = "mlp_head"
    width: int = 512
    hidden: int | None = None
    dropout: float = 0.0
    loss: str = "clip"
    captions: str = "all"
    epochs: int | str = AUTO
    batch_size: int | str = AUTO
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup: float = 0.05
    clip_grad: float | None = 1.0
    precision: str = "auto"
    seed: int = 0
    eval_every: int = 0
    patience: int | None = 5
    early_stop_metric: str = "mean_recall"

    def __post_init__(self) -> None:
        from alignkit.errors import unknown_key
        from alignkit.projectors.losses import LOSSES
        from alignkit.projectors.modules import PROJECTORS

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
