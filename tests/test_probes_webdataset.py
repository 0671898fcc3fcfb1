"""webdataset shards (img2dataset's layout) and CLIP_benchmark's wds folders read as probes: the
same rows as a manifest of the same images, to the byte, fingerprint and feature."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.features import extract_features
from alignkit.features.cache import feature_key
from alignkit.probes import load_probe

pytestmark = pytest.mark.real


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _flickr_rows(data_dir: Path, count: int) -> list[dict]:
    lines = (data_dir / "flickr8k" / "pairs.jsonl").read_text("utf-8").splitlines()[:count]
    rows = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        rows.append(
            {
                "id": f"{i:09d}",
                "image": str(data_dir / "flickr8k" / rec["image"]),
                "captions": rec["captions"],
            }
        )
    return rows


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def _write_shards(folder: Path, rows: list[dict], per_shard: int, image_ext: str = "jpg") -> None:
    """img2dataset's layout: <key>.jpg, <key>.txt (captions a line), <key>.json metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(rows), per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tf:
            for r in rows[s : s + per_shard]:
                key = r["id"]
                _add(tf, f"{key}.{image_ext}", Path(r["image"]).read_bytes())
                if "captions" in r:
                    _add(tf, f"{key}.txt", "\n".join(r["captions"]).encode())
                if "label" in r:
                    _add(tf, f"{key}.cls", str(r["label"]).encode())
                meta = {"key": key, "status": "success", "caption": r.get("captions", [""])[0]}
                _add(tf, f"{key}.json", json.dumps(meta).encode())


