"""What keeps a probe of millions of rows cheap to load: lazy image checks above a row count,
string image paths, the seeded order, all without changing what a small probe gives."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from alignkit.errors import AlignkitError
from alignkit.probes import hash_order, load_probe, registry
from alignkit.probes.lazypath import ImagePath


def _manifest(tmp_path: Path, rows: int, bad: int) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(rows):
        path = tmp_path / "img" / f"{i}.png"
        if i == bad:
            path.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
        else:
            Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(path)
    lines = [
        json.dumps({"id": f"r{i}", "image": f"img/{i}.png", "caption": f"c{i}"})
        for i in range(rows)
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.jsonl"


def test_auto_check_defers_images_above_the_row_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(tmp_path, rows=12, bad=7)
    with pytest.raises(AlignkitError, match=r"'r7' \(m.jsonl line 8\).*unreadable image"):
        load_probe(manifest, progress=False)  # 12 rows: checked at load, as before
    monkeypatch.setattr(registry, "EAGER_CHECK_ROWS", 10)
    probe = load_probe(manifest, progress=False)  # 12 > 10 rows: no image opened at load
    assert len(probe) == 12 and probe.dropped == ()
    assert len(load_probe(manifest, n=10, skip_bad=True, progress=False)) == 10  # n=10: checked
    with pytest.raises(AlignkitError, match=r"'r7'.*unreadable image"):
        load_probe(manifest, check="decode", progress=False)
    with pytest.raises(AlignkitError, match=r"image check.*'sometimes'"):
        load_probe(manifest, check="sometimes", progress=False)


def test_lazy_and_checked_loads_fingerprint_the_same(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, rows=6, bad=-1)
    checked = load_probe(manifest, progress=False)
    lazy = load_probe(manifest, check="none", progress=False)
    assert [r.digest for r in lazy.rows] == [""] * 6  # nothing read at load
    assert lazy.fingerprint == checked.fingerprint  # hashed from the files on demand


def test_image_path_is_the_same_path() -> None:
    p = ImagePath.under("/data/set/", "img/a.jpg")
    assert p == Path("/data/set/img/a.jpg") and hash(p) == hash(Path("/data/set/img/a.jpg"))
    assert str(p) == "/data/set/img/a.jpg" and p.name == "a.jpg" and p.suffix == ".jpg"
    assert ImagePath.under("/data/set/", "/elsewhere/b.png") == Path("/elsewhere/b.png")
    assert ImagePath("/data/set", "img/a.jpg") == p
    assert pickle.loads(pickle.dumps(p)) == p
    assert p != Path("/data/set/img/b.jpg")


def test_hash_order_is_the_naive_sort() -> None:
    ids = [f"row-{i}" for i in range(500)]
    for seed in (0, 7):
        digests = [hashlib.sha256(f"{seed}\x00{i}".encode()).hexdigest() for i in ids]
        naive = sorted(range(len(ids)), key=lambda j: (digests[j], j))
        assert hash_order(ids, seed) == naive


def test_the_checking_images_bar_shows_on_torchrun_rank_0_only(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank loads the probe; each used to draw its own "checking images"
    bar over the others' (issue 18)."""
    shown = {}
    for rank in ("1", "0"):  # a folder each: the second load would find the first's checks
        folder = tmp_path / f"rank{rank}"
        folder.mkdir()
        lines = []
        for i in range(210):  # over the 200 images below which no bar is drawn
            Image.new("RGB", (4, 4), (i, 2 * i % 256, 7)).save(folder / f"{i}.png")
            lines.append(json.dumps({"id": str(i), "image": f"{i}.png", "caption": f"c {i}"}))
        (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
        monkeypatch.setenv("RANK", rank)
        load_probe(folder / "rows.jsonl", check="decode", progress=True)
        shown[rank] = "checking images" in capsys.readouterr().err
    assert shown == {"0": True, "1": False}
