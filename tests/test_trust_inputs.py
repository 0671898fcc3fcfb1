"""Inputs that used to give silently wrong numbers or late raw errors (issue 16, items 3 and 4):
class-name lists with a repeated name, and prompt templates that cannot be filled."""

from __future__ import annotations

import pytest
import torch
from _cli import run_cli

from alignkit.errors import AlignkitError
from alignkit.evaluation.evaluate import AlignedPair, evaluate_pair
from alignkit.evaluation.prompts import load_templates, prompt_probe
from alignkit.probes import imagenet_class_names, load_probe
from alignkit.probes.labels import check_class_names

VISION, TEXT = "random:image-16", "random:text-12"


def _clip_notebook_names() -> list[str]:
    """The curated ImageNet list as CLIP's notebooks ship it: labels 657 and 744 both 'missile'."""
    names = list(imagenet_class_names())
    assert names[657] == "missile" and names[744] == "projectile"
    names[744] = "missile"
    return names


# -- item 3: class names -------------------------------------------------------------------------
def test_a_repeated_class_name_names_both_labels():
    with pytest.raises(AlignkitError) as e:
        check_class_names(_clip_notebook_names(), "class_names")
    msg = str(e.value)
    assert "class names 657 and 744 are both 'missile'" in msg
    assert "allow_duplicate_class_names=True" in msg and "\n" not in msg
    assert check_class_names(_clip_notebook_names(), "x", allow_duplicates=True)[744] == "missile"
    assert len(set(imagenet_class_names())) == 1000  # the shipped list passes


def test_load_probe_refuses_a_python_list_and_a_file_with_a_repeat(data_dir, tmp_path):
    names = _clip_notebook_names()
    with pytest.raises(AlignkitError, match="657 and 744 are both 'missile'"):
        load_probe("imagenet-samples", class_names=names, data_dir=data_dir, progress=False)
    listed = tmp_path / "names.txt"
    listed.write_text("\n".join(names) + "\n", encoding="utf-8")
    with pytest.raises(AlignkitError, match=rf"{listed}: class names 657 and 744"):
        load_probe("imagenet-samples", class_names=listed, data_dir=data_dir, progress=False)
    probe = load_probe(
        "imagenet-samples",
        class_names=names,
        allow_duplicate_class_names=True,
        data_dir=data_dir,
        progress=False,
        check="read",
    )
    assert probe.class_names[744] == "missile"


def test_a_probes_classnames_txt_with_a_repeat_is_refused(data_dir, tmp_path):
    src = data_dir / "imagenet-samples" / "images"
    for k, wnid in enumerate(("n01440764", "n01443537")):
        (tmp_path / f"class{k}").mkdir()
        (tmp_path / f"class{k}" / "a.jpg").write_bytes((src / f"{wnid}.jpg").read_bytes())
    (tmp_path / "classnames.txt").write_text("fish\nfish\n", encoding="utf-8")
    with pytest.raises(AlignkitError, match="classnames.txt: class names 0 and 1 are both 'fish'"):
        load_probe(tmp_path, progress=False)
    probe = load_probe(tmp_path, progress=False, allow_duplicate_class_names=True)
    assert probe.class_names == ("fish", "fish")


def _pair() -> AlignedPair:
    return AlignedPair(VISION, TEXT, torch.nn.Identity(), torch.nn.Identity())