@pytest.fixture()
def flickr24(data_dir: Path, tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    rows = _flickr_rows(data_dir, 24)
    manifest = _write_manifest(tmp_path / "pairs.jsonl", rows)
    _write_shards(tmp_path / "shards", rows, per_shard=10)  # 10 + 10 + 4
    return manifest, tmp_path / "shards", rows


def _same_rows(a, b) -> None:
    assert a.ids == b.ids
    assert [r.captions for r in a.rows] == [r.captions for r in b.rows]
    assert a.labels == b.labels
    assert [r.image_digest() for r in a.rows] == [r.image_digest() for r in b.rows]
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize("form", ["pattern", "folder", "list", "joined"])
def test_shards_equal_the_manifest(flickr24, form: str) -> None:
    manifest, shards, _ = flickr24
    spec = {
        "pattern": f"{shards}/{{00000..00002}}.tar",
        "folder": str(shards),
        "list": [str(p) for p in sorted(shards.glob("*.tar"))],
        "joined": "::".join(str(p) for p in sorted(shards.glob("*.tar"))),
    }[form]
    from_shards = load_probe(spec, progress=False)
    from_manifest = load_probe(manifest, progress=False)
    assert len(from_shards) == 24
    _same_rows(from_shards, from_manifest)
    # the image a worker decodes is the file's image, pixel for pixel
    for k in (0, 13, 23):
        assert from_shards[k].load_image().tobytes() == from_manifest[k].load_image().tobytes()


def test_seeded_n_over_shards_is_the_manifest_subsample(flickr24) -> None:
    manifest, shards, _ = flickr24
    a = load_probe(str(shards), n=7, seed=3, progress=False)
    b = load_probe(manifest, n=7, seed=3, progress=False)
    _same_rows(a, b)
    assert load_probe(str(shards), n=5, seed=3, progress=False).ids == a.ids[:5]


@pytest.mark.slow
def test_shard_features_and_cache_keys_equal_the_manifest(flickr24, tmp_path: Path) -> None:
    from alignkit.encoders import create_encoder

    manifest, shards, _ = flickr24
    a = load_probe(str(shards), n=8, progress=False)
    b = load_probe(manifest, n=8, progress=False)
    enc = create_encoder("torchvision:mobilenet_v2", device="cpu")
    assert feature_key(enc, a) == feature_key(enc, b)
    fa = extract_features(enc, a, cache=False, num_workers=2, batch_size=4, progress=False)
    fb = extract_features(enc, b, cache=False, num_workers=0, batch_size=4, progress=False)
    assert fa.ids == fb.ids
    assert torch.equal(fa.features, fb.features)  # bitwise
    # an image found bad only at extraction (check="none") stops it with its shard and key
    key, image = a.ids[3], a[3].image
    data = bytearray(Path(image.shard).read_bytes())
    data[image.offset : image.offset + image.size] = b"X" * image.size  # not an image any more
    Path(image.shard).write_bytes(bytes(data))
    bad = load_probe(str(shards), n=8, check="none", progress=False)
    with pytest.raises(AlignkitError, match=rf"row '{key}' \(.*\.tar key {key}\)"):
        extract_features(enc, bad, cache=False, num_workers=0, batch_size=4, progress=False)


# ----------------------------------------------------------------------------- CLIP_benchmark


def _clip_benchmark(data_dir: Path, root: Path, retrieval: bool = False) -> tuple[Path, list]:
    lines = (data_dir / "imagenet-samples" / "labels.jsonl").read_text().splitlines()[:20]
    recs = [json.loads(x) for x in lines]
    rows = []
    for i, rec in enumerate(recs):
        row = {"id": f"s{i:07d}", "image": str(data_dir / "imagenet-samples" / rec["image"])}
        row["label"] = i % 5
        if retrieval:
            row["captions"] = [f"photo {i} of a thing", f"another caption {i}"]
        rows.append(row)
    (root / "test").mkdir(parents=True)
    rows_by_shard = [rows[:12], rows[12:]]
    for s, part in enumerate(rows_by_shard):
        with tarfile.open(root / "test" / f"{s}.tar", "w") as tf:
            for r in part:
                _add(tf, f"{r['id']}.webp", Path(r["image"]).read_bytes())
                if retrieval:
                    _add(tf, f"{r['id']}.txt", "\n".join(r["captions"]).encode())
                else:
                    _add(tf, f"{r['id']}.cls", str(r["label"]).encode())
    (root / "test" / "nshards.txt").write_text("2\n")
    (root / "classnames.txt").write_text("tench\ngoldfish\nwhite shark\ntiger shark\nhammerhead\n")
    (root / "zeroshot_classification_templates.txt").write_text(
        "a photo of a {c}.\na blurry photo of the {c}.\n"
    )
    if retrieval:
        (root / "dataset_type.txt").write_text("retrieval\n")
    return root, rows


def test_clip_benchmark_classification_folder(data_dir: Path, tmp_path: Path) -> None:
    root, rows = _clip_benchmark(data_dir, tmp_path / "wds_tiny")
    probe = load_probe(root, progress=False)
    assert probe.class_names == ("tench", "goldfish", "white shark", "tiger shark", "hammerhead")
    assert probe.templates == ("a photo of a {}.", "a blurry photo of the {}.")
    assert probe.labels == [i % 5 for i in range(20)]
    assert probe[8].captions == ("a photo of a tiger shark.", "a blurry photo of the tiger shark.")
    # the same rows as a labelled manifest with the same class names and templates
    for r in rows:
        r.pop("captions", None)
    manifest = _write_manifest(tmp_path / "labels.jsonl", rows)
    same = load_probe(
        manifest,
        class_names=list(probe.class_names),
        templates=probe.templates,
        progress=False,
    )
    _same_rows(probe, same)
    # the user's class names and templates win
    own = load_probe(root, class_names=list("abcde"), templates=["{} it is"], progress=False)
    assert own.templates == ("{} it is",)
    assert own[8].captions == ("d it is",)


def test_clip_benchmark_retrieval_folder(data_dir: Path, tmp_path: Path) -> None:
    root, rows = _clip_benchmark(data_dir, tmp_path / "wds_ret", retrieval=True)
    probe = load_probe(root, progress=False)
    assert probe[3].captions == ("photo 3 of a thing", "another caption 3")
    no_labels = [{k: v for k, v in r.items() if k != "label"} for r in rows]  # no .cls here
    manifest = _write_manifest(tmp_path / "pairs.jsonl", no_labels)
    _same_rows(probe, load_probe(manifest, progress=False))


def test_clip_benchmark_folder_without_its_root_files(data_dir: Path, tmp_path: Path) -> None:
    """A retrieval set downloaded as test/ alone (0.tar ..., nshards.txt): still CLIP_benchmark's
    folder, its split named; without nshards.txt the error says what such a folder needs."""
    root, rows = _clip_benchmark(data_dir, tmp_path / "wds_ret", retrieval=True)
    for name in ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt"):
        (root / name).unlink()
    probe = load_probe(root, progress=False)
    assert list(probe.ids) == [r["id"] for r in rows]
    assert probe[3].captions == ("photo 3 of a thing", "another caption 3")
    assert {r.attributes["split"] for r in probe.rows} == {"test"}
    (root / "test" / "nshards.txt").unlink()
    with pytest.raises(AlignkitError, match=r"no probe found .*CLIP_benchmark folder .*nshards"):
        load_probe(root, progress=False)


def test_clip_benchmark_shard_count_mismatch(data_dir: Path, tmp_path: Path) -> None:
    root, _ = _clip_benchmark(data_dir, tmp_path / "wds_tiny")
    (root / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(AlignkitError, match=r"nshards.txt says 3 shards, found 2"):
        load_probe(root, progress=False)


def test_two_downloads_sharing_keys_are_disjoint(data_dir: Path, tmp_path: Path) -> None:
    """img2dataset numbers every download's keys from 000000000: a validation set of other images
    and captions under the same keys is not the training set; the same rows are."""
    from alignkit.features import check_disjoint

    rows = _flickr_rows(data_dir, 20)
    train_rows, val_rows = rows[:10], rows[10:]
    for i, r in enumerate(val_rows):
        r["id"] = f"{i:09d}"  # the keys of the first download again
    _write_shards(tmp_path / "train", train_rows, per_shard=10)
    _write_shards(tmp_path / "val", val_rows, per_shard=10)
    train = load_probe(tmp_path / "train", progress=False)
    val = load_probe(tmp_path / "val", progress=False)
    assert set(train.ids) == set(val.ids)
    check_disjoint(train, val)  # nothing shared but the key numbers
    with pytest.raises(AlignkitError, match=r"shares 10 rows .*same id and captions"):
        check_disjoint(train, train)
    # and a pair trains on one with the other as --val (the trainer sees ids alone)
    from alignkit.training import TrainConfig, train_pair

    cfg = TrainConfig(width=8, epochs=1, batch_size=4, patience=None)
    run = train_pair(
        "random:image-16", "random:text-12", train, cfg, tmp_path / "run", val=val,
        device="cpu", progress=False, cache=str(tmp_path / "cache"),
    )  # fmt: skip
    assert (run.out_dir / "projector.safetensors").is_file()
    assert 0 <= run.result.metrics["i2t_r5"] <= 100


def test_ids_apart_marks_only_colliding_validation_ids() -> None:
    from alignkit.features import ids_apart
    from alignkit.training.data import PairedFeatures

    def paired(ids: list[str]) -> PairedFeatures:
        n = len(ids)
        return PairedFeatures(torch.randn(n, 3), torch.randn(n, 2), torch.arange(n), ids)

    train = paired(["000000000", "000000001"])
    apart = paired(["000000007", "000000008"])
    assert ids_apart(train, apart) is apart and ids_apart(train, None) is None
    same = paired(["000000001", "000000002"])
    moved = ids_apart(train, same)
    assert moved.image_ids == ["val:000000001", "val:000000002"]
    assert moved.image is same.image and moved.text is same.text  # the features untouched


# ----------------------------------------------------------------------------- bad input


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            _add(tf, name, data)
    return path


@pytest.fixture()
def jpeg(data_dir: Path) -> bytes:
    return (data_dir / "imagenet-samples" / "images" / "n01440764.jpg").read_bytes()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("k1.txt", b"a caption")], r"key k1\): no image member"),
        ([("k1.jpg", None)], r"key k1\): no caption \(.txt member\)"),
        ([("k1.jpg", None), ("k1.txt", "caf\xe9".encode("latin-1"))], r"k1\): .txt is not UTF-8"),
        ([("k1.jpg", None), ("k1.cls", b"seven")], r"k1\): .cls 'seven' is not an integer"),
    ],
)
def test_bad_sample_named_then_skipped(tmp_path: Path, jpeg: bytes, members, message) -> None:
    good = [("k0.jpg", jpeg), ("k0.txt", b"the good one")]
    bad = [(n, jpeg if d is None else d) for n, d in members]
    shard = _shard(tmp_path / "s" / "00000.tar", good + bad)
    with pytest.raises(AlignkitError, match=message) as err:
        load_probe(str(shard), class_names=["a"], progress=False)
    assert "00000.tar" in str(err.value) and "k1" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    probe = load_probe(str(shard), class_names=["a"], skip_bad=True, progress=False)
    assert probe.ids == ("k0",)
    assert [d["id"] for d in probe.dropped] == ["k1"]


