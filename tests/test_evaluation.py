"""Retrieval and zero-shot metrics against naive loops written here, and their bad input."""

from __future__ import annotations

import math
import random

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.evaluation.prompts import (
    SINGLE_TEMPLATE,
    caption_probe,
    load_templates,
    prompt_probe,
)
from alignkit.evaluation.retrieval import first_positive_ranks, retrieval
from alignkit.evaluation.zeroshot import ensemble_classifier, zeroshot
from alignkit.probes import ProbeRow, ProbeSet


# -- naive references -------------------------------------------------------------------------
def naive_rank(scores: list[float], positives: set[int]) -> int:
    """Walk a list sorted by score, ties broken against the ground truth: negatives first."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j in positives))
    for position, j in enumerate(order, start=1):
        if j in positives:
            return position
    raise AssertionError("no positive")


def naive_retrieval(img: torch.Tensor, txt: torch.Tensor, text_image: list[int], k: int):
    """CLIP_benchmark semantics by brute force: (i2t hits, t2i hits, i2t ranks, t2i ranks)."""
    sim = (img.double() @ txt.double().T).tolist()  # (n_img, n_txt)
    i2t, t2i = [], []
    for i in range(len(sim)):
        caps = {t for t, im in enumerate(text_image) if im == i}
        i2t.append(naive_rank(sim[i], caps))
    for t in range(len(text_image)):
        column = [sim[i][t] for i in range(len(sim))]
        t2i.append(naive_rank(column, {text_image[t]}))
    return (
        sum(r <= k for r in i2t) / len(i2t),
        sum(r <= k for r in t2i) / len(t2i),
        i2t,
        t2i,
    )


# -- retrieval ------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocks", [(1024, 16384), (3, 7), (1, 1)])
def test_retrieval_matches_naive_loop_with_varying_captions(blocks):
    g = torch.Generator().manual_seed(0)
    n_img = 23
    # 1-4 captions per image, shuffled so an image's captions are not contiguous
    text_image = [i for i in range(n_img) for _ in range(1 + i % 4)]
    random.Random(1).shuffle(text_image)
    img = torch.nn.functional.normalize(torch.randn(n_img, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(
        img[text_image] + 1.5 * torch.randn(len(text_image), 8, generator=g), dim=1
    )
    result = retrieval(img, txt, text_image, query_block=blocks[0], gallery_block=blocks[1])
    metrics = result.metrics(ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i, ranks_i2t, ranks_t2i = naive_retrieval(img, txt, text_image, k)
        assert metrics[f"image_to_text_R@{k}"]["value"] == pytest.approx(i2t)
        assert metrics[f"text_to_image_R@{k}"]["value"] == pytest.approx(t2i)
    assert result.image_to_text.tolist() == ranks_i2t
    assert result.text_to_image.tolist() == ranks_t2i
    ranks = sorted(ranks_t2i)
    m = len(ranks)
    median = (ranks[(m - 1) // 2] + ranks[m // 2]) / 2
    assert metrics["text_to_image_median_rank"]["value"] == pytest.approx(median)
    assert metrics["image_to_text_mean_rank"]["value"] == pytest.approx(sum(ranks_i2t) / n_img)
    assert metrics["image_to_text_R@1"]["n"] == n_img
    assert metrics["text_to_image_R@1"]["n"] == len(text_image)
    # the test's data must exercise both outcomes, or it proves nothing
    assert 0 < metrics["text_to_image_R@5"]["value"] < 1


def test_ties_are_pessimistic():
    # integer features: every score is exact, so ties are real ties
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    # ground truth 1 ties with 0 and 3: both count above it
    assert first_positive_ranks(query, gallery, torch.tensor([[1]])).tolist() == [3]
    # two tied positives: the other positive is not counted against the query
    assert first_positive_ranks(query, gallery, torch.tensor([[1, 3]])).tolist() == [2]
    # a constant encoder gets the worst rank, never a lucky first place
    const_img, const_txt = torch.ones(4, 3), torch.ones(8, 3)
    res = retrieval(const_img, const_txt, [0, 0, 1, 1, 2, 2, 3, 3])
    assert res.text_to_image.tolist() == [4] * 8
    assert res.image_to_text.tolist() == [7] * 4  # 6 other captions + 1
    assert res.metrics()["text_to_image_R@1"]["value"] == 0.0


def test_integer_ties_match_naive_loop_across_blocks():
    g = torch.Generator().manual_seed(3)
    img = torch.randint(-1, 2, (17, 3), generator=g).float()
    text_image = [i % 17 for i in range(40)]
    txt = torch.randint(-1, 2, (40, 3), generator=g).float()
    res = retrieval(img, txt, text_image, query_block=4, gallery_block=5)
    _, _, ranks_i2t, ranks_t2i = naive_retrieval(img, txt, text_image, 1)
    assert res.image_to_text.tolist() == ranks_i2t
    assert res.text_to_image.tolist() == ranks_t2i


def test_chance_levels_match_random_embeddings():
    # 5 captions per image as in Flickr8k; random rankings average the stated chance level
    n_img = 200
    text_image = [i // 5 for i in range(5 * n_img)]
    hits_i2t, hits_t2i = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        res = retrieval(
            torch.randn(n_img, 16, generator=g), torch.randn(5 * n_img, 16, generator=g), text_image
        )
        m = res.metrics()
        hits_i2t.append(m["image_to_text_R@10"]["value"])
        hits_t2i.append(m["text_to_image_R@10"]["value"])
    chance_i2t = 1 - math.comb(995, 10) / math.comb(1000, 10)
    assert m["image_to_text_R@10"]["chance"] == pytest.approx(chance_i2t)
    assert m["text_to_image_R@10"]["chance"] == pytest.approx(10 / n_img)
    assert sum(hits_i2t) / 20 == pytest.approx(chance_i2t, abs=0.015)
    assert sum(hits_t2i) / 20 == pytest.approx(10 / n_img, abs=0.01)
    assert m["text_to_image_mean_rank"]["chance"] == pytest.approx((n_img + 1) / 2)


def test_retrieval_bad_input():
    img, txt = torch.randn(3, 4), torch.randn(6, 4)
    with pytest.raises(AlignkitError, match="one image index per caption: got 5 indices for 6"):
        retrieval(img, txt, [0, 0, 1, 1, 2])
    with pytest.raises(AlignkitError, match="1 of 3 images have none"):
        retrieval(img, txt, [0, 0, 1, 1, 1, 1])
    with pytest.raises(AlignkitError, match="index the 3 images"):
        retrieval(img, txt, [0, 0, 1, 1, 2, 3])
    with pytest.raises(AlignkitError, match="share one width"):
        retrieval(img, torch.randn(6, 5), [0, 0, 1, 1, 2, 2])
    with pytest.raises(AlignkitError, match="NaN or Inf"):
        retrieval(img, txt.clone().fill_(float("nan")), [0, 0, 1, 1, 2, 2])


# -- zero-shot ------------------------------------------------------------------------------------
def test_ensemble_is_normalise_mean_renormalise():
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(3 * 4, 5, generator=g) * torch.arange(1, 13)[:, None]  # varied norms
    weights = ensemble_classifier(prompts, 3)
    for c in range(3):
        units = [p / p.norm() for p in prompts[4 * c : 4 * c + 4]]
        mean = sum(units) / 4
        assert torch.allclose(weights[c], mean / mean.norm(), atol=1e-6)
    with pytest.raises(AlignkitError, match="got 12 rows for 5 classes"):
        ensemble_classifier(prompts, 5)


def test_zeroshot_matches_naive_loop():
    g = torch.Generator().manual_seed(2)
    n_classes, n = 7, 60
    weights = torch.nn.functional.normalize(torch.randn(n_classes, 6, generator=g), dim=1)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    images = weights[labels] + 0.9 * torch.randn(n, 6, generator=g)
    m = zeroshot(images, weights, labels, block=8).metrics()
    top1 = top5 = 0
    per_class: dict[int, list[int]] = {}
    for x, y in zip(images, labels.tolist(), strict=True):
        scores = (weights.double() @ (x.double() / x.double().norm())).tolist()
        r = naive_rank(scores, {y})
        top1 += r == 1
        top5 += r <= 5
        per_class.setdefault(y, []).append(r == 1)
    assert m["top1"]["value"] == pytest.approx(top1 / n)
    assert m["top5"]["value"] == pytest.approx(top5 / n)
    balanced = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    assert m["mean_per_class_recall"]["value"] == pytest.approx(balanced)
    assert m["mean_per_class_recall"]["value"] != pytest.approx(m["top1"]["value"])  # unbalanced
    assert m["top1"]["chance"] == pytest.approx(1 / 7)
    assert 0 < top1 < n


def test_zeroshot_bad_labels():
    with pytest.raises(AlignkitError, match="class-name list that matches the labels"):
        zeroshot(torch.randn(3, 4), torch.randn(2, 4), [0, 1, 2])
    with pytest.raises(AlignkitError, match="got 2 labels"):
        zeroshot(torch.randn(3, 4), torch.randn(2, 4), [0, 1])


# -- templates and text probes --------------------------------------------------------------------
def test_template_sets():
    t80, t7 = load_templates("imagenet80"), load_templates("imagenet7")
    assert len(t80) == 80 and len(set(t80)) == 80
    assert len(t7) == 7 and set(t7) <= set(t80)
    assert load_templates("single") == (SINGLE_TEMPLATE,)
    with pytest.raises(AlignkitError, match="expected one of: imagenet7, imagenet80, single"):
        load_templates("imagenet81")
    with pytest.raises(AlignkitError, match="exactly one"):
        load_templates(["a photo"])


def test_template_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a {} here.\n\nthe {}!\n")
    assert load_templates(str(path)) == ("a {} here.", "the {}!")


def test_prompt_and_caption_probes(tmp_path):
    p = prompt_probe(["cat", "dog"], ["a {}.", "the {}!"])
    assert [r.captions[0] for r in p.rows] == ["a cat.", "the cat!", "a dog.", "the dog!"]
    assert [r.label for r in p.rows] == [0, 0, 1, 1]
    assert p.fingerprint == prompt_probe(["cat", "dog"], ["a {}.", "the {}!"]).fingerprint
    assert p.fingerprint != prompt_probe(["cat", "dog"], ["a {}.", "one {}!"]).fingerprint
    img = tmp_path / "x.png"
    img.write_bytes(b"not read")
    rows = (
        ProbeRow("a", img, ("one", "two"), digest="d1"),
        ProbeRow("b", img, ("three",), digest="d2"),
    )
    caps, index = caption_probe(ProbeSet("p", rows))
    assert caps.ids == ("a#0", "a#1", "b#0")
    assert index == [0, 0, 1]
    assert [r.captions for r in caps.rows] == [("one",), ("two",), ("three",)]


# --- exact ties: every compared score from one product (issue 16, item 1) -------------------


def _reference_ranks(queries, gallery, positives):
    """float64 loop from the definition: 1 + #{non-positive j : s_qj >= max over positives}."""
    scores = queries.double() @ gallery.double().T  # duplicated rows tie exactly here too
    out = []
    for i in range(scores.shape[0]):
        pos = [int(p) for p in positives[i] if p >= 0]
        best = max(float(scores[i, p]) for p in pos)
        above = [j for j in range(scores.shape[1]) if j not in pos and float(scores[i, j]) >= best]
        out.append(1 + len(above))
    return torch.tensor(out)


