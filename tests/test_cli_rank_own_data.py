"""`alignkit rank-encoders` on a user's own manifest: sizes, bad rows, early errors, --out.

Each test drives the command a user types (``alignkit.cli.main``) on a small JSONL manifest
written here, with model-free encoders (``random:``), so they run in seconds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import _cli
import pytest
from PIL import Image

FAST = ["-v", "random:image-16", "-t", "random:text-16", "--metric", "linear_cka_unbiased"]
FAST += ["--permutations", "5", "--subsamples", "0", "--cache", "off", "--quiet"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return _cli.run_cli(["rank-encoders", *argv], capsys)


def write_manifest(folder: Path, rows: int, bad: int = 0) -> Path:
    """``rows`` pairs of a small coloured PNG and a caption; the last ``bad`` images missing."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        name = f"img{i:03d}.png"
        if i < rows - bad:
            Image.new("RGB", (8, 8), (i * 4 % 256, 255 - i * 4 % 256, i % 7 * 30)).save(
                folder / name
            )
        lines.append(json.dumps({"id": f"r{i}", "image": name, "caption": f"picture number {i}"}))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_without_n_a_60_row_manifest_is_ranked_on_all_its_rows(tmp_path: Path, capsys) -> None:
    manifest = write_manifest(tmp_path / "data", 60)
    out = tmp_path / "run"
    code, stdout, err = run_cli([*FAST, "--probe", str(manifest), "--out", str(out)], capsys)
    assert code == 0, err
    assert "all rows up to 500" in stdout and "n=60 of 60 rows" in stdout
    meta = json.loads((out / "run.json").read_text())
    assert meta["probe"]["n"] == 60 and meta["probe"]["n_given"] is None
    # an explicit --n larger than the probe stays an error
    code, _, err = run_cli([*FAST, "--probe", str(manifest), "--n", "100"], capsys)
    assert code == 1 and "n=100 is more rows than probe" in err
    assert f"probe {manifest} has: got 60 rows" in err  # the probe's name, not "[n=100,...]"
    assert err.rstrip().endswith("ask for fewer rows (--n), or leave it out for every row")


def test_heatmaps_are_svg_too_only_with_svg(tmp_path: Path, capsys) -> None:
    from alignkit.ranking import Ranking

    manifest = write_manifest(tmp_path / "data", 24)
    base = [*FAST, "--probe", str(manifest), "--metric", "linear_cka"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "png")], capsys)
    assert code == 0, err
    assert {p.suffix for p in (tmp_path / "png").iterdir()} == {".csv", ".png", ".json", ".md"}
    code, _, err = run_cli([*base, "--svg", "--out", str(tmp_path / "svg")], capsys)
    assert code == 0, err
    svgs = sorted(p.name for p in (tmp_path / "svg").glob("*.svg"))
    assert svgs == ["heatmap_linear_cka.svg", "heatmap_linear_cka_unbiased.svg"]
    assert json.loads((tmp_path / "svg" / "run.json").read_text())["config"]["svg"] is True
    # a run read back and saved again keeps its formats; save(formats=...) overrides them
    Ranking.load(tmp_path / "svg").save(tmp_path / "again")
    assert len(list((tmp_path / "again").glob("*.svg"))) == 2
    Ranking.load(tmp_path / "svg").save(tmp_path / "png-only", formats=("png",))
    assert not list((tmp_path / "png-only").glob("*.svg"))


