"""An extraction run, declared once: :class:`ExtractConfig` and :func:`extract`.

``alignkit extract`` is a thin layer over these: its options are the fields of
:class:`ExtractConfig` (help, flag, config-file key, default in one place, see
:mod:`alignkit.options`; the options several commands share come from
:mod:`alignkit.vocabulary`), and its work is :func:`extract`, one encoder at a time::

    cfg = ExtractConfig(encoders=("st:sentence-transformers/all-MiniLM-L6-v2",),
                        probe="flickr8k:test", n=200)
    for done in extract(cfg, progress=False):
        print(done.spec, done.features.n, done.how)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit._threads import threads_setting
from alignkit.errors import AlignkitError
from alignkit.features.store import check_store_dtype
from alignkit.options import option
from alignkit.vocabulary import shared

if TYPE_CHECKING:  # pragma: no cover
    from alignkit.features import FeatureCache, FeatureSet
    from alignkit.probes import ProbeSet

CAPTION_POLICIES = ("first", "mean", "random")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that defines an extraction run (``alignkit extract``).

    Each field's help text (``alignkit extract --help``) is its documentation. ``n=None`` means
    every row; ``cache`` is ``True`` (the default cache), a cache root, or ``False`` (no cache).
    """

    encoders: tuple[str, ...] = option(
        (),
        "Encoder spec, repeatable (see `alignkit list-encoders`).",
        flag="--encoder",
        short="-e",
        metavar="SPEC",
        aliases=("encoder",),
        repeat=True,
    )
    probe: str = option(
        "synthetic",
        "Probe set: flickr8k[:train|dev|test], imagenet-samples, coco-val2017, synthetic, a "
        "manifest path, webdataset shards ('dir/{00000..00009}.tar' or a folder of .tar), a "
        "CLIP_benchmark folder or HF parquet files.",
        short="-p",
        metavar="SPEC",
    )
    n: int | None = shared("n", default=None, help_extra="Not given: all rows.")
    split: str | None = option(
        None,
        "Keep only the rows of this split (train, dev, test; a manifest's split column).",
        metavar="NAME",
        type=str,
    )
    class_names: str | None = shared("class_names")
    image_column: str | None = shared("image_column")
    caption_columns: tuple[str, ...] = shared("caption_columns")
    id_column: str | None = shared("id_column")
    label_column: str | None = shared("label_column")
    caption_policy: str = option(
        "first",
        "Which caption a text encoder sees for a row with several: the first, the mean of all "
        "caption embeddings, or a seeded random one.",
        metavar="first|mean|random",
    )
    seed: int = shared("seed")
    extract_batch: int = shared("extract_batch", deprecated=("batch_size",))
    workers: int | None = option(
        None,
        "Image decoding workers. Default: 1 on <= 2 cores, else 2; on a GPU up to 8.",
        metavar="W",
        type=int,
    )
    device: str = shared("device")
    threads: int | None = shared("threads")
    skip_bad: bool = shared("skip_bad")
    data_dir: str | None = option(
        None,
        "Where named probes live. Default ALIGNKIT_DATA_DIR.",
        metavar="DIR",
        type=str,
    )
    cache: str | bool = shared("cache")
    store_dtype: str = shared("store_dtype")
    checkpoint_every: float = option(
        60.0,
        "Save a resumable shard at the first batch boundary after this many seconds (besides "
        "every 8 batches), so Ctrl-C keeps the work done.",
        metavar="SECONDS",
    )

    def __post_init__(self) -> None:
        if isinstance(self.encoders, str):
            object.__setattr__(self, "encoders", (self.encoders,))
        object.__setattr__(self, "encoders", tuple(self.encoders))
        for name, low in (("extract_batch", 1), ("n", 0), ("threads", 1), ("workers", 0)):
            value = getattr(self, name)
            if value is None and name != "extract_batch":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise AlignkitError(f"{name} must be an integer >= {low}: got {value!r}")
        if self.caption_policy not in CAPTION_POLICIES:
            raise AlignkitError(
                f"caption_policy must be one of {', '.join(CAPTION_POLICIES)}: "
                f"got {self.caption_policy!r}"
            )
        check_store_dtype(self.store_dtype)
        if not float(self.checkpoint_every) > 0:
            raise AlignkitError(
                f"checkpoint_every must be a positive number of seconds: got "
                f"{self.checkpoint_every!r}"
            )

    def replace(self, **changes: Any) -> ExtractConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class Extracted:
    """One finished encoder of :func:`extract`: its features and how they were got."""

    spec: str
    features: FeatureSet
    how: str  # "extracted", "from the cache", "from the cache (encoder not built)"
    seconds: float
    where: str  # the cache entry's folder, or "not cached"


