"""Projector modules, losses and the paired-features contract, against naive formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignkit.errors import AlignkitError
from alignkit.training import (
    PROJECTORS,
    ClipLoss,
    ModelSpec,
    PairedFeatures,
    SigLipLoss,
    TokenFeatures,
    TrainConfig,
    build_model,
    build_projector,
    clip_loss,
    num_parameters,
    siglip_loss,
)
from alignkit.training.data import make_batch
from alignkit.training.modules import ImageTokenTower, TextTokenTower

# ------------------------------------------------------------------------------------------------
# projectors


def test_reference_configuration_has_the_published_parameter_count():
    # freeze-align's token-level model: residual ("patch") projections of image patches, of the
    # image CLS token and of text tokens, an MLP text head, a learnable temperature; widths 1024
    config = TrainConfig(projector="residual", text_head="mlp_head", width=1024, loss="clip")
    spec = ModelSpec(1024, 1024, image_tokens=True, image_cls=True, text_tokens=True)
    assert build_model(config, spec).num_parameters() == 11_553_793


@pytest.mark.parametrize(
    "kind, expected",
    [  # d_in = 6, d_out = 4, hidden = 5, counted by hand
        ("linear", 6 * 4 + 4),
        ("mlp", (6 * 5 + 5) + (5 * 4 + 4)),
        ("residual", 2 * 6 + (6 * 4 + 4) + (6 * 5 + 5) + (5 * 4 + 4)),
        ("glu", 2 * 6 + 2 * (6 * 5 + 5) + (5 * 4 + 4)),
        ("mlp_head", (6 * 4 + 4) + (4 * 4 + 4) + 2 * 4),  # hidden is d_out (the skip needs it)
    ],
)
def test_projector_parameter_counts(kind, expected):
    assert num_parameters(build_projector(kind, 6, 4, hidden=5)) == expected


def test_registry_is_what_the_docs_list_and_unknown_kinds_list_the_choices():
    assert sorted(PROJECTORS) == ["glu", "linear", "mlp", "mlp_head", "residual"]
    with pytest.raises(
        AlignkitError, match="expected one of: glu, linear, mlp, mlp_head, residual"
    ):
        build_projector("transformer", 4, 4)


def _naive(kind: str, p: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each projector's formula, written from the docs with explicit weights, one row at a time."""

    def lin(layer, v):
        return layer.weight @ v + layer.bias

    def ln(layer, v):
        mu, var = v.mean(), v.var(unbiased=False)
        return (v - mu) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias

    def gelu(v):
        return 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))

    rows = []
    for v in x:
        if kind == "linear":
            y = lin(p.linear, v)
        elif kind == "mlp":
            y = lin(p.fc2, gelu(lin(p.fc1, v)))
        elif kind == "residual":
            u = ln(p.norm, v)
            y = lin(p.linear, u) + lin(p.fc2, gelu(lin(p.fc1, u)))
        elif kind == "glu":
            u = ln(p.norm, v)
            y = lin(p.down, lin(p.gate, u).clamp(0, 6) * lin(p.up, u))
        else:
            q = lin(p.fc1, v)
            y = ln(p.norm, q + lin(p.fc2, gelu(q)))
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_projectors_match_their_formula_pooled_and_per_token(kind):
    torch.manual_seed(0)
    p = build_projector(kind, 6, 4, hidden=5).double().eval()
    for m in p.modules():  # non-trivial norm affine parameters
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight)
            torch.nn.init.normal_(m.bias)
    x = torch.randn(7, 6, dtype=torch.float64) * 3
    torch.testing.assert_close(p(x), _naive(kind, p, x))
    tokens = torch.randn(3, 5, 6, dtype=torch.float64)  # (n, T, d): the same map on every token
    torch.testing.assert_close(p(tokens).reshape(15, 4), _naive(kind, p, tokens.reshape(15, 6)))