@pytest.mark.parametrize("gallery_block", [16384, 7])
def test_constant_image_embedding_gets_no_lucky_rank(gallery_block):
    # float (not integer) features that tie exactly: every image embedding is the same row
    gen = torch.Generator().manual_seed(3)
    n = 200
    image = torch.nn.functional.normalize(torch.randn(1, 48, generator=gen), dim=-1).expand(n, 48)
    image = image.contiguous()
    text = torch.nn.functional.normalize(torch.randn(n, 48, generator=gen), dim=-1)
    result = retrieval(image, text, torch.arange(n), gallery_block=gallery_block)
    metrics = result.metrics()
    assert metrics["text_to_image_R@1"]["value"] == 0.0
    assert metrics["text_to_image_R@10"]["value"] == 0.0
    assert bool((result.text_to_image == n).all())


@pytest.mark.parametrize("gallery_block", [16384, 5])
def test_ranks_equal_float64_reference_with_planted_float_ties(gallery_block):
    gen = torch.Generator().manual_seed(11)
    gallery = torch.randn(40, 16, generator=gen) * 0.37
    gallery[7] = gallery[3]  # exact duplicates of float rows: tied with whatever points at 3
    gallery[21] = gallery[3]
    gallery[30] = gallery[12]
    queries = torch.randn(25, 16, generator=gen) * 1.3
    positives = torch.randint(0, 40, (25, 2), generator=gen)
    positives[:, 0] = torch.tensor([3, 12] * 12 + [3])
    positives[::4, 1] = -1
    got = first_positive_ranks(queries, gallery, positives, gallery_block=gallery_block)
    assert torch.equal(got, _reference_ranks(queries, gallery, positives))


def test_zeroshot_tied_classes_count_against_the_image():
    gen = torch.Generator().manual_seed(5)
    weights = torch.nn.functional.normalize(torch.randn(6, 32, generator=gen), dim=-1)
    weights[4] = weights[1]  # two classes with bit-identical weights (identical prompts)
    images = weights[[1, 1, 4, 2]] + 0.01 * torch.randn(4, 32, generator=gen)
    images[:3] = weights[1]
    result = zeroshot(images, weights, [1, 4, 4, 2])
    assert result.ranks[:3].tolist() == [2, 2, 2]  # the tie is lost, never won
    assert result.metrics()["top1"]["value"] == 0.25


def test_imagenet_class_names_are_distinct():
    from alignkit.probes.formats import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[657] == "missile" and names[744] == "projectile"
