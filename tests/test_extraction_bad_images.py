"""Sharded probes during extraction (issue 18): a seeded ``--n`` picks the same rows over shards
as over a manifest, and images found bad only when extraction decodes them (check="none", or a
probe too large to check at load) stop the run naming the row and shard, or are skipped with
``skip_bad`` while the features of the good rows stay those of a clean run."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli import run_cli
from test_probes_webdataset import _flickr_rows, _write_manifest, _write_shards

from alignkit.features import FeatureSet

pytestmark = pytest.mark.real


@pytest.fixture()
def flickr40(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """40 real flickr8k rows as a manifest and as 4 webdataset shards of 10."""
    rows = _flickr_rows(data_dir, 40)
    manifest = _write_manifest(tmp_path / "pairs.jsonl", rows)
    _write_shards(tmp_path / "shards", rows, per_shard=10)
    return manifest, tmp_path / "shards"


def _extracted_ids(capsys, tmp_path: Path, probe: str, *extra: str) -> tuple[str, ...]:
    out = tmp_path / f"f{len(list(tmp_path.glob('f*.safetensors')))}.safetensors"
    argv = ["extract", "-e", "random:image-16", "-p", probe, "--out", str(out), *extra]
    code, _, err = run_cli([*argv, "--cache", str(tmp_path / "cache"), "--quiet"], capsys)
    assert code == 0, err
    return FeatureSet.load(out).ids


def test_seeded_n_over_shards_picks_the_manifest_rows(flickr40, tmp_path: Path, capsys) -> None:
    manifest, shards = flickr40
    pick = ("--n", "20", "--seed", "3")
    over_shards = _extracted_ids(capsys, tmp_path, str(shards), *pick)
    pattern = _extracted_ids(capsys, tmp_path, f"{shards}/{{00000..00003}}.tar", *pick)
    over_manifest = _extracted_ids(capsys, tmp_path, str(manifest), *pick)
    assert len(over_shards) == 20 and over_shards == over_manifest == pattern
    # the seed matters (so the equality above is not that of two unseeded prefixes)
    seed0 = _extracted_ids(capsys, tmp_path, str(shards), "--n", "20", "--seed", "0")
    assert seed0 != over_shards
    assert set(over_shards) != {f"{i:09d}" for i in range(20)}


# ----------------------------------------------------------------------------- bad images
# (name, bytes maker, what the error says): planted among real flickr8k images
_BOMB_PIXELS = 1_000_000  # PIL.Image.MAX_IMAGE_PIXELS in these tests; the real images are smaller


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _planted(jpeg: bytes) -> dict[str, bytes]:
    return {
        "truncated.jpg": jpeg[:400],
        "not_an_image.jpg": b"<html>404 not found</html>\n" * 20,
        "empty.png": b"",
        "bomb_warning.png": _png(1200, 1000),  # 1.2 MP: PIL warns (DecompressionBombWarning)
        "bomb_error.png": _png(1500, 1500),  # 2.25 MP > 2 x the limit: DecompressionBombError
    }


BAD_AT = {2: "truncated.jpg", 5: "not_an_image.jpg", 6: "empty.png", 9: "bomb_warning.png"}
BAD_AT[12] = "bomb_error.png"


@pytest.fixture()
def planted(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """10 real flickr8k rows with 5 bad images planted at rows 2, 5, 6, 9 and 12 (15 rows), as a
    manifest and as one webdataset shard, plus the manifest of the 10 good rows alone."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", _BOMB_PIXELS)  # workers fork: they inherit
    good = iter(_flickr_rows(data_dir, 10))
    jpeg = Path(_flickr_rows(data_dir, 1)[0]["image"]).read_bytes()
    files = _planted(jpeg)
    (tmp_path / "bad").mkdir()
    rows = []
    for i in range(15):
        if i in BAD_AT:
            path = tmp_path / "bad" / BAD_AT[i]
            path.write_bytes(files[BAD_AT[i]])
            rows.append({"id": f"bad{i:02d}", "image": str(path), "captions": [f"bad row {i}"]})
        else:
            rows.append(next(good))
    clean = [r for r in rows if not r["id"].startswith("bad")]
    shard_rows = [{**r, "image": r["image"]} for r in rows]
    _write_shards(tmp_path / "shards", shard_rows, per_shard=15, image_ext="jpg")
    return {
        "manifest": _write_manifest(tmp_path / "pairs.jsonl", rows),
        "clean": _write_manifest(tmp_path / "clean.jsonl", clean),
        "shard": tmp_path / "shards" / "00000.tar",
        "bad_ids": [r["id"] for r in rows if r["id"].startswith("bad")],
        "good_ids": tuple(r["id"] for r in clean),
    }


def _load(spec: Path, **kw):
    from alignkit.probes import load_probe

    return load_probe(str(spec), check="none", progress=False, **kw)  # images read at extraction


