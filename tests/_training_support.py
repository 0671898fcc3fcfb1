"""Synthetic paired features with a learnable image-caption relation, shared by training tests."""

from __future__ import annotations

import torch

from alignkit.projectors import PairedFeatures, TokenFeatures


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
