"""The split every metric follows so that all-pairs scoring and permutation nulls reuse work.

A metric's cost divides into

* ``prepare(x, opts, name)``: per-representation work, done once per encoder (centred features
  and self
  terms for CKA, neighbour lists for mutual-kNN, the kernel median for RBF CKA, the SVD basis for
  SVCCA);
* ``cross(sx, sy, perm, opts)``: the part that depends on the pairing of rows. ``perm`` is ``None``
  for the true pairing, or a ``(n,)`` permutation: row ``i`` of x is then paired with row
  ``perm[i]`` of y. Metrics of one family (biased and unbiased linear CKA; mutual-kNN and CKNNA
  with the same k) share one ``cross`` result;
* ``finish(sx, sy, cross, opts)``: the few scalar operations that turn it into a score;
* ``moments(sx, sy, opts)`` (CKA family only): the exact mean, variance and skewness of the score
  over all n! re-pairings of the rows, from per-representation invariants (:mod:`.moments`).

Inputs to all three are already validated (see ``_checks``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Options = dict[str, Any]


@dataclass(frozen=True)
class Engine:
    family: str
    state_options: tuple[str, ...]  # options the per-encoder state (and hence cross) depends on
    prepare: Callable[[torch.Tensor, Options, str], Any]  # (x, opts, name used in errors)
    cross: Callable[[Any, Any, torch.Tensor | None, Options], Any]
    finish: Callable[[Any, Any, Any, Options], float]
    check: Callable[[int, Options], None]  # option checks that depend on n (k < n, n >= 4)
    # exact (mean, variance, skewness) of the score over all re-pairings, or None (see .moments)
    moments: Callable[[Any, Any, Options], tuple[float, float, float]] | None = None

    def key(self, opts: Options) -> tuple:
        """States and cross terms can be shared between metrics with the same key."""
        return (self.family, *(repr(opts[name]) for name in self.state_options))


def evaluate(
    engine: Engine,
    x: torch.Tensor,
    y: torch.Tensor,
    opts: Options,
    names: tuple[str, str] = ("x", "y"),
) -> float:
    """Score one checked pair: prepare both sides, then cross and finish on the true pairing."""
    engine.check(x.shape[0], opts)
    sx, sy = engine.prepare(x, opts, names[0]), engine.prepare(y, opts, names[1])
    return engine.finish(sx, sy, engine.cross(sx, sy, None, opts), opts)


def permutations(
    n: int, n_permutations: int, seed: int, device: torch.device
) -> list[torch.Tensor]:
    """The B pairing permutations of a seed: identical for every pair, metric and layer."""
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.permutation(n)).to(device) for _ in range(n_permutations)]


def subsets(n: int, n_subsamples: int, fraction: float, seed: int) -> list[np.ndarray]:
    """Sorted row subsets of size round(fraction * n), drawn without replacement.

    A stream separate from :func:`permutations` so asking for intervals leaves the null unchanged.
    """
    rng = np.random.default_rng([seed, 1])
    m = max(1, int(round(fraction * n)))
    return [np.sort(rng.choice(n, size=m, replace=False)) for _ in range(n_subsamples)]


BLOCK_ELEMENTS = 1 << 24
"""Entries of one (rows x n) block of similarities (64 MiB in float32); bounds blocked memory."""


def block_rows(n: int) -> int:
    """Rows per block so a ``(block, n)`` similarity block holds about BLOCK_ELEMENTS entries."""
    return max(1, min(n, BLOCK_ELEMENTS // max(n, 1)))


def permuted_dot(k: torch.Tensor, lk: torch.Tensor, perm: torch.Tensor) -> float:
    """⟨K, P L Pᵀ⟩ = Σ_ij K_ij L_π(i)π(j) for (n, n) kernels, in O(n²) without forming P L Pᵀ.

    Products in the kernels' dtype, summed in float64.
    """
    n = k.shape[0]
    flat = (perm.unsqueeze(1) * n + perm.unsqueeze(0)).view(-1)  # (n²,) where L_π's entries sit
    return float((k.reshape(-1) * lk.reshape(-1).take(flat)).sum(dtype=torch.float64))
