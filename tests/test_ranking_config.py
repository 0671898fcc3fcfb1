"""Run configs: TOML and YAML files, encoder tables, unknown keys, bad values, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.config import VALID_KEYS, EncoderEntry, RankConfig, load_config, merge
from alignkit.errors import AlignkitError

TOML = """
set = "offline-small"
probe = "flickr8k:test"
n = 200
metrics = ["mutual_knn", "linear_cka"]
permutations = 50
vision = [
  "torchvision:mobilenet_v2",
  { spec = "timm:vit_small_patch14_dinov2", pooling = "cls", layer = "all" },
]
text = "st:sentence-transformers/all-MiniLM-L6-v2"
"""

YAML = """
probe: synthetic
n: 64
metrics: [linear_cka_unbiased]
vision:
  - torchvision:mobilenet_v2
  - {spec: onnx:sscd}
text: [wordllama:l2_supercat]
k: 5
"""


def test_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "rank.toml"
    path.write_text(TOML)
    cfg = load_config(path)
    assert cfg.encoder_set == "offline-small" and cfg.probe == "flickr8k:test" and cfg.n == 200
    assert cfg.metrics == ("mutual_knn", "linear_cka") and cfg.primary_metric == "mutual_knn"
    assert cfg.permutations == 50 and cfg.subsamples == RankConfig().subsamples
    assert cfg.vision[0] == EncoderEntry("torchvision:mobilenet_v2")
    dino = cfg.vision[1]
    assert dino.spec == "timm:vit_small_patch14_dinov2" and dino.kwargs == {
        "pooling": "cls",
        "layer": "all",
    }
    assert dino.label == "timm:vit_small_patch14_dinov2[layer=all,pooling=cls]"
    assert cfg.text == (EncoderEntry("st:sentence-transformers/all-MiniLM-L6-v2"),)
    again = load_config(_dump(tmp_path, cfg))  # to_dict writes a file that reads back the same
    assert again == cfg


def _dump(tmp_path: Path, cfg: RankConfig) -> Path:
    import yaml

    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "rank.yml"
    path.write_text(YAML)
    cfg = load_config(path)
    assert cfg.probe == "synthetic" and cfg.n == 64 and cfg.k == 5
    assert [e.spec for e in cfg.vision] == ["torchvision:mobilenet_v2", "onnx:sscd"]
    assert cfg.metrics == ("linear_cka_unbiased",)


def test_unknown_key_lists_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "rank.toml"
    path.write_text('probe = "synthetic"\npermutation = 10\n')
    with pytest.raises(AlignkitError) as info:
        load_config(path)
    message = str(info.value)
    assert "unknown key 'permutation'" in message
    assert "valid keys: " + ", ".join(VALID_KEYS) in message
    assert "permutations" in VALID_KEYS and "set" in VALID_KEYS and "encoder_set" not in VALID_KEYS
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("permutations = -1", "permutations must be an integer >= 0: got -1"),
        ("layers = 'some'", "layers must be one of last, all: got 'some'"),
        ("n = -1", "n must be a number of rows"),
        ("caption_policy = 'meen'", "caption_policy must be one of first, mean, random"),
        ("null = 'exact'", "null must be one of analytic, permutation, none"),
        ("metrics = []", "at least one metric"),
        ("metrics = ['mutual_knn', 'mutual_knn']", "each metric once"),
        ("vision = [{ pooling = 'cls' }]", "needs a 'spec' key"),
        ("vision = [3]", "expected a spec string or a table"),
        ("k = 'ten'", "k must be an integer"),
        ("probe = ", "not valid TOML"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "rank.toml"
    path.write_text(text + "\n")
    with pytest.raises(AlignkitError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(AlignkitError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "rank.json").write_text("{}")
    with pytest.raises(AlignkitError, match="must end in .toml, .yaml or .yml"):
        load_config(tmp_path / "rank.json")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(AlignkitError, match="expected a table of settings"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == RankConfig()


def test_command_line_overrides_the_file() -> None:
    base = RankConfig(probe="synthetic", permutations=50, vision=("onnx:sscd",))
    cfg = merge(base, permutations=7, vision=(), metrics=("mutual_knn",), probe=None)
    assert cfg.permutations == 7 and cfg.probe == "synthetic"
    assert cfg.vision == (EncoderEntry("onnx:sscd"),)  # an empty repeated option is "not given"
    assert cfg.metrics == ("mutual_knn",)
    assert merge(base) is base


def test_one_declaration_feeds_the_file_keys_and_the_command_line() -> None:
    """Every RankConfig field is a config key and a rank-encoders option, from one declaration:
    the command's options are exactly the fields' flags plus the command's own five."""
    import typer.main

    from alignkit.cli import app
    from alignkit.config import declared

    command = typer.main.get_command(app).commands["rank-encoders"]  # type: ignore[attr-defined]
    flags = {
        p.opts[0]
        for p in command.params
        if getattr(p, "opts", None) and p.opts[0] != "--help" and not p.hidden  # old spellings
    }
    from_fields = {opt.flag or "--" + f.name.replace("_", "-") for f, opt in declared(RankConfig)}
    assert flags == from_fields | {"--config", "--out", "--overwrite", "--top", "--quiet"}
    assert {"--set", "--metric", "--n", "--keep-going"} <= from_fields
    assert set(VALID_KEYS) == {
        "set" if f.name == "encoder_set" else f.name for f, _ in declared(RankConfig)
    }


def test_the_option_name_works_as_a_config_key_and_typos_get_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "rank.toml"
    path.write_text('metric = "mutual_knn"\n')  # the command-line option is --metric
    assert load_config(path).metrics == ("mutual_knn",)
    path.write_text("permutaions = 10\n")
    with pytest.raises(AlignkitError, match="did you mean 'permutations'"):
        load_config(path)
    path.write_text('metric = "mutual_knn"\nmetrics = ["linear_cka"]\n')
    with pytest.raises(AlignkitError, match="metrics given twice"):
        load_config(path)


def test_the_options_table_in_the_docs_is_the_declaration() -> None:
    from alignkit.cli._options import options_markdown

    doc = (Path(__file__).parents[1] / "docs" / "ranking.md").read_text(encoding="utf-8")
    table = doc.split("<!-- options:begin -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert table == options_markdown(RankConfig), "regenerate the table in docs/ranking.md"
