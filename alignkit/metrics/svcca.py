"""SVCCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical
Correlation Analysis for Deep Learning Dynamics and Interpretability").

Each side is column-centred and reduced by SVD to its top singular directions (those explaining
``threshold`` of the variance, 0.99 in the paper, or a fixed number ``dims``); the canonical
correlations between the two reduced subspaces are the singular values of U_xᵀU_y (U: the
orthonormal left singular vectors kept), and the score is their mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics._checks import ArrayLike, as_pair, check_min_rows
from alignkit.metrics._engine import Engine, Options, evaluate


@dataclass(frozen=True, eq=False)
class _SvccaState:
    name: str
    basis: torch.Tensor  # (n, r) float64 orthonormal top-r left singular vectors of the centred x


def _svcca_prepare(x: torch.Tensor, opts: Options, name: str) -> _SvccaState:
    xc = x.double()
    xc = xc - xc.mean(dim=0)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)  # u (n, min(n, d))
    var = s.square()
    rank = (
        int((s > s[0] * max(xc.shape) * torch.finfo(torch.float64).eps).sum()) if s.numel() else 0
    )
    if rank == 0:
        raise AlignkitError(
            f"{name} is a constant representation (every row is the same vector): "
            "SVCCA is undefined"
        )
    if opts["dims"] is not None:
        r = min(int(opts["dims"]), rank)
    else:
        share = torch.cumsum(var, 0) / var.sum()
        r = min(
            int(
                torch.searchsorted(
                    share, torch.tensor(opts["threshold"], dtype=share.dtype, device=share.device)
                )
            )
            + 1,
            rank,
        )
    n = x.shape[0]
    if 2 * r >= n:
        raise AlignkitError(
            f"SVCCA of {name} keeps {r} directions but has only n={n} rows; canonical correlations "
            f"of subspaces that large are near 1 by construction: use more rows or dims < {n // 2}"
        )
    return _SvccaState(name, u[:, :r])


def _svcca_cross(
    sx: _SvccaState, sy: _SvccaState, perm: torch.Tensor | None, opts: Options
) -> float:
    uy = sy.basis if perm is None else sy.basis[perm]
    return float(torch.linalg.svdvals(sx.basis.T @ uy).clamp_(max=1.0).mean())


def _svcca_finish(sx: _SvccaState, sy: _SvccaState, cross: float, opts: Options) -> float:
    return cross


def _svcca_check(n: int, opts: Options) -> None:
    check_min_rows(n, 3, "SVCCA")
    dims, threshold = opts.get("dims"), opts.get("threshold")
    if dims is not None and (
        isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1
    ):
        raise AlignkitError(f"dims must be a positive integer or None: got {dims!r}")
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise AlignkitError(f"threshold must be a variance fraction in (0, 1]: got {threshold!r}")


SVCCA_ENGINE = Engine(
    "svcca", ("threshold", "dims"), _svcca_prepare, _svcca_cross, _svcca_finish, _svcca_check
)


def svcca(x: ArrayLike, y: ArrayLike, threshold: float = 0.99, dims: int | None = None) -> float:
    """Mean canonical correlation between the SVD-reduced representations (Raghu et al. 2017).

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows.
        threshold: keep the fewest top singular directions explaining this fraction of each
            side's variance (the paper's 0.99).
        dims: keep exactly this many directions per side instead (capped at the rank).

    Returns:
        A score in [0, 1]; 1 for identical inputs; symmetric; invariant to rotations, scaling and
        translations. The kept dimensions must be well below n (2·r < n is required): the
        canonical correlations of random r-dimensional subspaces of R^n grow like sqrt(r/n), so
        compare SVCCA against its permutation null.
    """
    xt, yt = as_pair(x, y)
    return evaluate(SVCCA_ENGINE, xt, yt, {"threshold": threshold, "dims": dims})
