"""Helpers shared by the encoder backends: token pooling, layer stacking, weight-file hashes,
installed-package lookup and picklable image transforms."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit._files import atomic_write_text, file_hash
from alignkit._paths import cache_dir
from alignkit.errors import AlignkitError
from alignkit.images import to_rgb

log = logging.getLogger("alignkit.encoders")

# ------------------------------------------------------------------------------------------------
# pooling


def _first_last_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and of the last non-padding token of each row; works for left and right
    padding. mask: (B, T) of 0/1."""
    t = mask.shape[1]
    first = mask.int().argmax(dim=1)  # (B,)
    last = t - 1 - mask.int().flip(1).argmax(dim=1)  # (B,)
    return first, last


def pool_tokens(
    tokens: torch.Tensor,
    pooling: str,
    *,
    n_prefix: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool token states ``(B, T, D)`` into ``(B, D)`` (``(B, 2D)`` for ``cls+mean``).

    Images (``mask is None``): ``cls`` = token 0, ``mean`` = mean of the patch tokens (after the
    ``n_prefix`` class/register tokens), ``mean_all`` = mean of every token including the prefix
    (the freeze-align reference code's pooling).
    Text (``mask`` (B, T) given, left or right padding): ``cls`` = first non-padding token,
    ``last`` = last non-padding token, ``mean`` = mean over the non-padding tokens (the
    sentence-transformers convention, special tokens included).
    """
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    if mask is None:
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "mean":
            return tokens[:, n_prefix:].mean(dim=1)
        if pooling == "mean_all":
            return tokens.mean(dim=1)
        if pooling == "cls+mean":
            return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=-1)
        if pooling == "last":
            return tokens[:, -1]
    else:
        mask = mask.to(tokens.device)
        first, last = _first_last_index(mask)
        if pooling == "cls":
            return tokens[rows, first]
        if pooling == "last":
            return tokens[rows, last]
        weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
        mean = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if pooling == "mean":
            return mean
        if pooling == "cls+mean":
            return torch.cat([tokens[rows, first], mean], dim=-1)
    raise AlignkitError(f"pooling {pooling!r} cannot be applied to these tokens")


def stack_padded(pooled: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer ``(B, d_l)`` outputs of different widths -> ``(L, B, max d_l)``, zero-padded.

    Zero columns change no Gram matrix (``X Xᵀ``), no cosine and no Euclidean distance, so linear
    and RBF CKA and the neighbourhood metrics of a padded layer equal those of the unpadded one.
    """
    width = max(int(p.shape[-1]) for p in pooled)
    out = [torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in pooled]
    return torch.stack(out)


def parse_layer(layer: str | int) -> str | int:
    """``"last"``, ``"all"`` or an int (also given as a string such as ``"-2"``)."""
    if layer in ("last", "all"):
        return layer
    if isinstance(layer, bool):
        raise AlignkitError(f"layer must be 'last', 'all' or an integer index: got {layer!r}")
    if isinstance(layer, int):
        return layer
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        return int(layer)
    raise AlignkitError(f"layer must be 'last', 'all' or an integer index: got {layer!r}")


def check_layer_index(index: int, n_layers: int, spec: str) -> int:
    """A (possibly negative) layer index -> its non-negative position; error when out of range."""
    if not -n_layers <= index < n_layers:
        raise AlignkitError(
            f"layer {index} is out of range for {spec}: it has {n_layers} layers "
            f"(indices {-n_layers}..{n_layers - 1})"
        )
    return index % n_layers


def no_layers(layer: str | int, spec: str) -> None:
    """Backends without per-layer outputs accept ``layer="last"`` only."""
    if parse_layer(layer) != "last":
        raise AlignkitError(
            f"layer {layer!r} is not available for {spec}: it exposes only its final output; "
            "expected layer='last'"
        )


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Make a loaded model read-only, in place, before anything runs it: ``eval()`` (BatchNorm
    uses its stored running statistics and never updates them; dropout and drop-path are off) and
    ``requires_grad`` off on every parameter. Every backend calls this right after loading its
    weights, so no forward pass (not even one that measures layer widths) can change them."""
    model.eval()
    model.requires_grad_(False)
    return model


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic random initialisation without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------------
# identity of weights

_HASH_LOCK = threading.Lock()
_HASH_MEMO: dict[str, str] = {}


def _hash_index() -> Path:
    return cache_dir() / "weights" / "sha256-index.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in memory and in
    ``<cache_dir>/weights/sha256-index.json`` so that a large checkpoint is hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
        index_path = _hash_index()
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        if key not in index:
            index[key] = file_hash(path)
            with contextlib.suppress(OSError):
                atomic_write_text(index_path, json.dumps(index, indent=0, sort_keys=True))
        _HASH_MEMO[key] = index[key]
        return index[key]


def files_identity(paths: Sequence[str | Path]) -> str:
    """``sha256:<hex>`` of one file, or of the sorted per-file hashes of several."""
    hashes = sorted(file_sha256(p) for p in paths)
    if len(hashes) == 1:
        return f"sha256:{hashes[0]}"
    return "sha256:" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# installed packages


def dist_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def dist_file(name: str, suffix: str) -> Path | None:
    """The installed file of distribution ``name`` whose path ends with ``suffix`` (for packages
    whose folder is not importable, e.g. names with hyphens)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(str(dist.locate_file(f))).resolve()
    return None


def require(module: str, pip: str) -> Any:
    """Import an optional dependency, or fail naming the pip line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AlignkitError(f"this encoder needs the Python package {module!r}: {pip}") from exc


# ------------------------------------------------------------------------------------------------
# images


class ToRGB:
    """PIL image (any mode of :data:`alignkit.images.MODES`) -> upright 8-bit RGB PIL image, as
    :func:`alignkit.images.to_rgb` gives it. A class, so transforms stay picklable."""

    def __call__(self, image: Any) -> Any:
        return to_rgb(image)

    def __repr__(self) -> str:
        return "ToRGB()"


_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


@dataclass(frozen=True)
class ImageTransform:
    """RGB -> resize -> centre crop -> ``(3, H, W)`` float32 in [0, 1] -> normalise (or, with
    ``uint8_hwc``, stop after the crop and return ``(H, W, 3)`` uint8).

    ``resize``: an int resizes the shorter side to it (aspect kept, as torchvision's ``Resize``);
    a pair ``(H, W)`` resizes to exactly that. Resampling is PIL's (antialiased). A frozen
    dataclass of numbers, so it pickles into DataLoader workers and imports nothing heavy.
    """

    resize: int | tuple[int, int]
    crop: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"
    uint8_hwc: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise AlignkitError(
                f"interpolation must be one of {', '.join(_RESAMPLE)}: got {self.interpolation!r}"
            )

    def __call__(self, image: Any) -> torch.Tensor:
        import numpy as np

        img = ToRGB()(image)
        w, h = img.size
        if isinstance(self.resize, int):
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)
            size = (self.resize, new_long) if w <= h else (new_long, self.resize)  # (W, H)
        else:
            size = (int(self.resize[1]), int(self.resize[0]))
        if size != (w, h):
            img = img.resize(size, resample=_RESAMPLE[self.interpolation])
        if self.crop is not None:
            w, h = img.size
            top = int(round((h - self.crop) / 2.0))
            left = int(round((w - self.crop) / 2.0))
            img = img.crop((left, top, left + self.crop, top + self.crop))
        array = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
        if self.uint8_hwc:
            return torch.from_numpy(array.copy())
        x = torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std


def image_transform(
    *,
    resize: int | tuple[int, int],
    crop: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> ImageTransform:
    """The model's image preprocessing as a picklable :class:`ImageTransform`."""
    return ImageTransform(
        resize=resize if isinstance(resize, int) else (int(resize[0]), int(resize[1])),
        crop=crop,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=interpolation,
    )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tokenizer_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens each text takes under a Hugging Face tokenizer, uncut, special tokens included
    (``verbose=False``: no "longer than the maximum" warning of its own)."""
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return [len(i) for i in ids]
