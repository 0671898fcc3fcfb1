"""Named probes on the real data in ALIGNKIT_DATA_DIR (flickr8k/, imagenet-samples/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.probes import imagenet_class_names, load_probe

pytestmark = pytest.mark.real


def test_flickr8k_test_split(data_dir: Path) -> None:
    probe = load_probe("flickr8k:test", data_dir=data_dir, progress=False)
    official = (data_dir / "flickr8k" / "text" / "Flickr_8k.testImages.txt").read_text().split()
    assert len(probe) == 1000 and sorted(probe.ids) == sorted(Path(f).stem for f in official)
    assert all(len(r.captions) == 5 for r in probe)
    # captions in official order #0..#4, verbatim from the token file
    row = probe.rows[0]
    token = (data_dir / "flickr8k" / "text" / "Flickr8k.token.txt").read_text().splitlines()
    want = [line.split("\t", 1)[1].strip() for line in token if line.startswith(f"{row.id}.jpg#")]
    assert list(row.captions) == want
    assert all(r.attributes["split"] == "test" for r in probe)
    # the token-file layout describes the very same rows: same fingerprint
    by_tokens = load_probe(
        data_dir / "flickr8k" / "text" / "Flickr8k.token.txt", split="test", progress=False
    )
    assert by_tokens.ids == probe.ids and by_tokens.fingerprint == probe.fingerprint
    # stable subsample inside the split
    p300 = load_probe("flickr8k", split="test", n=300, data_dir=data_dir, progress=False)
    p100 = load_probe("flickr8k:test", n=100, data_dir=data_dir, progress=False)
    assert p300.ids[:100] == p100.ids and set(p300.ids) <= set(probe.ids)


def test_flickr8k_token_file_glitch_needs_skip_bad(data_dir: Path) -> None:
    """The official token file names 8,093 images: 2258277193_586949ec62 (caption #0 filed under
    '2258277193_586949ec62.jpg.1', #1-#4 under '.jpg') has no image file in the source. Both rows
    are in no official split, so split "none" (93 rows) shows it without reading 8,000 files."""
    token = data_dir / "flickr8k" / "text" / "Flickr8k.token.txt"
    with pytest.raises(AlignkitError) as info:
        load_probe(token, split="none", progress=False)
    msg = str(info.value)
    assert "'2258277193_586949ec62.jpg' (Flickr8k.token.txt line 6731)" in msg
    assert "image file not found" in msg and "2258277193_586949ec62.jpg.1" in msg
    assert "\n" not in msg
    probe = load_probe(token, split="none", skip_bad=True, progress=False)
    assert [d["id"] for d in probe.dropped] == [
        "2258277193_586949ec62.jpg",
        "2258277193_586949ec62",
    ]
    pairs = load_probe("flickr8k", split="none", data_dir=data_dir, progress=False)
    assert len(probe) == len(pairs) == 91 and sorted(pairs.ids) == sorted(probe.ids)
    assert probe.fingerprint != pairs.fingerprint  # the drop is recorded


def test_imagenet_samples(data_dir: Path) -> None:
    probe = load_probe("imagenet-samples", data_dir=data_dir, progress=False)
    assert len(probe) == 1000
    assert probe.labels == list(range(1000))
    assert probe.class_names == imagenet_class_names()
    assert probe.class_names[1] == "goldfish" and probe.rows[1].captions == (
        "a photo of a goldfish.",
    )
    assert probe.rows[1].id == "n01443537"
    # the curated names agree with the source file names where those are already readable
    src = [
        json.loads(x)
        for x in (data_dir / "imagenet-samples" / "labels.jsonl").read_text().splitlines()
    ]
    same = sum(
        s["file_class_name"].replace("_", " ").lower() == probe.class_names[s["label"]].lower()
        for s in src
    )
    assert same > 600
