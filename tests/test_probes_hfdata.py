"""HF datasets on disk (parquet files, a save_to_disk folder) read as probes: the same rows as a
manifest of the same images, to the byte and fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.errors import AlignkitError
from alignkit.probes import load_probe

pytestmark = pytest.mark.real

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF's Image feature


def _rows(data_dir: Path, count: int) -> list[dict]:
    lines = (data_dir / "flickr8k" / "pairs.jsonl").read_text("utf-8").splitlines()[:count]
    out = []
    for line in lines:
        rec = json.loads(line)
        path = data_dir / "flickr8k" / rec["image"]
        out.append({"id": rec["source_id"], "image": str(path), "captions": rec["captions"]})
    return out


def _table(rows: list[dict], caption_column: str = "caption") -> pa.Table:
    images = [{"bytes": Path(r["image"]).read_bytes(), "path": Path(r["image"]).name} for r in rows]
    return pa.table(
        {
            "image": pa.array(images, type=_IMAGE),
            caption_column: pa.array([r["captions"] for r in rows], type=pa.list_(pa.string())),
            "img_id": pa.array([r["id"] for r in rows]),
            "sentids": pa.array([[1, 2] for _ in rows], type=pa.list_(pa.int64())),
        }
    )


def _manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture()
def rows20(data_dir: Path) -> list[dict]:
    return _rows(data_dir, 20)


def _same(a, b) -> None:
    assert a.ids == b.ids
    assert [r.captions for r in a.rows] == [r.captions for r in b.rows]
    assert [r.image_digest() for r in a.rows] == [r.image_digest() for r in b.rows]
    assert a.fingerprint == b.fingerprint


def test_parquet_files_hub_layout(rows20, tmp_path: Path) -> None:
    data = tmp_path / "flickr_hf" / "data"
    data.mkdir(parents=True)
    pq.write_table(_table(rows20[:12]), data / "test-00000-of-00002.parquet", row_group_size=5)
    pq.write_table(_table(rows20[12:]), data / "test-00001-of-00002.parquet", row_group_size=5)
    probe = load_probe(tmp_path / "flickr_hf", id_column="img_id", progress=False)
    manifest = _manifest(tmp_path / "pairs.jsonl", rows20)
    _same(probe, load_probe(manifest, progress=False))
    assert {r.attributes["split"] for r in probe.rows} == {"test"}
    assert probe[15].load_image().tobytes() == load_probe(manifest)[15].load_image().tobytes()
    # a seeded subsample is the manifest's
    _same(load_probe(data, id_column="img_id", n=6, seed=2), load_probe(manifest, n=6, seed=2))


def test_save_to_disk_folder_with_class_labels(data_dir: Path, tmp_path: Path) -> None:
    lines = (data_dir / "imagenet-samples" / "labels.jsonl").read_text().splitlines()[:10]
    recs = [json.loads(x) for x in lines]
    paths = [data_dir / "imagenet-samples" / r["image"] for r in recs]
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": p.read_bytes(), "path": None} for p in paths], type=_IMAGE
            ),
            "label": pa.array([i % 3 for i in range(10)], type=pa.int64()),
        }
    )
    folder = tmp_path / "saved"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    features = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": ["tench", "goldfish", "shark"]},
    }
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    probe = load_probe(folder, progress=False)
    assert probe.class_names == ("tench", "goldfish", "shark")
    assert probe.ids == tuple(str(i) for i in range(10))  # no id column: the row position
    assert probe[4].captions == ("a photo of a goldfish.",)
    rows = [{"id": str(i), "image": str(p), "label": i % 3} for i, p in enumerate(paths)]
    manifest = _manifest(tmp_path / "labels.jsonl", rows)
    same = load_probe(manifest, class_names=["tench", "goldfish", "shark"], progress=False)
    _same(probe, same)


def test_parquet_without_the_named_columns(rows20, tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(_table(rows20[:3], caption_column="sentences_raw"), path)
    with pytest.raises(AlignkitError, match=r"x.parquet has no caption column 'caption'.*found"):
        load_probe(path, caption_columns="caption", progress=False)
    with pytest.raises(AlignkitError, match=r"no caption column .* pass caption_columns="):
        load_probe(path, progress=False)
    probe = load_probe(path, caption_columns="sentences_raw", id_column="img_id", progress=False)
    assert probe[0].captions == tuple(rows20[0]["captions"])


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(AlignkitError, match=r"broken.parquet is not a readable parquet file"):
        load_probe(path, progress=False)


def test_unreadable_image_bytes_named_with_the_row(rows20, tmp_path: Path) -> None:
    table = _table(rows20[:4])
    images = table.column("image").to_pylist()
    images[2]["bytes"] = images[2]["bytes"][:300]  # a truncated JPEG
    table = table.set_column(0, "image", pa.array(images, type=_IMAGE))
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    with pytest.raises(AlignkitError, match=r"t.parquet row 2.*unreadable image"):
        load_probe(path, id_column="img_id", progress=False)
    probe = load_probe(path, id_column="img_id", skip_bad=True, progress=False)
    assert len(probe) == 3 and probe.dropped[0]["id"] == rows20[2]["id"]


def test_a_manifest_beside_parquet_files_is_read_as_before(rows20, tmp_path: Path) -> None:
    pq.write_table(_table(rows20[:5]), tmp_path / "extra.parquet")
    manifest_rows = [{**r, "id": f"m{i}"} for i, r in enumerate(rows20[:7])]
    _manifest(tmp_path / "pairs.jsonl", manifest_rows)
    assert load_probe(tmp_path, progress=False).ids == tuple(f"m{i}" for i in range(7))
    assert len(load_probe(tmp_path / "extra.parquet", progress=False)) == 5


def test_a_split_column_selects_rows(rows20, tmp_path: Path) -> None:
    table = _table(rows20[:9])
    splits = ["train", "val", "test"] * 3
    table = table.append_column("split", pa.array(splits))
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")  # the column wins
    probe = load_probe(tmp_path, split="val", id_column="img_id", progress=False)
    assert probe.ids == tuple(rows20[i]["id"] for i in (1, 4, 7))


# -- column names from the command line (issue 18, a new user's trip) ------------------------
def test_the_cli_names_an_hf_datasets_columns_and_its_error_says_the_flags(
    rows20, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _cli import run_cli

    path = tmp_path / "x.parquet"
    pq.write_table(_table(rows20[:3], caption_column="sentences_raw"), path)
    base = ["extract", "-e", "random:text-16", "-p", str(path), "--cache", str(tmp_path / "c")]
    code, _, err = run_cli([*base, "--quiet"], capsys)
    assert code == 1 and "pass --caption-column NAME" in err, err
    assert "caption_columns" not in err and "Traceback" not in err
    argv = [*base, "--caption-column", "sentences_raw", "--id-column", "img_id", "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "3 rows x 16 extracted" in out
    manifest = _manifest(tmp_path / "same.jsonl", rows20[:3])  # the same captions as a manifest
    code, out, err = run_cli([*base[:4], str(manifest), *base[5:], "--quiet"], capsys)
    assert code == 0, err
    assert "3 rows x 16 from the cache" in out


def test_column_options_reach_hf_probes_only_on_every_probe_command(rows20, tmp_path) -> None:
    from alignkit.config import RankConfig
    from alignkit.evaluation.config import EvaluateConfig
    from alignkit.evaluation.predictivity.config import PredictivityConfig
    from alignkit.features.config import ExtractConfig
    from alignkit.options import declared
    from alignkit.probes.containers import COLUMN_OPTIONS, column_options
    from alignkit.training.config import TrainRunConfig
    from alignkit.training.inputs import load_split_probe
    from alignkit.vocabulary import SHARED

    for cls in (RankConfig, ExtractConfig, TrainRunConfig, EvaluateConfig, PredictivityConfig):
        opts = {f.name: opt for f, opt in declared(cls)}
        for name in COLUMN_OPTIONS:
            assert opts[name] == SHARED[name][1], (cls.__name__, name)
    path = tmp_path / "x.parquet"
    pq.write_table(_table(rows20[:4], caption_column="sentences_raw"), path)
    given = {"caption_columns": ("sentences_raw",), "id_column": "img_id", "image_column": None}
    assert column_options(str(path), given) == {k: v for k, v in given.items() if v}
    assert column_options(f"{path}:train", given) == column_options(str(path), given)
    manifest = _manifest(tmp_path / "same.jsonl", rows20[:4])
    assert (
        column_options(str(manifest), given) == {} and column_options("flickr8k:test", given) == {}
    )
    probe = load_split_probe(str(path), progress=False, columns=given)
    _same(probe, load_probe(manifest, progress=False))


def test_column_flags_without_an_hf_probe_are_refused_not_ignored(
    rows20, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _cli import run_cli

    manifest = _manifest(tmp_path / "rows.jsonl", rows20[:3])
    argv = ["extract", "-e", "random:text-16", "-p", str(manifest), "--cache", "off", "--quiet"]
    code, _, err = run_cli([*argv, "--caption-column", "sentences_raw"], capsys)
    assert code == 1 and "--caption-column name(s) the columns of an HF dataset" in err, err
    assert str(manifest) in err and "Traceback" not in err
