"""Synthetic paired features with a learnable image-caption relation, shared by training tests."""

from __future__ import annotations

import torch

from alignkit.training import PairedFeatures, TokenFeatures


def synthetic_pairs(
    n_images: int = 96,
    captions: int = 3,
    d_image: int = 12,
    d_text: int = 10,
    latent: int = 6,
    seed: int = 0,
    maps: int = 0,
    tokens: bool = False,
    id_prefix: str = "img",
    dtype: torch.dtype = torch.float32,
) -> PairedFeatures:
    """Images and captions generated from a shared latent (random linear maps plus noise), so an
    aligned pair of projectors can retrieve well above chance. Token-level: a few noisy tokens
    per row whose mean carries the signal. ``maps`` picks the relation (splits of one data set
    share it), ``seed`` the rows, trailing padding, a CLS token for images."""
    m = torch.Generator().manual_seed(1000 + maps)  # the relation, shared by every split
    a = torch.randn(latent, d_image, generator=m)
    b = torch.randn(latent, d_text, generator=m)
    g = torch.Generator().manual_seed(seed)  # the rows
    z = torch.randn(n_images, latent, generator=g)
    t2i = torch.arange(n_images).repeat_interleave(captions)
    image = z @ a + 0.3 * torch.randn(n_images, d_image, generator=g)
    text = z[t2i] @ b + 0.6 * torch.randn(len(t2i), d_text, generator=g)
    ids = [f"{id_prefix}{i}" for i in range(n_images)]
    if not tokens:
        return PairedFeatures(image.to(dtype), text.to(dtype), t2i, ids)

    def tokenise(x: torch.Tensor, t: int) -> TokenFeatures:
        n = x.shape[0]
        toks = x[:, None, :] + 0.5 * torch.randn(n, t, x.shape[1], generator=g)
        lengths = torch.randint(2, t + 1, (n,), generator=g)
        mask = torch.arange(t)[None, :] < lengths[:, None]
        return TokenFeatures(toks.to(dtype), mask, None)

    img_tok = tokenise(image, 5)
    img_tok = TokenFeatures(img_tok.tokens, img_tok.mask, image.to(dtype))
    return PairedFeatures(img_tok, tokenise(text, 4), t2i, ids)


def uneven_pairs(tokens: bool = False) -> PairedFeatures:
    """9 images with 1, 2 or 3 captions each (float64): ranks get different caption counts."""
    g = torch.Generator().manual_seed(11)
    t2i = torch.arange(9).repeat_interleave(torch.tensor([1, 2, 3] * 3))
    image = torch.randn(9, 6, generator=g, dtype=torch.float64)
    text = torch.randn(len(t2i), 5, generator=g, dtype=torch.float64)
    if tokens:
        mask = torch.rand(9, 4, generator=g) < 0.7
        mask[:, 0] = True
        cls = torch.randn(9, 6, generator=g, dtype=torch.float64)
        image = TokenFeatures(torch.randn(9, 4, 6, generator=g, dtype=torch.float64), mask, cls)
    return PairedFeatures(image, text, t2i, [f"u{i}" for i in range(9)])


def ddp_cases() -> dict:
    """{name: (config, data, global batch)}: the cases the 2-rank gradient test compares."""
    from alignkit.training import TrainConfig
    from alignkit.training.data import make_batch

    rows = torch.tensor([0, 1, 2, 4, 5, 6, 8])  # 7 images: ranks hold 3 and 4
    cases = {}
    for loss in ("clip", "siglip"):
        for captions in ("one", "all"):
            config = TrainConfig(projector="mlp", width=4, loss=loss, captions=captions)
            data = uneven_pairs()
            cases[f"{loss}-{captions}"] = (
                config,
                data,
                make_batch(data, rows, captions, torch.Generator().manual_seed(3)),
            )
    config = TrainConfig(projector="residual", width=4, loss="clip", captions="all")
    data = uneven_pairs(tokens=True)
    cases["clip-all-tokens"] = (
        config,
        data,
        make_batch(data, rows, "all", torch.Generator().manual_seed(3)),
    )
    return cases


def ddp_train_config() -> dict:
    """A short fp64 run (7 images per global step: 3 + 4 on two ranks) with all captions."""
    return dict(
        projector="residual",
        width=8,
        batch_size=7,
        epochs=2,
        lr=3e-3,
        precision="fp64",
        captions="all",
        eval_every=2,
        patience=None,
    )


def ddp_train_set() -> PairedFeatures:
    return synthetic_pairs(30, captions=2, dtype=torch.float64, seed=4)


def tiny_run(folder, data_dir, vision: str, text: str, epochs: int = 2):  # noqa: ANN001, ANN201
    """A real (tiny) training run folder: a linear projector on 40 flickr8k:train pairs of
    ``vision`` x ``text`` features, with the config.json that evaluate and load_aligned read."""
    from alignkit.features import extract_features
    from alignkit.probes import load_probe
    from alignkit.runs.trained import write_run_config
    from alignkit.training import TrainConfig, train_projector

    train = load_probe("flickr8k:train", n=40, progress=False, data_dir=data_dir)
    img = extract_features(vision, train, device="cpu", progress=False).features
    txt = extract_features(text, train, device="cpu", progress=False).features
    cfg = TrainConfig(width=8, epochs=epochs, batch_size=16, patience=None)
    data = PairedFeatures(img, txt, torch.arange(40), list(train.ids))
    train_projector(cfg, data, None, out_dir=folder, device="cpu", progress=False)
    write_run_config(folder, vision, text)
    return folder