def test_evaluate_pair_refuses_repeated_names_before_any_extraction(data_dir, monkeypatch):
    import alignkit.features

    def boom(*a, **k):
        raise AssertionError("features were extracted before the class names were checked")

    monkeypatch.setattr(alignkit.features, "extract_features", boom)
    probe = load_probe("imagenet-samples", data_dir=data_dir, progress=False, n=4)
    with pytest.raises(AlignkitError, match="class_names: class names 657 and 744"):
        evaluate_pair(_pair(), zeroshot_probes=[probe], class_names=_clip_notebook_names())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    """A tiny real run folder (linear projector on 40 flickr8k:train pairs, random encoders)."""
    from alignkit.evaluation.runs import write_run_config
    from alignkit.features import extract_features
    from alignkit.projectors import PairedFeatures, TrainConfig, train_projector

    train = load_probe("flickr8k:train", n=40, progress=False, data_dir=data_dir)
    img = extract_features(VISION, train, device="cpu", progress=False).features
    txt = extract_features(TEXT, train, device="cpu", progress=False).features
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(width=8, epochs=1, batch_size=16, patience=None)
    data = PairedFeatures(img, txt, torch.arange(40), list(train.ids))
    train_projector(cfg, data, None, out_dir=folder, device="cpu", progress=False)
    write_run_config(folder, VISION, TEXT)
    return folder


@pytest.fixture
def no_extraction(monkeypatch):
    import alignkit.features

    def boom(*a, **k):
        raise AssertionError("features were extracted before the input was checked")

    monkeypatch.setattr(alignkit.features, "extract_features", boom)


def test_cli_class_names_file_with_a_repeat_is_one_line(
    run_dir, data_dir, tmp_path, capsys, monkeypatch, no_extraction
):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    listed = tmp_path / "names.txt"
    listed.write_text("\n".join(_clip_notebook_names()) + "\n", encoding="utf-8")
    argv = ["evaluate", "--run", str(run_dir), "--zeroshot", "imagenet-samples", "-n", "4"]
    code, _, err = run_cli([*argv, "--class-names", str(listed), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in err
    line = err.strip()
    assert "\n" not in line and "657 and 744 are both 'missile'" in line
    assert "--allow-duplicate-class-names" in line and "allow_duplicate_class_names" not in line


# -- item 4: templates ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template, problem",
    [
        ("a {style} photo of a {}.", "has the field {style}, which no value fills"),
        ("a photo of a {}}.", "is not a valid format string (Single '}'"),
        ("a photo of a {.", "is not a valid format string"),
        ("a photo of a {} and a {}.", "has 2 replacement fields"),
        ("a photo.", "has 0 replacement fields"),
        ("a {1} photo.", "has the field {1}"),
    ],
)
def test_a_template_that_cannot_be_filled_is_named_at_load(template, problem):
    with pytest.raises(AlignkitError) as e:
        load_templates([template])
    msg = str(e.value)
    assert f"template {template!r} {problem}" in msg and "\n" not in msg


def test_the_class_name_fields_that_fill_agree():
    # '{}', '{0}' and CLIP_benchmark's '{c}' are the same prompt; '{{ }}' stays a literal brace
    templates = load_templates(["a {} photo.", "a {0} photo.", "a {c} photo.", "{{a}} {} photo."])
    probe = prompt_probe(["dog"], templates)
    assert [r.captions[0] for r in probe.rows] == [
        "a dog photo.",
        "a dog photo.",
        "a dog photo.",
        "{a} dog photo.",
    ]


def test_a_template_file_is_checked_line_by_line(tmp_path):
    f = tmp_path / "templates.txt"
    f.write_text("a photo of a {}.\na {style} photo of a {}.\n", encoding="utf-8")
    with pytest.raises(AlignkitError, match=r"templates.txt: template 'a \{style\} photo"):
        load_templates(f)


def test_cli_bad_template_fails_before_extraction(
    run_dir, data_dir, tmp_path, capsys, monkeypatch, no_extraction
):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    f = tmp_path / "templates.txt"
    f.write_text("a {style} photo of a {}.\n", encoding="utf-8")
    argv = ["evaluate", "--run", str(run_dir), "--zeroshot", "imagenet-samples", "-n", "4"]
    code, _, err = run_cli([*argv, "--templates", str(f), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "\n" not in err.strip() and "template 'a {style} photo of a {}.'" in err


def test_a_probe_template_is_checked_too(data_dir):
    with pytest.raises(AlignkitError, match=r"template 'a \{style\} \{\}'"):
        load_probe("imagenet-samples", templates=["a {style} {}"], data_dir=data_dir)
