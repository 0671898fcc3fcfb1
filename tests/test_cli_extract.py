"""`alignkit extract` through the console entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli import run_cli

from alignkit.features import FeatureCache


def test_extract_fits_a_fitted_encoder_before_it_computes_the_cache_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tfidf: has no weights identity until it is fitted on the probe's captions; the command
    used to ask for the cache key first and stopped with 'call encoder.fit(texts)'."""
    argv = ["extract", "-e", "tfidf:svd-16", "-p", "synthetic", "-n", "20"]
    argv += ["--cache-dir", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "20 rows x 16 extracted" in out
    [entry] = FeatureCache.at(tmp_path).list()  # --cache-dir (now --cache) names the root
    assert entry.encoder == "tfidf:svd-16" and entry.n == 20
    code, out, err = run_cli(argv, capsys)  # same captions, same fit: the second run is a hit
    assert code == 0, err
    assert "20 rows x 16 from the cache" in out