def test_token_towers_pool_valid_tokens_like_a_loop_and_ignore_padding():
    torch.manual_seed(1)
    patch, cls = (
        build_projector("residual", 6, 4).double(),
        build_projector("linear", 6, 4).double(),
    )
    tower = ImageTokenTower(patch, cls).eval()
    tokens = torch.randn(3, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    cls_tok = torch.randn(3, 6, dtype=torch.float64)
    got = tower(TokenFeatures(tokens, mask, cls_tok))
    for i in range(3):
        valid = [patch(tokens[i, t]) for t in range(5) if mask[i, t]]
        want = torch.stack(valid).mean(0) + cls(cls_tok[i])
        torch.testing.assert_close(got[i], want / want.norm())
    garbage = tokens.masked_fill(~mask[..., None], 1e6)  # padding content must not matter
    torch.testing.assert_close(tower(TokenFeatures(garbage, mask, cls_tok)), got)

    head = build_projector("mlp_head", 4, 4).double()
    text = TextTokenTower(build_projector("mlp", 6, 4).double(), head).eval()
    got = text(TokenFeatures(tokens, mask))
    for i in range(3):
        pooled = torch.stack([text.token(tokens[i, t]) for t in range(5) if mask[i, t]]).mean(0)
        want = head(pooled[None])[0]
        torch.testing.assert_close(got[i], want / want.norm())


@pytest.mark.parametrize("image_tokens", [False, True])
def test_model_embeddings_are_unit_length(image_tokens):
    torch.manual_seed(2)
    spec = ModelSpec(6, 5, image_tokens=image_tokens, image_cls=image_tokens, text_tokens=False)
    model = build_model(TrainConfig(projector="glu", width=8), spec)
    image = (
        TokenFeatures(torch.randn(4, 3, 6), torch.ones(4, 3, dtype=torch.bool), torch.randn(4, 6))
        if image_tokens
        else torch.randn(4, 6)
    )
    a, b = model(image, torch.randn(9, 5))
    assert a.shape == (4, 8) and b.shape == (9, 8)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(b.norm(dim=1), torch.ones(9))


# ------------------------------------------------------------------------------------------------
# losses, against loops over pairs in float64


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _naive_clip(x, y, t2i, tau):
    n_img, n_txt = len(x), len(y)
    s = [[float(x[i] @ y[j]) / tau for j in range(n_txt)] for i in range(n_img)]
    i2t = 0.0
    for i in range(n_img):
        log_z = math.log(sum(math.exp(s[i][j]) for j in range(n_txt)))
        pos = [j for j in range(n_txt) if t2i[j] == i]
        i2t += -sum(s[i][j] - log_z for j in pos) / len(pos)
    t2i_loss = 0.0
    for j in range(n_txt):
        log_z = math.log(sum(math.exp(s[i][j]) for i in range(n_img)))
        t2i_loss += -(s[t2i[j]][j] - log_z)
    return 0.5 * (i2t / n_img + t2i_loss / n_txt)


def _naive_siglip(x, y, t2i, t_prime, b):
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if t2i[j] == i else -1.0
            logit = math.exp(t_prime) * float(x[i] @ y[j]) + b
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return total / len(x)


CAPTION_LAYOUTS = {
    "one": [0, 1, 2, 3, 4],  # one caption per image, the textbook case
    "all": [0, 0, 1, 2, 2, 2, 3, 4, 4],  # several captions per image
}


@pytest.mark.parametrize("layout", sorted(CAPTION_LAYOUTS))
def test_clip_loss_matches_a_loop_over_pairs(layout):
    t2i = CAPTION_LAYOUTS[layout]
    x, y = _unit(5, 8, 0), _unit(len(t2i), 8, 1)
    tau = 0.07
    got = clip_loss(x, y, torch.tensor(t2i), torch.tensor(tau, dtype=torch.float64))
    assert float(got) == pytest.approx(_naive_clip(x, y, t2i, tau), rel=1e-12)


@pytest.mark.parametrize("layout", sorted(CAPTION_LAYOUTS))
def test_siglip_loss_matches_a_loop_over_pairs(layout):
    t2i = CAPTION_LAYOUTS[layout]
    x, y = _unit(5, 8, 2), _unit(len(t2i), 8, 3)
    t_prime, b = math.log(10.0), -10.0
    got = siglip_loss(
        x,
        y,
        torch.tensor(t2i),
        torch.tensor(t_prime, dtype=torch.float64),
        torch.tensor(b, dtype=torch.float64),
    )
    assert float(got) == pytest.approx(_naive_siglip(x, y, t2i, t_prime, b), rel=1e-12)


def test_clip_loss_with_one_caption_each_is_clips_cross_entropy():
    x, y = _unit(6, 4, 4), _unit(6, 4, 5)
    logits = x @ y.T / 0.1
    labels = torch.arange(6)
    want = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    got = clip_loss(x, y, labels, torch.tensor(0.1, dtype=torch.float64))
    torch.testing.assert_close(got, want)


def test_row_shares_add_up_to_the_whole_loss():
    t2i = torch.tensor(CAPTION_LAYOUTS["all"])
    x, y = _unit(5, 8, 6), _unit(len(t2i), 8, 7)
    tau = torch.tensor(0.05, dtype=torch.float64)
    # rank 0 holds images 0-1 (captions 0-2), rank 1 images 2-4 (captions 3-8)
    shares = clip_loss(x, y, t2i, tau, slice(0, 2), slice(0, 3)) + clip_loss(
        x, y, t2i, tau, slice(2, 5), slice(3, 9)
    )
    torch.testing.assert_close(shares, clip_loss(x, y, t2i, tau))
    s, b = torch.tensor(1.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    shares = siglip_loss(x, y, t2i, s, b, slice(0, 2)) + siglip_loss(x, y, t2i, s, b, slice(2, 5))
    torch.testing.assert_close(shares, siglip_loss(x, y, t2i, s, b))


def test_loss_modules_start_from_the_papers_values_and_clamp_like_the_reference():
    clip = ClipLoss()
    assert float(clip.temperature.detach()) == pytest.approx(0.07)
    with torch.no_grad():
        clip.temperature.fill_(1e-5)
    clip.clamp_()
    assert float(clip.temperature.detach()) == pytest.approx(
        0.001
    )  # freeze-align: temp in [0.001, 0.5]
    with torch.no_grad():
        clip.temperature.fill_(3.0)
    clip.clamp_()
    assert float(clip.temperature.detach()) == pytest.approx(0.5)
    sig = SigLipLoss()
    assert float(sig.log_scale.detach()) == pytest.approx(math.log(10))
    assert float(sig.bias.detach()) == -10.0


# ------------------------------------------------------------------------------------------------
# the data contract


def _paired(n=4, captions=(2, 1, 3, 1), d=3):
    t2i = torch.repeat_interleave(torch.arange(n), torch.tensor(captions))
    return PairedFeatures(
        torch.randn(n, d), torch.randn(len(t2i), d), t2i, [f"img{i}" for i in range(n)]
    )


def test_paired_features_refuse_bad_input_in_one_line():
    good = _paired()
    cases = [
        (dict(text_to_image=torch.tensor([0, 0, 1, 2, 2, 2, 9])), r"must lie in \[0, 4\)"),
        (dict(text_to_image=torch.tensor([0, 0, 1, 1, 1, 1, 1])), "at least one caption"),
        (dict(text_to_image=torch.zeros(7, dtype=torch.int32)), "int64 tensor of shape"),
        (dict(image_ids=["a", "a", "b", "c"]), "distinct"),
        (dict(image_ids=["a"]), "got 1 ids for 4 image rows"),
        (dict(image=torch.randn(4)), "must be a float"),
    ]
    for change, message in cases:
        fields = dict(
            image=good.image,
            text=good.text,
            text_to_image=good.text_to_image,
            image_ids=good.image_ids,
        )
        fields.update(change)
        with pytest.raises(AlignkitError, match=message) as err:
            PairedFeatures(**fields)
        assert "\n" not in str(err.value)


def test_token_features_refuse_bad_masks():
    with pytest.raises(AlignkitError, match=r"mask must have shape \(2, 3\)"):
        TokenFeatures(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(AlignkitError, match="needs a valid token"):
        TokenFeatures(torch.randn(2, 3, 4), torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(AlignkitError, match="bool"):
        TokenFeatures(torch.randn(2, 3, 4), torch.ones(2, 3))


def test_batches_sample_one_own_caption_or_take_all_of_them():
    data = _paired(captions=(2, 1, 3, 1))
    rows = torch.tensor([0, 2, 3])
    seen = set()
    for seed in range(40):
        batch = make_batch(data, rows, "one", torch.Generator().manual_seed(seed))
        assert batch.text_to_image.tolist() == [0, 1, 2]
        assert data.text_to_image[batch.text_rows].tolist() == rows.tolist()  # its own caption
        seen.add(tuple(batch.text_rows.tolist()))
    assert {r[0] for r in seen} == {0, 1} and {r[1] for r in seen} == {3, 4, 5}  # all drawn
    batch = make_batch(data, rows, "all", torch.Generator().manual_seed(0))
    assert batch.text_rows.tolist() == [0, 1, 3, 4, 5, 6]
    assert batch.text_to_image.tolist() == [0, 0, 1, 1, 1, 2]
    torch.testing.assert_close(batch.text, data.text[[0, 1, 3, 4, 5, 6]])
    assert batch.text_slice(1, 3) == slice(2, 6)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_token_features_read_from_a_memmap_one_batch_at_a_time(tmp_path):
    n, t, d = 50, 6, 4
    arr = np.lib.format.open_memmap(
        tmp_path / "tok.npy", mode="w+", dtype=np.float16, shape=(n, t, d)
    )
    arr[:] = np.random.default_rng(0).standard_normal((n, t, d))
    arr.flush()
    mm = np.load(tmp_path / "tok.npy", mmap_mode="r")
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[::2, 4:] = False  # trailing padding on even rows
    tokens = TokenFeatures(torch.from_numpy(mm), mask)
    part = tokens.take(torch.tensor([0, 2, 4]))  # even rows only: padding columns dropped
    assert part.tokens.shape == (3, 4, d) and part.tokens.dtype == torch.float16
    torch.testing.assert_close(part.tokens, torch.from_numpy(np.asarray(mm[[0, 2, 4], :4])))
    assert tokens.take(torch.tensor([1, 2])).tokens.shape == (2, t, d)


def test_old_projectors_import_path_warns_and_forwards():
    import alignkit.training as training

    with pytest.warns(DeprecationWarning, match="import TrainConfig from alignkit.training"):
        from alignkit.projectors import TrainConfig
    assert TrainConfig is training.TrainConfig
    with pytest.warns(DeprecationWarning, match="alignkit.training"):
        import alignkit.projectors as old

        assert old.train_projector is training.train_projector
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018
