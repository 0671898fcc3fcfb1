"""What keeps a probe of millions of rows cheap to load: lazy image checks above a row count,
string image paths, the seeded order, all without changing what a small probe gives."""

from __future__ import annotations

import hashlib
import json
import pickle
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from alignkit.errors import AlignkitError
from alignkit.probes import hash_order, load_probe, registry
from alignkit.probes.lazypath import ImagePath
from alignkit.probes.manifest import read_manifest


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


def test_manifest_fingerprint_is_the_recipe_over_the_file_rows(tmp_path: Path) -> None:
    """The fingerprint, computed here from the manifest's lines and image bytes by the recipe
    ProbeSet.fingerprint documents, not by the code under test."""
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(5):
        Image.new("RGB", (6, 5), (40 * i, 9, 200)).save(tmp_path / "img" / f"{i}.png")
        caps = [f"  row {i} ", f"é {i}"] if i % 2 else f"only caption {i}"
        lines.append({"id": f"k{i}", "image": f"img/{i}.png", "captions": caps, "label": i % 2})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    h = hashlib.sha256(b"probe-fp-1")
    for r in lines:
        caps = [
            c.strip()
            for c in (r["captions"] if isinstance(r["captions"], list) else [r["captions"]])
        ]
        digest = hashlib.sha256((tmp_path / r["image"]).read_bytes()).hexdigest()
        h.update(json.dumps([r["id"], caps, r["label"], digest], ensure_ascii=False).encode())
        h.update(b"\n")
    h.update(json.dumps({"content_key": [], "dropped": []}, ensure_ascii=False).encode())
    expected = h.hexdigest()[:16]
    for check in ("decode", "none"):  # digests from the load, or hashed on demand
        probe = load_probe(tmp_path / "rows.jsonl", check=check, progress=False)
        assert probe.fingerprint == expected
        assert probe.ids == tuple(r["id"] for r in lines)
        assert probe.rows[1].captions == ("row 1", "é 1")


def test_a_later_jsonl_record_with_a_new_column_reads_like_the_rest(tmp_path: Path) -> None:
    """Rows are made as lines are parsed, with the first record's columns; a column that only
    later records have (the id column, ``captions`` over ``caption``) still decides every row,
    as when the whole file was read first."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    recs = [
        {"image": "a.png", "caption": "first a"},
        {"image": "a.png", "caption": "second a"},
        {"id": "B", "image": "b.png", "captions": ["b one", "b two"]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    raw = read_manifest(path)
    # 'captions' is the caption column of every row: the first two have none (and merge into
    # one captionless row, as rows without an id do)
    assert [(e.id, e.captions) for e in raw.entries] == [("a.png", []), ("B", ["b one", "b two"])]
    with pytest.raises(AlignkitError, match="no caption"):
        load_probe(path, check="none", progress=False)
    # the same file without the late ids: one-caption-a-line rows merge by image
    recs[2] = {"image": "b.png", "caption": "b one"}
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    probe = load_probe(path, check="none", progress=False)
    assert probe.ids == ("a.png", "b.png")
    assert probe.rows[0].captions == ("first a", "second a")


def test_a_manifest_load_holds_few_bytes_a_row(tmp_path: Path) -> None:
    """Peak traced memory of a 20,000-row manifest load, per row: the parsed lines are not all
    held at once, and candidates are let go of as rows are made (about 1,170 bytes a row
    before, about 680 after, on Python 3.11)."""
    rows = 20_000
    (tmp_path / "m.jsonl").write_text(
        "".join(
            json.dumps({"id": f"r{i:07d}", "image": f"img/{i % 8}.jpg", "caption": f"c {i} x"})
            + "\n"
            for i in range(rows)
        )
    )
    tracemalloc.start()
    try:
        probe = load_probe(tmp_path / "m.jsonl", check="none", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(probe) == rows
    assert peak / rows < 850, f"{peak / rows:.0f} bytes a row"


def test_manifest_errors_come_in_the_whole_file_order(tmp_path: Path) -> None:
    """Rows are made while the file is read, but the file-wide errors keep their order: no rows,
    no image column, unusable class names, no captions or labels."""
    path = tmp_path / "m.jsonl"
    path.write_text("\n\n")
    with pytest.raises(AlignkitError, match="has no rows"):
        read_manifest(path, class_names=tmp_path / "absent.txt")
    path.write_text(json.dumps({"id": "a", "path": "a.png", "label": 0}) + "\n")
    with pytest.raises(AlignkitError, match="missing required column 'image'"):
        read_manifest(path, class_names=tmp_path / "absent.txt")
    path.write_text(json.dumps({"id": "a", "image": "a.png", "label": 0}) + "\n")
    with pytest.raises(AlignkitError, match="class_names must be a list.*no such file"):
        read_manifest(path, class_names=tmp_path / "absent.txt")
    with pytest.raises(AlignkitError, match="has labels but no captions and no class names"):
        read_manifest(path)
    assert read_manifest(path, class_names=["cat"]).entries[0].captions == ["a photo of a cat."]
