"""Image features computed before images were decoded as a viewer shows them (and before the
CNN encoders were frozen) are never reused from the feature cache; text features stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_features_support import HashTextEncoder, TinyImageEncoder, make_probe

from alignkit.features import FeatureCache, extract_features
from alignkit.features import keys as keys_module


def test_image_entries_of_an_older_image_pipeline_are_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = make_probe(tmp_path / "img", 6)
    store = FeatureCache(tmp_path / "cache")
    version = keys_module.IMAGE_FEATURES_VERSION
    assert version >= 2  # 1 was Image.convert("RGB") and the drifting MobileNetV2
    with monkeypatch.context() as m:  # entries written by the older pipeline
        m.setattr(keys_module, "IMAGE_FEATURES_VERSION", version - 1)
        old_image, old_text = TinyImageEncoder(), HashTextEncoder()
        extract_features(old_image, probe, cache=store, num_workers=0, progress=False)
        extract_features(old_text, probe, cache=store, progress=False)
        assert old_image.calls > 0 and old_text.calls > 0
    image, text = TinyImageEncoder(), HashTextEncoder()
    extract_features(image, probe, cache=store, num_workers=0, progress=False)
    extract_features(text, probe, cache=store, progress=False)
    assert image.calls > 0  # the old image entry was not reused
    assert text.calls == 0  # the text entry was