@pytest.mark.parametrize("cut", ["in_image", "between_members", "no_end_blocks"])
def test_truncated_shard_named(tmp_path: Path, jpeg: bytes, cut: str) -> None:
    members = [
        (f"k{i}.{e}", jpeg if e == "jpg" else b"cap") for i in range(3) for e in ("jpg", "txt")
    ]
    shard = _shard(tmp_path / "s" / "00007.tar", members)
    whole = shard.read_bytes()
    image_blocks = -(-len(jpeg) // 512) * 512
    end = {
        "in_image": 512 + 100,  # inside k0.jpg
        "between_members": 2 * (512 + image_blocks + 1024) + 300,  # inside k2.jpg's header
        "no_end_blocks": 3 * (512 + image_blocks + 1024),  # every member, no end-of-archive
    }[cut]
    shard.write_bytes(whole[:end])
    with pytest.raises(AlignkitError, match=r"shard .*00007.tar is truncated") as err:
        load_probe(str(shard), progress=False)
    assert len(str(err.value).splitlines()) == 1


def test_not_a_tar_named(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    bogus = tmp_path / "s" / "00001.tar"
    bogus.write_bytes(b"<html>404 not found</html>" * 40)
    with pytest.raises(AlignkitError, match=r"shard .*00001.tar is not a tar file"):
        load_probe(str(bogus), progress=False)


def test_pattern_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(AlignkitError, match=r"names 3 file\(s\) and 3 do not exist"):
        load_probe(f"{tmp_path}/shards/{{00000..00002}}.tar", progress=False)


def test_unreadable_image_in_shard_named_with_key(tmp_path: Path, jpeg: bytes) -> None:
    members = [("k0.jpg", jpeg), ("k0.txt", b"good"), ("k1.jpg", jpeg[:400]), ("k1.txt", b"cut")]
    shard = _shard(tmp_path / "s" / "00003.tar", members)
    with pytest.raises(
        AlignkitError, match=r"'k1' \(shard .*00003.tar key k1\): unreadable image"
    ) as e:
        load_probe(str(shard), progress=False)
    assert str(e.value).count("key k1") == 1  # the shard and key named once
    probe = load_probe(str(shard), skip_bad=True, progress=False)
    assert probe.ids == ("k0",) and len(probe.dropped) == 1


@pytest.mark.parametrize(
    "name",
    ["000123.jpg", "a/b/000123.seg.png", "000123", ".hidden.txt", "x.y.z", "dir.v1/k.txt"],
)
def test_keys_follow_webdataset(name: str) -> None:
    from alignkit.probes.shards import split_key

    wds = pytest.importorskip("webdataset.tariterators")
    key, ext = wds.base_plus_ext(name)
    assert split_key(name) == ((key, ext) if key is not None else (None, ""))


def test_shard_index_reused_until_the_shard_changes(
    flickr24, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alignkit.probes import shards

    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(shards, "PARALLEL_SCAN_MIN", 2)  # the first load scans in processes
    manifest, folder, rows = flickr24
    first = load_probe(str(folder), progress=False)
    _same_rows(first, load_probe(manifest, progress=False))
    log = tmp_path / "scanned.txt"  # shards are scanned in forked processes: log to a file
    real_scan = shards._scan_shard

    def logged_scan(path: Path):
        with log.open("a") as fh:
            fh.write(path.name + "\n")
        return real_scan(path)

    monkeypatch.setattr(shards, "_scan_shard", logged_scan)
    again = load_probe(str(folder), progress=False)
    assert not log.exists()  # every shard came from its index
    _same_rows(first, again)
    # a re-written shard (new captions) is scanned again, the others are not
    for r in rows[10:20]:
        r["captions"] = [f"new {r['id']}"]
    (folder / "00001.tar").unlink()
    _write_shards(tmp_path / "rewrite", rows[10:20], per_shard=10)
    (tmp_path / "rewrite" / "00000.tar").rename(folder / "00001.tar")
    changed = load_probe(str(folder), progress=False)
    assert log.read_text().split() == ["00001.tar"]
    assert changed[12].captions == (f"new {rows[12]['id']}",)
    assert changed[2].captions == first[2].captions