def check(config: ExtractConfig) -> None:
    """Everything that can fail before a probe or a model is loaded: encoders given, their
    backends known, the device usable."""
    from alignkit._device import resolve_device
    from alignkit.encoders import check_spec

    if not config.encoders:
        raise AlignkitError(
            "encoders must name at least one encoder spec (see `alignkit list-encoders`): got none"
        )
    for spec in config.encoders:
        check_spec(spec)  # a malformed spec or an unknown backend fails here, listing them
    resolve_device(config.device)


def load(config: ExtractConfig, *, progress: bool = True) -> ProbeSet:
    """The probe rows of ``config`` (after :func:`check`)."""
    from alignkit.probes import load_probe
    from alignkit.probes.containers import check_columns_apply, column_options

    options = {} if config.class_names is None else {"class_names": config.class_names}
    check_columns_apply([config.probe], config)
    options.update(column_options(config.probe, config))
    return load_probe(
        config.probe,
        n=config.n or None,
        split=config.split,
        seed=config.seed,
        skip_bad=config.skip_bad,
        data_dir=Path(config.data_dir) if config.data_dir is not None else None,
        progress=progress,
        **options,
    )


def store_of(config: ExtractConfig) -> FeatureCache | None:
    """The feature cache ``config.cache`` names (None for no cache)."""
    from alignkit.features import FeatureCache

    if config.cache is False:
        return None
    root = None if config.cache is True else config.cache
    return FeatureCache.at(root, shard_seconds=config.checkpoint_every)


def extract(
    config: ExtractConfig, probe: ProbeSet | None = None, *, progress: bool = True
) -> Iterator[Extracted]:
    """Features of every encoder of ``config`` on its probe, one :class:`Extracted` per encoder
    as soon as it is done (from the cache without model work when it holds them). Under torchrun
    the rows are split across ranks.

    Raises:
        AlignkitError: a bad setting (before the probe is read), a bad probe, a failing encoder.
    """
    from alignkit.features import cached_features, extract_features

    check(config)
    probe = load(config, progress=progress) if probe is None else probe
    store = store_of(config)
    common = {
        "caption_policy": config.caption_policy,
        "seed": config.seed,
        "device": config.device,
        "skip_bad": config.skip_bad,
        "store_dtype": config.store_dtype,
    }
    with threads_setting(config.threads):
        for spec in config.encoders:
            started = time.perf_counter()
            since = datetime.now(timezone.utc).replace(microsecond=0)
            fs = cached_features(spec, probe, cache=store, **common) if store else None
            how = "from the cache (encoder not built)"
            if fs is None:
                fs = extract_features(
                    spec,
                    probe,
                    batch_size=config.extract_batch,
                    num_workers=config.workers,
                    cache=store if store else False,
                    progress=progress,
                    distributed=True,  # under torchrun: split the rows (a group only for this call)
                    **common,
                )
                created = datetime.fromisoformat(str(fs.provenance.get("created")))
                earlier = created < since or "cached_from" in fs.provenance  # rows of another
                how = "from the cache" if store and earlier else "extracted"
            key = str(fs.provenance.get("cache_key", ""))
            if store and key and not store.path(key).exists() and "cached_from" in fs.provenance:
                key = str(fs.provenance["cached_from"])  # rows read from another entry (its file)
            where = f"cache {store.path(key)}" if store and key else "not cached"
            yield Extracted(spec, fs, how, time.perf_counter() - started, where)


__all__ = ["ExtractConfig", "Extracted", "check", "extract", "load", "store_of"]