def test_one_of_a_kind_is_said_in_the_singular(tmp_path: Path, capsys) -> None:
    # one vision and one text encoder (a control pair), one bad row, two metrics
    manifest = write_manifest(tmp_path / "data", 25, bad=1)
    argv = [*FAST, "--metric", "mutual_knn", "--k", "3", "--skip-bad", "--probe", str(manifest)]
    code, stdout, err = run_cli([*argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert "1 vision x 1 text encoder on" in stdout
    assert "skipped 1 bad probe row (r24)" in err
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "1 vision × 1 text encoder = 1 pair (controls" in md
    assert "null: 5 permutations of the pairing; intervals: 0 subsamples" in md
    assert "(Kendall τ between rankings, 0 real pairs)" in md
    assert "Skipped 1 bad probe row (skip_bad)" in md
    plural_of_one = re.findall(r"\b1 (?:[a-z-]+ )?(?:pairs|rows|encoders|permutations)\b", md)
    assert not plural_of_one, plural_of_one


def test_the_command_exits_with_its_status_flushed_output_and_exit_handlers(tmp_path: Path):
    # the console command ends without the interpreter's module teardown (alignkit.cli._exit_now):
    # its status, its last line through a pipe and the process's exit handlers must survive that
    import subprocess
    import sys

    command = (
        "import atexit; atexit.register(lambda: print('exit handler ran', flush=True)); "
        "from alignkit.cli import main; main()"
    )
    manifest = write_manifest(tmp_path / "data", 24)
    argv = [*FAST, "--probe", str(manifest), "--out", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-c", command, "rank-encoders", *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2].startswith("wrote ") and lines[-1] == "exit handler ran"
    assert (tmp_path / "run" / "summary.md").is_file()
    failed = subprocess.run(
        [sys.executable, "-c", command, "rank-encoders", *FAST, "--metric", "cka"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode == 1 and "error: unknown metric 'cka'" in failed.stderr
    assert failed.stdout.strip().splitlines()[-1] == "exit handler ran"


def test_size_limits_of_subsamples_fail_before_any_encoder_loads(tmp_path: Path, capsys) -> None:
    argv = ["-v", "nope:never-loaded", "-t", "random:text-16", "--probe", "synthetic"]
    argv += ["--n", "12", "--out", str(tmp_path / "o")]  # 10 subsamples keep 10 rows; k = 10
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert "each of the 10 subsamples keeps 10 of the n=12 rows" in err
    assert "--subsamples 0" in err and "--n" in err  # the fix in the command's own words
    assert "nope:never-loaded" not in err  # no encoder was loaded


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--device", "cuda:7"], "CUDA is not available"),
        (["--caption-policy", "meen"], "--caption-policy must be one of first, mean, random"),
    ],
)
def test_run_wide_options_are_checked_before_anything_loads(
    tmp_path: Path, capsys, flag: list[str], message: str, monkeypatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["-v", "nope:never-loaded", "-t", "nope:never", "--probe", "synthetic", *flag]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and message in err, err
    assert "never-loaded" not in err and "--keep-going" not in err


def test_skip_bad_ranks_the_good_rows_and_lists_the_bad_ones(tmp_path: Path, capsys) -> None:
    manifest = write_manifest(tmp_path / "data", 30, bad=2)
    out = tmp_path / "run"
    argv = [*FAST, "--probe", str(manifest), "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "--skip-bad" in err and "skip_bad=True" not in err
    code, stdout, err = run_cli([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert "skipped 2 bad probe rows (r28, r29)" in err
    meta = json.loads((out / "run.json").read_text())
    assert [d["id"] for d in meta["probe"]["skipped_rows"]] == ["r28", "r29"]
    assert meta["probe"]["n"] == 28
    assert "Skipped 2 bad probe rows" in (out / "summary.md").read_text()


def test_an_out_that_cannot_be_written_is_refused_before_the_work(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli([*FAST, "--probe", "synthetic", "--out", str(blocker / "run")], capsys)
    assert code == 1 and "is a file" in err and str(blocker) in err


def test_a_failed_swap_says_where_the_finished_results_are(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "run"
    real_rename = Path.rename

    def refuse(self: Path, target):
        if Path(target) == out:
            raise PermissionError(13, "Permission denied")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse)
    code, _, err = run_cli([*FAST, "--probe", "synthetic", "--n", "20", "--out", str(out)], capsys)
    assert code == 1 and "they are complete in" in err
    kept = Path(err.split("they are complete in ")[1].split()[0])
    assert (kept / "run.json").is_file() and (kept / "scores.csv").is_file()


def test_library_errors_name_arguments_and_the_cli_names_flags(tmp_path: Path) -> None:
    from alignkit.errors import AlignkitError
    from alignkit.ranking import Ranking, rank_encoders

    with pytest.raises(AlignkitError) as info:
        rank_encoders(vision=["nope:model"], text=["random:text-8"], probe="synthetic", n=20)
    assert "keep_going=True" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(AlignkitError) as info:
        rank_encoders(text=["random:text-8"], probe="synthetic", n=20)
    assert "vision=SPEC" in str(info.value) and "--vision" not in str(info.value)
    from _ranking_tables import make_scores

    r = Ranking(make_scores(metrics=("linear_cka",)))
    r.save(tmp_path / "run", formats=("png",))
    with pytest.raises(AlignkitError) as info:
        r.save(tmp_path / "run", formats=("png",))
    assert "overwrite=True" in str(info.value) and "--overwrite" not in str(info.value)


def test_a_loaded_run_explores_neighbours_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    from alignkit.errors import AlignkitError
    from alignkit.ranking import Ranking, rank_encoders

    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path / "cache"))
    r = rank_encoders(
        vision=["random:image-16"],
        text=["random:text-16"],
        probe="synthetic",
        n=24,
        metrics=["linear_cka_unbiased"],
        permutations=5,
        subsamples=0,
        progress=False,
    )
    r.save(tmp_path / "run", formats=("png",))
    with pytest.raises(AlignkitError, match="features=True"):
        Ranking.load(tmp_path / "run").neighbours(0, "random:image-16")

    # the features come from the cache entries run.json names: no encoder is built, even
    # without the cache's memo of cheap identities (a cache written by an older alignkit)
    import alignkit.encoders

    def no_build(spec, **options):
        raise AssertionError(f"Ranking.load(features=True) built {spec}")

    monkeypatch.setattr(alignkit.encoders, "create_encoder", no_build)
    memo = tmp_path / "cache" / "features" / "_memo"
    assert memo.is_dir()
    shutil.rmtree(memo)
    loaded = Ranking.load(tmp_path / "run", features=True)
    for encoder in ("random:image-16", "random:text-16"):
        got, want = loaded.neighbours(3, encoder, k=4), r.neighbours(3, encoder, k=4)
        assert list(got["id"]) == list(want["id"]) and list(got["caption"]) == list(want["caption"])


def test_a_misspelt_encoder_gets_the_closest_names_first(tmp_path: Path, capsys) -> None:
    argv = ["-v", "torchvision:mobilenetv2", "-t", "random:text-8", "--probe", "synthetic"]
    argv += ["--n", "20", "--subsamples", "0", "--quiet", "--out", str(tmp_path / "o")]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert "did you mean: torchvision:mobilenet_v2 (loads offline)?" in err
    assert len(err) < 600  # not the backend's list of every architecture


# -- the next step, sizes, class names, the shared words (issue 17 items 4, 5 and 7) ----------
@pytest.mark.real
def test_the_run_ends_with_the_train_line_and_says_n_of_the_whole_probe(
    tmp_path: Path, capsys
) -> None:
    """A real pair (a ranking of controls only has nothing to train, and says nothing)."""
    manifest = write_manifest(tmp_path / "data", 30)
    out = tmp_path / "run"
    argv = [*FAST, "--probe", str(manifest), "-n", "10", "-v", "torchvision:mobilenet_v2"]
    argv += ["-t", "tfidf:svd-4", "-o", str(out)]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "(n=10 of 30 rows)" in stdout  # the subsample and the rows it was drawn from
    line = (
        f"alignkit train --from-ranking {out} --top 3 --probe TRAIN_PAIRS --val VAL_PAIRS "
        f"--out {out}-train"
    )
    assert f"next: {line}\n" in stdout
    summary = (out / "summary.md").read_text()
    assert summary.endswith(f"## Next step\n\n`{line}`\n" + summary.split(f"`{line}`\n", 1)[1])
    assert "TRAIN_PAIRS, VAL_PAIRS: your training and validation" in summary
    assert json.loads((out / "run.json").read_text())["probe"]["rows_available"] == 30


def test_the_train_line_is_exact_for_flickr8k(tmp_path: Path) -> None:
    from alignkit.cli.rank import next_step

    assert next_step(tmp_path / "r", "flickr8k:test") == (
        f"`alignkit train --from-ranking {tmp_path / 'r'} --top 3 --probe flickr8k:train "
        f"--val flickr8k:dev --out {tmp_path / 'r'}-train`"
    )


def test_class_names_give_a_labelled_manifest_its_captions(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "data"
    write_manifest(folder, 12)
    rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    labelled = folder / "labelled.jsonl"
    lines = [
        json.dumps({"id": r["id"], "image": r["image"], "label": i % 3}) for i, r in enumerate(rows)
    ]
    labelled.write_text("\n".join(lines) + "\n")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    argv = [*FAST, "--probe", str(labelled), "--out", str(tmp_path / "run")]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "pass --class-names" in err and "class_names=" not in err
    code, stdout, err = run_cli([*argv, "--class-names", str(names)], capsys)
    assert code == 0, err
    assert "(n=12 of 12 rows)" in stdout


def test_extract_batch_threads_and_the_old_batch_size(tmp_path: Path, capsys) -> None:
    manifest = write_manifest(tmp_path / "data", 12)
    base = [*FAST, "--probe", str(manifest)]
    code, _, err = run_cli(
        [*base, "--extract-batch", "5", "--threads", "1", "-o", str(tmp_path / "a")], capsys
    )
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert config["extract_batch"] == 5 and config["threads"] == 1 and "batch_size" not in config
    code, _, err = run_cli([*base, "--batch-size", "5", "-o", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert "note: --batch-size is deprecated; use --extract-batch" in err
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["extract_batch"] == 5
    toml = tmp_path / "rank.toml"
    toml.write_text("batch_size = 7\n")
    code, _, err = run_cli([*base, "-c", str(toml), "-o", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert "the key 'batch_size' is deprecated; use 'extract_batch'" in err
    assert json.loads((tmp_path / "c" / "run.json").read_text())["config"]["extract_batch"] == 7


def test_rank_config_batch_size_still_works_from_python_with_a_warning() -> None:
    from alignkit.config import RankConfig

    with pytest.warns(DeprecationWarning, match="use extract_batch="):
        cfg = RankConfig(batch_size=8)
    assert cfg.extract_batch == 8 and cfg.replace(n=3).extract_batch == 8
    assert RankConfig(extract_batch=9).extract_batch == 9
