"""Probe sets on small fixtures built here: formats, subsampling, fingerprints, captions,
bad input."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from alignkit.errors import AlignkitError
from alignkit.probes import (
    ProbeSet,
    hash_order,
    imagenet_class_names,
    imagenet_wnids,
    list_probes,
    load_probe,
)

COLORS = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (230, 200, 20), (120, 40, 160), (20, 20, 20)]


def jpeg(path: Path, color=(200, 30, 30), size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=90)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    """Six rows, two captions each, ids, labels 0..2, splits train/test."""
    root = tmp_path / "probe"
    rows = []
    for i in range(6):
        jpeg(root / "images" / f"img{i}.jpg", COLORS[i])
        rows.append(
            {
                "id": f"r{i}",
                "image": f"images/img{i}.jpg",
                "captions": [f"picture number {i}", f"another caption {i}"],
                "label": i % 3,
                "split": "test" if i % 2 else "train",
                "source": f"s{i}",
            }
        )
    write_jsonl(root / "manifest.jsonl", rows)
    (root / "classnames.txt").write_text("cat\ndog\nbird\n")
    return root


# ----------------------------------------------------------------------------- formats


def test_jsonl_manifest_and_folder_holding_it(manifest_dir: Path) -> None:
    probe = load_probe(manifest_dir / "manifest.jsonl", progress=False)
    assert probe.ids == tuple(f"r{i}" for i in range(6))
    assert probe.rows[2].captions == ("picture number 2", "another caption 2")
    assert probe.labels == [0, 1, 2, 0, 1, 2]
    assert probe.class_names == ("cat", "dog", "bird")
    assert probe.rows[1].attributes == {"split": "test", "source": "s1"}
    assert probe.rows[3].image == manifest_dir / "images" / "img3.jpg"
    assert probe.rows[4].load_image().getpixel((5, 5)) == pytest.approx(COLORS[4], abs=6)
    # a folder that holds a manifest reads the same rows, with the same fingerprint
    by_folder = load_probe(manifest_dir, progress=False)
    assert by_folder.ids == probe.ids and by_folder.fingerprint == probe.fingerprint


def test_split_filter_and_errors(manifest_dir: Path) -> None:
    test = load_probe(manifest_dir, split="test", progress=False)
    assert test.ids == ("r1", "r3", "r5")
    with pytest.raises(
        AlignkitError, match=r"unknown split .* 'val'.*expected one of: test, train"
    ):
        load_probe(manifest_dir, split="val", progress=False)


def test_csv_manifest_json_captions_and_one_caption_a_line(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg", COLORS[0])
    jpeg(tmp_path / "b.jpg", COLORS[1])
    with (tmp_path / "list.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows([["a.jpg", "a red square"], ["b.jpg", "a green one"], ["a.jpg", "red again"]])
    probe = load_probe(tmp_path / "list.csv", progress=False)
    # no id column: the id is the image path, and captions of the same image merge in file order
    assert probe.ids == ("a.jpg", "b.jpg")
    assert probe.rows[0].captions == ("a red square", "red again")
    with (tmp_path / "lists.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "captions"])
        w.writerow(["x", "b.jpg", json.dumps(["one", "two"])])
    assert load_probe(tmp_path / "lists.csv", progress=False).rows[0].captions == ("one", "two")


def test_coco_captions_json_with_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for i, img_id in enumerate((42, 7)):
        jpeg(root / "val2017" / f"{img_id:012d}.jpg", COLORS[i])
    blob = {
        "images": [
            {"id": 42, "file_name": "000000000042.jpg"},
            {"id": 7, "file_name": "000000000007.jpg"},
        ],
        "annotations": [  # out of order on purpose: captions follow annotation id
            {"id": 9, "image_id": 42, "caption": "second of 42 \n"},
            {"id": 3, "image_id": 42, "caption": "first of 42"},
            {"id": 5, "image_id": 7, "caption": "only of 7"},
        ],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(blob))
    probe = load_probe(root, progress=False)  # detects annotations/captions_*.json and val2017/
    assert probe.ids == ("42", "7")
    assert probe.rows[0].captions == ("first of 42", "second of 42")
    assert probe.rows[1].image == root / "val2017" / "000000000007.jpg"
    instances = root / "annotations" / "instances_val2017.json"
    instances.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "segmentation": []}]}))
    with pytest.raises(AlignkitError, match="no 'caption'"):
        load_probe(instances, progress=False)


def test_flickr_token_layout_with_splits(tmp_path: Path) -> None:
    root = tmp_path / "f8k"
    names = ["111_a.jpg", "222_b.jpg", "333_c.jpg"]
    for i, name in enumerate(names):
        jpeg(root / "Flicker8k_Dataset" / name, COLORS[i])
    lines = []
    for name in names:
        for k in (1, 0, 2):  # out of order: captions follow #k
            lines.append(f"{name}#{k}\tcaption {k} of {name}")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("111_a.jpg\n333_c.jpg\n")
    (root / "Flickr_8k.testImages.txt").write_text("222_b.jpg\n")
    probe = load_probe(root, progress=False)
    assert probe.ids == ("111_a", "222_b", "333_c")
    assert probe.rows[0].captions == tuple(f"caption {k} of 111_a.jpg" for k in range(3))
    assert [r.attributes["split"] for r in probe] == ["train", "test", "train"]
    assert load_probe(root / "Flickr8k.token.txt", split="test", progress=False).ids == ("222_b",)


def test_class_folders_with_names_and_wordnet_ids(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    for label, cls in enumerate(["golden_retriever", "tabby_cat"]):
        for j in range(2):
            jpeg(root / cls / f"{j}.jpg", COLORS[label + j])
    probe = load_probe(root, progress=False)
    assert probe.class_names == ("golden retriever", "tabby cat")
    assert probe.labels == [0, 0, 1, 1]
    assert probe.rows[2].captions == ("a photo of a tabby cat.",)
    # folders named by WordNet ids get the curated ImageNet names
    wn = tmp_path / "wn"
    for w in ("n01443537", "n01440764"):
        jpeg(wn / w / "x.jpg")
    probe = load_probe(wn, templates=("a photo of a {}.", "a bad photo of the {}."), progress=False)
    assert probe.class_names == ("tench", "goldfish")  # sorted folders: n01440764 first
    assert probe.rows[1].captions == ("a photo of a goldfish.", "a bad photo of the goldfish.")


def test_labelled_manifest_gets_template_captions(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    jpeg(tmp_path / "b.jpg")
    write_jsonl(
        tmp_path / "labels.jsonl", [{"image": "a.jpg", "label": 1}, {"image": "b.jpg", "label": 0}]
    )
    with pytest.raises(AlignkitError, match="no class names"):
        load_probe(tmp_path, progress=False)
    probe = load_probe(tmp_path, class_names=["sky", "sea"], progress=False)
    assert [r.captions for r in probe] == [("a photo of a sea.",), ("a photo of a sky.",)]
    assert load_probe(tmp_path, class_names="imagenet", progress=False).rows[0].captions == (
        "a photo of a goldfish.",
    )


def test_imagenet_name_lists() -> None:
    names, wnids = imagenet_class_names(), imagenet_wnids()
    assert len(names) == len(wnids) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet paper"
    assert names[207] == "Golden Retriever" and wnids[1] == "n01443537"
    assert list(wnids) == sorted(wnids)


def test_list_probes_and_unknown_names(tmp_path: Path) -> None:
    assert list_probes() == [
        "coco-val2017",
        "flickr8k",
        "flickr8k:dev",
        "flickr8k:test",
        "flickr8k:train",
        "imagenet-samples",
        "synthetic",
    ]
    assert list_probes("flickr*") == ["flickr8k", "flickr8k:dev", "flickr8k:test", "flickr8k:train"]
    with pytest.raises(AlignkitError, match=r"'flikr8k' is neither a named probe \(coco-val2017, "):
        load_probe("flikr8k")
    with pytest.raises(AlignkitError) as info:
        load_probe("flickr8k:test", data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "flickr8k") in msg and "ALIGNKIT_DATA_DIR" in msg
    with pytest.raises(AlignkitError, match="names split 'test' but split='dev'"):
        load_probe("flickr8k:test", split="dev", data_dir=tmp_path)
    with pytest.raises(AlignkitError, match="do not apply to probe 'synthetic'"):
        load_probe("synthetic", images="x")


# ----------------------------------------------------------------------------- subsample, captions


def test_subsample_is_a_stable_prefix(tmp_path: Path) -> None:
    rows = []
    for i in range(40):
        jpeg(tmp_path / f"{i}.jpg", COLORS[i % 6], size=(8, 8))
        rows.append({"id": f"id{i}", "image": f"{i}.jpg", "caption": f"c{i}"})
    write_jsonl(tmp_path / "m.jsonl", rows)
    full = load_probe(tmp_path, progress=False)
    p10 = load_probe(tmp_path, n=10, progress=False)
    p20 = load_probe(tmp_path, n=20, progress=False)
    assert p20.ids[:10] == p10.ids and len(set(p20.ids)) == 20
    # an independent recomputation of the order: sort ids by sha256("<seed>\0<id>")
    import hashlib

    expect = sorted(full.ids, key=lambda i: hashlib.sha256(f"0\x00{i}".encode()).digest())[:10]
    assert p10.ids == tuple(expect)
    assert full.subsample(10).ids == p10.ids
    assert load_probe(tmp_path, n=10, seed=1, progress=False).ids != p10.ids
    assert p10.fingerprint != p20.fingerprint != full.fingerprint
    assert (
        load_probe(tmp_path, n=40, progress=False).fingerprint != full.fingerprint
    )  # order differs
    with pytest.raises(AlignkitError, match="n=41 is more rows than probe .* got 40 rows"):
        load_probe(tmp_path, n=41, progress=False)
    assert hash_order(["a", "b"], 3) == hash_order(["a", "b"], 3)


def test_caption_policies(manifest_dir: Path) -> None:
    probe = load_probe(manifest_dir, progress=False)
    assert probe.captions("first") == [f"picture number {i}" for i in range(6)]
    r0, r1 = probe.captions("random", seed=0), probe.captions("random", seed=1)
    assert r0 == probe.captions("random", seed=0)
    assert all(c in row.captions for c, row in zip(r0, probe, strict=True))
    # the choice depends on the row id and seed only, so a subset chooses the same captions
    sub = probe.subset([5, 2])
    assert sub.captions("random", seed=1) == [r1[5], r1[2]]
    seeds = {tuple(probe.captions("random", seed=s)) for s in range(8)}
    assert len(seeds) > 1
    with pytest.raises(AlignkitError, match="averages caption embeddings"):
        probe.captions("mean")
    with pytest.raises(AlignkitError, match="unknown caption policy 'last'"):
        probe.captions("last")


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_portable_and_tracks_content(manifest_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "copy_a" / "x", tmp_path / "elsewhere" / "deeper" / "y"
    shutil.copytree(manifest_dir, a)
    shutil.copytree(manifest_dir, b)
    fa = load_probe(a, progress=False).fingerprint
    assert (
        fa == load_probe(b, progress=False).fingerprint == load_probe(a, progress=False).fingerprint
    )
    assert len(fa) == 16
    # a changed caption changes it
    m = b / "manifest.jsonl"
    m.write_text(m.read_text().replace("picture number 3", "picture number three"))
    fb = load_probe(b, progress=False).fingerprint
    assert fb != fa
    # a changed image (same path, same dimensions) changes it, even after a cached check
    jpeg(b / "images" / "img0.jpg", (0, 0, 0))
    assert load_probe(b, progress=False).fingerprint not in (fa, fb)
    # the naive recipe: rows' image digests are sha256 of the bytes
    import hashlib

    probe = load_probe(a, progress=False)
    assert (
        probe.rows[0].digest == hashlib.sha256((a / "images" / "img0.jpg").read_bytes()).hexdigest()
    )


def test_probe_rows_pickle(manifest_dir: Path) -> None:
    import pickle

    probe = load_probe(manifest_dir, progress=False)
    back = pickle.loads(pickle.dumps(probe))
    assert back.ids == probe.ids and back.fingerprint == probe.fingerprint


# ----------------------------------------------------------------------------- bad input


def _one_line_naming(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_missing_image(manifest_dir: Path) -> None:
    (manifest_dir / "images" / "img4.jpg").unlink()
    with pytest.raises(AlignkitError) as info:
        load_probe(manifest_dir, progress=False)
    _one_line_naming(
        info,
        "'r4'",
        "manifest.jsonl line 5",
        "image file not found",
        str(manifest_dir / "images" / "img4.jpg"),
        "skip_bad=True",
    )


def test_truncated_and_garbage_images(manifest_dir: Path) -> None:
    # cache a good check first: a later truncation must still be caught (size/mtime key)
    load_probe(manifest_dir, progress=False)
    img = manifest_dir / "images" / "img2.jpg"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(AlignkitError) as info:
        load_probe(manifest_dir, progress=False)
    _one_line_naming(info, "'r2'", "manifest.jsonl line 3", "unreadable image", str(img))
    img.write_bytes(b"this is not an image at all")
    with pytest.raises(AlignkitError) as info:
        load_probe(manifest_dir, progress=False)
    _one_line_naming(info, "'r2'", "unreadable image", str(img))
    # check="read" hashes without decoding: garbage passes
    assert len(load_probe(manifest_dir, check="read", progress=False)) == 6


def test_empty_caption_duplicate_id_label_out_of_range(tmp_path: Path) -> None:
    for i in range(3):
        jpeg(tmp_path / f"{i}.jpg")
    base = [
        {"id": f"r{i}", "image": f"{i}.jpg", "caption": f"cap {i}", "label": i} for i in range(3)
    ]
    (tmp_path / "classnames.txt").write_text("a\nb\nc\n")

    rows = [dict(r) for r in base]
    rows[1]["caption"] = "   "
    write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(AlignkitError) as info:
        load_probe(tmp_path / "m.jsonl", progress=False)
    _one_line_naming(info, "'r1'", "m.jsonl line 2", "empty caption")

    rows = [dict(r) for r in base]
    rows[2]["id"] = "r0"
    write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(AlignkitError) as info:
        load_probe(tmp_path / "m.jsonl", progress=False)
    _one_line_naming(info, "'r0'", "m.jsonl line 3", "duplicate id", "first at m.jsonl line 1")

    rows = [dict(r) for r in base]
    rows[0]["label"] = 3
    write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(AlignkitError) as info:
        load_probe(tmp_path / "m.jsonl", progress=False)
    _one_line_naming(info, "'r0'", "m.jsonl line 1", "label 3 out of range 0..2")

    rows = [dict(r) for r in base]
    rows[0]["label"] = "cat"
    write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(AlignkitError, match="'cat' is not an integer"):
        load_probe(tmp_path / "m.jsonl", progress=False)


def test_missing_column_lists_columns(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    write_jsonl(tmp_path / "m.jsonl", [{"id": "x", "image": "a.jpg", "text": "hello"}])
    with pytest.raises(AlignkitError) as info:
        load_probe(tmp_path / "m.jsonl", progress=False)
    _one_line_naming(
        info,
        "m.jsonl",
        "missing required column 'caption' or 'captions'",
        "found columns: id, image, text",
    )
    (tmp_path / "m.csv").write_text("path,caption\na.jpg,hello\n")
    with pytest.raises(AlignkitError) as info:
        load_probe(tmp_path / "m.csv", progress=False)
    _one_line_naming(
        info, "m.csv", "missing required column 'image'", "found columns: path, caption"
    )


def test_skip_bad_drops_records_and_changes_fingerprint(manifest_dir: Path, caplog) -> None:
    clean = load_probe(manifest_dir, progress=False)
    (manifest_dir / "images" / "img1.jpg").write_bytes(b"")  # empty file
    rows = [json.loads(x) for x in (manifest_dir / "manifest.jsonl").read_text().splitlines()]
    rows[3]["captions"] = ["fine", ""]
    rows[5]["label"] = 9
    write_jsonl(manifest_dir / "manifest.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="alignkit.probes"):
        probe = load_probe(manifest_dir, skip_bad=True, progress=False)
    assert probe.ids == ("r0", "r2", "r4")
    assert {d["id"] for d in probe.dropped} == {"r1", "r3", "r5"}
    reasons = {d["id"]: d["reason"] for d in probe.dropped}
    assert "empty caption" in reasons["r3"] and "out of range" in reasons["r5"]
    assert "empty image file" in reasons["r1"]
    assert "dropped 3 bad row(s)" in caplog.text
    # same surviving rows as a clean probe restricted to them, but the drop is in the fingerprint
    kept = clean.subset([0, 2, 4])
    assert kept.ids == probe.ids and [r.digest for r in kept] == [r.digest for r in probe]
    assert probe.fingerprint != kept.fingerprint
    assert ProbeSet(probe.name, probe.rows, probe.class_names).fingerprint == kept.fingerprint


def test_skip_bad_with_n_keeps_the_prefix_property(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        if i % 4:
            jpeg(tmp_path / f"{i}.jpg", size=(8, 8))  # every 4th image is missing
        rows.append({"id": f"id{i}", "image": f"{i}.jpg", "caption": f"c{i}"})
    write_jsonl(tmp_path / "m.jsonl", rows)
    p5 = load_probe(tmp_path, n=5, skip_bad=True, progress=False)
    p12 = load_probe(tmp_path, n=12, skip_bad=True, progress=False)
    assert len(p5) == 5 and len(p12) == 12 and p12.ids[:5] == p5.ids
    assert all(int(i[2:]) % 4 for i in p12.ids)
    with pytest.raises(AlignkitError, match="n=23 is more rows"):
        load_probe(tmp_path, n=23, skip_bad=True, progress=False)


def test_check_cache_skips_unchanged_files_and_rechecks_changed_ones(
    manifest_dir: Path, monkeypatch
) -> None:
    from alignkit.probes import checks

    first = load_probe(manifest_dir, progress=False)
    calls: list[Path] = []
    real = checks._check_one

    def counting(path, level):
        calls.append(path)
        return real(path, level)

    monkeypatch.setattr(checks, "_check_one", counting)
    again = load_probe(manifest_dir, progress=False)
    assert calls == [] and again.fingerprint == first.fingerprint  # only stat()s, no reads
    img = manifest_dir / "images" / "img3.jpg"
    jpeg(img, (1, 2, 3), size=(30, 30))  # new size and mtime
    changed = load_probe(manifest_dir, progress=False)
    assert calls == [img] and changed.fingerprint != first.fingerprint
    # a "read" check reuses the "decode" results; "decode" after "read" must decode
    load_probe(manifest_dir, check="read", progress=False)
    assert calls == [img]
    jpeg(img, (9, 9, 9), size=(31, 30))
    load_probe(manifest_dir, check="read", progress=False)
    load_probe(manifest_dir, check="decode", progress=False)
    assert calls == [img, img, img]


def test_option_validation(manifest_dir: Path) -> None:
    with pytest.raises(AlignkitError, match="n must be a positive number of rows"):
        load_probe(manifest_dir, n=0)
    with pytest.raises(AlignkitError, match="unknown image check 'full'"):
        load_probe(manifest_dir, check="full")
    with pytest.raises(AlignkitError, match="do not apply to manifest probes"):
        load_probe(manifest_dir, download_missing=False)
    with pytest.raises(AlignkitError, match="unknown probe format 'tsv'"):
        load_probe(manifest_dir, format="tsv")
    import numpy as np

    assert len(load_probe(manifest_dir, n=np.int64(3), progress=False)) == 3
