"""Shared test set-up: offline always, a private cache, and the real data when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: set before transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test session gets its own feature cache unless ALIGNKIT_CACHE_DIR is set (CI does)."""
    if "ALIGNKIT_CACHE_DIR" not in os.environ:
        os.environ["ALIGNKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("alignkit-cache"))
    return Path(os.environ["ALIGNKIT_CACHE_DIR"])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (``$ALIGNKIT_DATA_DIR``, else ``../shared/data`` beside the checkout).

    Tests that need it skip with the reason when it is absent (a user's machine); on the
    developers' machines and in CI it is always there.
    """
    env = os.environ.get("ALIGNKIT_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (path / "flickr8k" / "pairs.jsonl").exists():
        pytest.skip(f"real data not found at {path} (set ALIGNKIT_DATA_DIR to ../shared/data)")
    return path
