"""Where alignkit reads data and keeps its caches. Paths are parameters everywhere; these are
only the defaults, taken from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Feature cache and unpacked weights: ``$ALIGNKIT_CACHE_DIR``, else ``~/.cache/alignkit``."""
    env = os.environ.get("ALIGNKIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "alignkit"


def data_dir() -> Path:
    """Named probes (``flickr8k``, ``imagenet-samples``, ``coco-val2017``): ``$ALIGNKIT_DATA_DIR``,
    else ``<cache_dir>/data``."""
    env = os.environ.get("ALIGNKIT_DATA_DIR")
    return Path(env).expanduser() if env else cache_dir() / "data"