@pytest.mark.parametrize("form", ["manifest", "shard"])
def test_a_bad_image_stops_the_run_keeping_what_was_extracted_then_skip_bad_resumes(
    planted: dict, tmp_path: Path, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from alignkit.errors import AlignkitError
    from alignkit.features import FeatureCache, extract_features

    probe = _load(planted[form])
    assert len(probe) == 15
    store = FeatureCache.at(tmp_path / "cache")
    run = {"cache": store, "batch_size": 2, "num_workers": 1, "progress": False}
    with pytest.raises(AlignkitError) as err:
        extract_features("random:image-512", probe, **run)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "row 'bad02'" in message and "skip_bad=True" in message and "rerun resumes" in message
    if form == "shard":
        assert "00000.tar key bad02" in message
    else:
        assert "truncated.jpg" in message
    # the rows before the bad one (batch [0, 2)) are in the cache's shards
    [(key, *_)] = [(p.name.split(".")[0],) for p in store.root.rglob("*.partial")]
    assert [(a, b) for a, b, _ in store.load_shards(key)] == [(0, 2)]

    caplog.set_level("INFO", logger="alignkit")
    fs = extract_features("random:image-512", probe, skip_bad=True, **run)
    assert "resuming, 2 of 15 rows already in shards" in caplog.text
    assert fs.ids == planted["good_ids"]  # 10 rows, in order, no off-by-one
    skipped = fs.provenance["skipped_rows"]
    assert [d["id"] for d in skipped] == planted["bad_ids"]
    reasons = " ".join(d["reason"] for d in skipped)
    assert "DecompressionBombWarning" in reasons and "DecompressionBombError" in reasons
    warned = [r for r in caplog.records if "skipping row" in r.getMessage()]
    assert len(warned) == 5
    clean = extract_features(
        "random:image-512", _load(planted["clean"]), cache=False, batch_size=2, progress=False
    )
    assert clean.ids == fs.ids and torch.equal(clean.features, fs.features)
    assert not torch.isnan(fs.features).any()

    # the cache now holds the finished extraction: a hit, whichever way it is asked for
    again = extract_features("random:image-512", probe, skip_bad=True, **run)
    assert again.ids == fs.ids and torch.equal(again.features, fs.features)
    with pytest.raises(AlignkitError, match=r"row 'bad02'.*\(5 such rows\); pass skip_bad=True"):
        extract_features("random:image-512", probe, **run)


def test_the_other_modality_and_the_probe_follow_the_skipped_rows(planted: dict) -> None:
    import torch

    from alignkit.features import extract_features
    from alignkit.features.skipped import without_skipped

    probe = _load(planted["manifest"])
    run = {"cache": False, "batch_size": 4, "num_workers": 0, "progress": False}
    image = extract_features("random:image-64", probe, skip_bad=True, **run)
    text = extract_features("random:text-32", probe, skip_bad=True, **run)
    assert text.n == 15 and image.n == 10
    kept, feats = without_skipped(probe, {"image": image, "text": text})
    assert kept.ids == planted["good_ids"] == feats["image"].ids == feats["text"].ids
    assert [d["id"] for d in kept.dropped] == planted["bad_ids"]
    assert kept.fingerprint != probe.fingerprint
    at = [probe.ids.index(i) for i in kept.ids]
    assert torch.equal(feats["text"].features, text.features[at])  # each caption stays its row's
    # what load_probe(skip_bad=True) gives when it decodes the images at load: the same rows
    from alignkit.probes import load_probe

    loaded = load_probe(str(planted["manifest"]), check="decode", skip_bad=True, progress=False)
    assert loaded.ids == kept.ids


# ----------------------------------------------------------------------------- the commands
@pytest.fixture()
def found_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe is too large to decode at load: images are checked when extraction reads
    them (as for a probe of more than EAGER_CHECK_ROWS rows)."""
    from alignkit.probes import registry

    monkeypatch.setattr(registry, "EAGER_CHECK_ROWS", 0)


def test_extract_command_stops_in_one_line_then_skips_and_says_so(
    planted: dict, found_late, tmp_path: Path, capsys
) -> None:
    argv = ["extract", "-e", "random:image-16", "-p", str(planted["manifest"])]
    argv += ["--extract-batch", "4", "--cache", str(tmp_path / "c"), "--quiet"]
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "row 'bad02'" in lines[0] and "truncated.jpg" in lines[0]
    assert "--skip-bad" in lines[0] and "skip_bad" not in lines[0]
    code, out, err = run_cli([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert "random:image-16: 10 rows x 16 extracted" in out
    assert "skipped 5 rows whose image cannot be read ('bad02', 'bad05', 'bad06'" in out


@pytest.mark.parametrize("found", ["at extraction", "at load"])
def test_rank_train_and_evaluate_record_the_skipped_rows(
    planted: dict, found: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a bad image is found when extraction reads it (a large probe) or when the probe is
    loaded (a small one), each run record lists it."""
    import json

    from alignkit.probes import registry

    if found == "at extraction":
        monkeypatch.setattr(registry, "EAGER_CHECK_ROWS", 0)

    manifest = str(planted["manifest"])
    cache = ["--cache", str(tmp_path / "c")]
    # rank-encoders: run.json's probe lists the rows, the scores are of the 10 good rows
    rank = ["rank-encoders", "-v", "random:image-16", "-t", "random:text-16", "--probe", manifest]
    rank += ["--metric", "linear_cka_unbiased", "--permutations", "5", "--subsamples", "0"]
    rank += [*cache, "--quiet", "--out", str(tmp_path / "rank")]
    code, _, err = run_cli(rank, capsys)
    assert code == 1 and "--skip-bad" in err and "bad02" in err
    code, _, err = run_cli([*rank, "--skip-bad"], capsys)
    assert code == 0, err
    probe = json.loads((tmp_path / "rank" / "run.json").read_text())["probe"]
    assert probe["n"] == 10
    assert [d["id"] for d in probe["skipped_rows"]] == planted["bad_ids"]
    # train: run.json counts them and names the first
    train = ["train", "--vision", "random:image-16", "--text", "random:text-16", "--probe"]
    train += [manifest, "--epochs", "1", "--batch-size", "4", "--width", "8", "--device", "cpu"]
    train += [*cache, "--quiet", "--out", str(tmp_path / "run")]
    code, _, err = run_cli(train, capsys)
    assert code == 1 and "--skip-bad" in err and "bad02" in err
    code, _, err = run_cli([*train, "--skip-bad"], capsys)
    assert code == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["skipped_rows"]["train"]["count"] == 5
    assert [d["id"] for d in run["skipped_rows"]["train"]["first"]] == planted["bad_ids"]
    # evaluate: each retrieval number of the probe says what was left out
    evaluate = ["evaluate", "--run", str(tmp_path / "run"), "--retrieval", manifest]
    evaluate += ["--allow-overlap", *cache, "--quiet", "--out", str(tmp_path / "eval")]
    code, _, err = run_cli(evaluate, capsys)
    assert code == 1 and "--skip-bad" in err and "bad02" in err
    code, _, err = run_cli([*evaluate, "--skip-bad"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    r1 = metrics[f"retrieval/{manifest}/image_to_text_R@1"]
    assert r1["n"] == 10 and r1["skipped_rows"]["count"] == 5


def test_a_subsample_reads_the_entry_and_meets_only_its_own_skipped_rows(
    planted: dict, tmp_path: Path
) -> None:
    import torch

    from alignkit.errors import AlignkitError
    from alignkit.features import FeatureCache, extract_features
    from alignkit.features.skipped import without_skipped

    probe = _load(planted["manifest"])
    run = {"cache": FeatureCache.at(tmp_path / "cache"), "num_workers": 0, "progress": False}
    whole = extract_features("random:image-32", probe, skip_bad=True, batch_size=4, **run)
    good = probe.subset([i for i in range(15) if i not in BAD_AT][:6], name="six good rows")
    part = extract_features("random:image-32", good, batch_size=4, **run)  # from the entry
    assert part.provenance.get("cached_from") and "skipped_rows" not in part.provenance
    assert torch.equal(part.features, whole.features[:6])
    assert without_skipped(good, {"image": part})[0] is good
    with_bad = probe.subset([0, 1, 2, 3], name="with a bad row")
    with pytest.raises(AlignkitError, match=r"row 'bad02'.*\(1 such row\)"):
        extract_features("random:image-32", with_bad, batch_size=4, **run)
    kept = extract_features("random:image-32", with_bad, skip_bad=True, batch_size=4, **run)
    assert kept.ids == ("000000000", "000000001", "000000002")  # rows 0, 1 and 3
    assert [d["id"] for d in kept.provenance["skipped_rows"]] == ["bad02"]


@pytest.mark.slow
def test_mobilenet_features_of_the_good_rows_of_a_shard_are_a_clean_runs(planted: dict) -> None:
    """A real CNN: the stand-ins keep every batch's size, and the good rows' features are those
    of the manifest of the good files alone (another batching: equal to float32 rounding)."""
    import torch

    from alignkit.encoders import create_encoder
    from alignkit.features import extract_features

    enc = create_encoder("torchvision:mobilenet_v2", device="cpu")
    run = {"cache": False, "batch_size": 4, "progress": False}
    fs = extract_features(enc, _load(planted["shard"]), skip_bad=True, num_workers=1, **run)
    clean = extract_features(enc, _load(planted["clean"]), num_workers=0, **run)
    assert fs.ids == clean.ids == planted["good_ids"]
    torch.testing.assert_close(fs.features, clean.features, rtol=1e-4, atol=1e-5)
    # and each row is its own image: a shift by one row would be far off
    assert not torch.allclose(fs.features[1:], clean.features[:-1], atol=1e-2)
