"""Held-out closed-form alignability: fit a linear map on some probe rows, retrieve on the others.

Three fits, each scored by k-fold cross-validation (every row held out once):

* ``ridge_alignability``: ridge regression (Hoerl & Kennard 1970, "Ridge Regression: Biased
  Estimation for Nonorthogonal Problems", Technometrics 12) of y on x and of x on y, the
  penalty chosen on the training rows alone by generalised cross-validation (Golub, Heath &
  Wahba 1979, "Generalized Cross-Validation as a Method for Choosing a Good Ridge Parameter",
  Technometrics 21): GCV(λ) = RSS(λ) / (n_t - 1 - df(λ))², df(λ) = Σ e/(e + λ) over the
  eigenvalues e of the training covariance (the 1 is the intercept that centring fits), over
  :data:`PENALTIES` times the mean eigenvalue (so the choice is scale-free);
* ``procrustes_alignability``: orthogonal Procrustes (Schönemann 1966, "A generalized solution
  of the orthogonal Procrustes problem", Psychometrika 31): both sides centred on the training
  rows and reduced to a common width w = min(r_x, r_y, n_t - 1) by a PCA of the training rows
  (of their coordinates in the per-side reduction below),
  then the rotation Q = UVᵀ from the SVD of the training cross-product. No scaling: a global
  scale changes neither Q nor a cosine ranking;
* ``cca_alignability``: regularised CCA, the canonical ridge of Vinod (1976, "Canonical ridge
  and econometrics of joint production", J. Econometrics 4) on Hotelling's (1936, "Relations
  between two sets of variates", Biometrika 28) canonical correlations: the SVD of
  (C_xx + λ_x I)^-1/2 C_xy (C_yy + λ_y I)^-1/2, with λ_x, λ_y the penalties GCV chose for the
  ridge regressions from x and from y on the same training rows. Held-out rows are compared
  in the canonical space, each canonical variate weighted by sqrt(ρ) on both sides, so the dot
  product of two rows is uᵀdiag(ρ)v, x's variates against y's variates as ridge would predict
  them from x (E[v | u] = ρ u for whitened variates).

Score: mean reciprocal rank (MRR) of the true partner among the m rows of its held-out fold,
by cosine similarity (of the prediction and the targets for ridge, of the rotated and the
target rows for Procrustes, of the weighted canonical variates for CCA), averaged over both
directions (x → y and y → x queries) and all n rows. Ties count against the query: rank =
#{candidates j with sim_j >= sim_true}. Why MRR: it reads the whole rank, so it still
separates pairs whose recall@1 sits near chance (recall@1 is one bit per query and is mostly
noise for weak pairs), it weighs the top like retrieval recall does, and its chance level is
exact. Chance: under a random pairing the true partner's rank is uniform on 1..m, so
E[MRR] = H_m / m (H_m the m-th harmonic number), averaged over folds:
Σ_f H_{m_f} / n (:func:`alignability_chance`). Scores lie in [1/m, 1]; 1 for x == y.

Folds and reduction (what is fitted on which rows):

* Folds are seeded row positions (:func:`fold_labels`): every encoder pair scored on one probe
  is split the same way, so pairs are compared on the same held-out rows. Reordering the rows
  therefore re-draws the folds: the score is invariant to reordering rows within the partition
  (``Metric.row_groups``), not to every reordering.
* Each side is first reduced to its top ``dims`` principal directions over all n rows (per
  side, unsupervised: it never sees the pairing, so it is the same under every re-pairing of
  the rows and computed once per encoder). The map between the sides, its centring and its
  penalty use the training rows of a fold only; the held-out rows are never fitted on. With
  d <= dims nothing is dropped (the fits are rotation-invariant). Why not a per-fold PCA of the
  raw features: it costs a d×d eigendecomposition per fold, side and permutation (0.25 s in
  float32 at d = 1,280 on one core, about the whole of linear CKA at n = 5,000; ten of them
  per permutation), where the r×r ones used here take 5 ms at r = 256.

Engine split: ``prepare`` reduces one side and eigendecomposes its training covariance in each
fold; ``cross`` forms the training cross-covariances and re-decomposes y's training covariances
only under a permuted pairing (x's training rows of a fold do not move with the pairing);
``finish`` fits and retrieves. The three metrics share ``prepare`` and ``cross``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignkit.errors import AlignkitError
from alignkit.metrics._checks import ArrayLike, as_pair, check_min_rows
from alignkit.metrics._engine import Engine, Options, evaluate

FOLDS = 5
DIMS = 256
PENALTIES = 10.0 ** np.arange(-6.0, 4.01, 0.25)
"""Ridge penalties tried by GCV, in units of the mean eigenvalue of the training covariance."""


def fold_labels(n: int, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """``(n,)`` fold of each row position: row ``order[j]`` is in fold ``j mod folds`` with
    ``order = np.random.default_rng(seed).permutation(n)`` (fold sizes differ by at most one)."""
    labels = np.empty(n, dtype=np.int64)
    labels[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return labels


def alignability_chance(n: int, folds: int = FOLDS) -> float:
    """Expected held-out MRR under a random pairing: Σ_f H_{m_f} / n over the fold sizes m_f."""
    sizes = np.bincount(np.arange(n) % folds, minlength=folds)
    return float(sum(np.sum(1.0 / np.arange(1, m + 1)) for m in sizes) / n)


@dataclass(frozen=True, eq=False)
class _Moments:
    """A side's training-row moments in one fold, in its reduced coordinates."""

    mean: torch.Tensor  # (r,) training mean
    evals: torch.Tensor  # (r,) eigenvalues of the training scatter Σ (z - mean)(z - mean)ᵀ
    evecs: torch.Tensor  # (r, r) its eigenvectors (columns, eigh order: ascending)


@dataclass(frozen=True, eq=False)
class _Side:
    name: str
    z: torch.Tensor  # (n, r) float64 coordinates in the top-r principal directions
    scatter: torch.Tensor  # (r, r) zᵀz over all rows
    folds: list[torch.Tensor]  # held-out row positions of each fold
    moments: list[_Moments]  # per fold, training rows = the other folds' positions
    held: list[torch.Tensor]  # per fold (m, r): held-out rows centred on and in that basis


def _reduce(x: torch.Tensor, dims: int | None, name: str) -> torch.Tensor:
    """``(n, r)`` float64 coordinates of the column-centred x in its top-r principal directions
    (r = min(dims, rank)); x itself (centred) when d <= dims."""
    xc = x - x.mean(dim=0)
    n, d = xc.shape
    if float(torch.linalg.vector_norm(xc)) == 0.0:
        raise AlignkitError(
            f"{name} is a constant representation (every row is the same vector): "
            "alignability is undefined"
        )
    if dims is None or d <= dims:
        return xc.double()
    # in the input's dtype: a float32 eigendecomposition of a (1280, 1280) scatter takes half
    # the time of a float64 one (0.25 s on one core), and the basis only has to span the top
    if d <= n:  # eigenvectors of the (d, d) scatter, coordinates by one (n, d) x (d, r) GEMM
        evals, evecs = torch.linalg.eigh(xc.T @ xc)
        keep = _top(evals, dims)
        return (xc @ evecs[:, keep]).double()
    evals, u = torch.linalg.eigh(xc @ xc.T)  # (n, n) Gram: coordinates u·sqrt(e)
    keep = _top(evals, dims)
    return (u[:, keep] * evals[keep].sqrt()).double()


def _top(evals: torch.Tensor, dims: int) -> torch.Tensor:
    """Indices of the (at most) dims largest eigenvalues above the rank tolerance."""
    tol = float(evals[-1]) * evals.numel() * torch.finfo(evals.dtype).eps
    count = min(dims, int((evals > tol).sum()))
    return torch.arange(evals.numel() - 1, evals.numel() - 1 - count, -1, device=evals.device)


def _moments(z: torch.Tensor, scatter: torch.Tensor, held: torch.Tensor) -> _Moments:
    """Training-row moments of one fold: the full scatter minus the held-out rows' part."""
    zt = z[held]  # (m, r)
    n_t = z.shape[0] - zt.shape[0]
    mean = (z.sum(0) - zt.sum(0)) / n_t
    s = scatter - zt.T @ zt - n_t * torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return _Moments(mean, evals.clamp_(min=0.0), evecs)


def _prepare(x: torch.Tensor, opts: Options, name: str) -> _Side:
    z = _reduce(x, opts["dims"], name)
    labels = torch.from_numpy(fold_labels(z.shape[0], opts["folds"], opts["fold_seed"]))
    folds = [torch.nonzero(labels == f).flatten().to(z.device) for f in range(opts["folds"])]
    scatter = z.T @ z
    moments = [_moments(z, scatter, h) for h in folds]
    tiny = z.shape[0] * torch.finfo(torch.float64).eps * float(scatter.trace())  # rounding
    if any(float(m.evals.sum()) <= tiny for m in moments):
        raise AlignkitError(
            f"{name} is constant on the training rows of a fold (all its variation is in one "
            f"held-out fold): alignability is undefined; use more rows or another fold_seed"
        )
    held = [(z[h] - m.mean) @ m.evecs for h, m in zip(folds, moments, strict=True)]
    return _Side(name, z, scatter, folds, moments, held)


@dataclass(frozen=True, eq=False)
class _Fold:
    """One fold's fitted quantities in the eigenbases of the two training covariances."""

    ea: torch.Tensor  # (rx,) eigenvalues of x's training scatter
    eb: torch.Tensor  # (ry,)
    k: torch.Tensor  # (rx, ry) training cross-scatter in the two eigenbases
    pa: torch.Tensor  # (m, rx) held-out x rows, centred on training means, in x's eigenbasis
    pb: torch.Tensor  # (m, ry) their partners likewise
    n_t: int  # training rows


def _cross(sx: _Side, sy: _Side, perm: torch.Tensor | None, opts: Options) -> list[_Fold]:
    """Per fold: training cross-scatter and held-out coordinates under the pairing ``perm``
    (row i of x with row perm[i] of y); y's per-fold moments are recomputed when it moves."""
    zy = sy.z if perm is None else sy.z[perm]
    total = sx.z.T @ zy  # (rx, ry) over all rows
    out = []
    for f, held in enumerate(sx.folds):
        ma = sx.moments[f]
        za, zb = sx.z[held], zy[held]
        if perm is None:
            mb, pb = sy.moments[f], sy.held[f]
        else:
            mb = _moments(zy, sy.scatter, held)
            pb = (zb - mb.mean) @ mb.evecs
        n_t = sx.z.shape[0] - held.numel()
        cab = total - za.T @ zb - n_t * torch.outer(ma.mean, mb.mean)
        out.append(_Fold(ma.evals, mb.evals, ma.evecs.T @ cab @ mb.evecs, sx.held[f], pb, n_t))
    return out


def _gcv_penalty(evals: torch.Tensor, g: torch.Tensor, target_trace: float, n_t: int) -> float:
    """The GCV-chosen ridge penalty for predicting a target from a side with training-scatter
    eigenvalues ``evals``, where ``g[j]`` is the squared norm of the target's training
    cross-scatter with eigendirection j and ``target_trace`` its total scatter.

    RSS(λ) = [tr(C_tt) - Σ g_j/e_j] + Σ g_j λ² / (e_j (e_j + λ)²): the first bracket is the
    least-squares residual, the second what shrinking adds (the second form avoids the
    cancellation of tr(C_tt) - Σ g_j (e_j + 2λ)/(e_j + λ)² when the fit is near perfect).
    """
    e = evals.cpu().numpy()
    gg = g.cpu().numpy()
    live = e > e.max() * e.size * np.finfo(np.float64).eps
    e, gg = e[live], gg[live]
    lam = PENALTIES * (evals.sum().item() / evals.numel())  # (L,)
    ols = max(target_trace - float(np.sum(gg / e)), 0.0)
    shrink = (gg / e)[None, :] * (lam[:, None] / (e[None, :] + lam[:, None])) ** 2  # (L, r)
    rss = ols + shrink.sum(1)
    df = (e[None, :] / (e[None, :] + lam[:, None])).sum(1)
    room = n_t - 1.0 - df
    gcv = np.where(room > 0, rss / np.maximum(room, 1e-300) ** 2, np.inf)
    return float(lam[int(np.argmin(gcv))])


def _penalties(fold: _Fold) -> tuple[float, float]:
    """(λ_x, λ_y): GCV penalties of ridge from x to y and from y to x on the fold's rows."""
    sq = fold.k.square()
    lx = _gcv_penalty(fold.ea, sq.sum(1), float(fold.eb.sum()), fold.n_t)
    ly = _gcv_penalty(fold.eb, sq.sum(0), float(fold.ea.sum()), fold.n_t)
    return lx, ly


def _reciprocal_ranks(queries: torch.Tensor, targets: torch.Tensor, both: bool) -> float:
    """Σ 1/rank of each query's partner (same row) among all targets by cosine similarity,
    ties against the query; ``both``: also the targets as queries (the matrix's columns)."""
    sim = F.normalize(queries, dim=1) @ F.normalize(targets, dim=1).T  # (m, m)
    true = sim.diagonal()
    total = float((1.0 / torch.count_nonzero(sim >= true[:, None], dim=1).double()).sum())
    if both:
        total += float((1.0 / torch.count_nonzero(sim >= true[None, :], dim=0).double()).sum())
    return total


def _ridge_finish(sx: _Side, sy: _Side, folds: list[_Fold], opts: Options) -> float:
    total = 0.0
    for fold in folds:
        lx, ly = _penalties(fold)
        pred_b = (fold.pa / (fold.ea + lx)) @ fold.k  # (m, ry) ridge prediction of y
        pred_a = (fold.pb / (fold.eb + ly)) @ fold.k.T  # (m, rx) of x
        total += _reciprocal_ranks(pred_b, fold.pb, False)
        total += _reciprocal_ranks(pred_a, fold.pa, False)
    return total / (2 * sx.z.shape[0])


def _procrustes_finish(sx: _Side, sy: _Side, folds: list[_Fold], opts: Options) -> float:
    total = 0.0
    for fold in folds:
        w = min(fold.ea.numel(), fold.eb.numel(), fold.n_t - 1)  # eigh order: top w are last
        u, _, vt = torch.linalg.svd(fold.k[-w:, -w:])
        total += _reciprocal_ranks(fold.pa[:, -w:] @ (u @ vt), fold.pb[:, -w:], True)
    return total / (2 * sx.z.shape[0])


def _cca_finish(sx: _Side, sy: _Side, folds: list[_Fold], opts: Options) -> float:
    total = 0.0
    for fold in folds:
        lx, ly = _penalties(fold)
        wa, wb = (fold.ea + lx).rsqrt(), (fold.eb + ly).rsqrt()
        u, rho, vt = torch.linalg.svd(wa[:, None] * fold.k * wb[None, :], full_matrices=False)
        root = rho.sqrt()
        ua = (fold.pa * wa) @ u * root  # (m, c) canonical variates, weighted by sqrt(ρ)
        ub = (fold.pb * wb) @ vt.T * root
        total += _reciprocal_ranks(ua, ub, True)
    return total / (2 * sx.z.shape[0])


def _check(n: int, opts: Options) -> None:
    folds, dims, seed = opts.get("folds"), opts.get("dims"), opts.get("fold_seed")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise AlignkitError(f"folds must be an integer >= 2: got {folds!r}")
    if dims is not None and (
        isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1
    ):
        raise AlignkitError(f"dims must be a positive integer or None: got {dims!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AlignkitError(f"fold_seed must be a non-negative integer: got {seed!r}")
    check_min_rows(n, 2 * int(folds), f"held-out alignability with folds={folds}")


_STATE = ("folds", "dims", "fold_seed")
RIDGE_ENGINE = Engine("heldout", _STATE, _prepare, _cross, _ridge_finish, _check)
PROCRUSTES_ENGINE = Engine("heldout", _STATE, _prepare, _cross, _procrustes_finish, _check)
CCA_ENGINE = Engine("heldout", _STATE, _prepare, _cross, _cca_finish, _check)


def chance(n: int, opts: Mapping[str, Any]) -> float:
    """Registry form of :func:`alignability_chance`."""
    return alignability_chance(n, int(opts["folds"]))


def row_groups(n: int, opts: Mapping[str, Any]) -> np.ndarray:
    """Registry form of :func:`fold_labels`: the score depends on row order only through it."""
    return fold_labels(n, int(opts["folds"]), int(opts["fold_seed"]))


def _score(engine: Engine, x: ArrayLike, y: ArrayLike, folds: int, dims: Any, seed: int) -> float:
    xt, yt = as_pair(x, y)
    return evaluate(engine, xt, yt, {"folds": folds, "dims": dims, "fold_seed": seed})


def ridge_alignability(
    x: ArrayLike, y: ArrayLike, folds: int = FOLDS, dims: int | None = DIMS, fold_seed: int = 0
) -> float:
    """Held-out retrieval MRR of ridge regression from x to y and from y to x, each penalty by
    GCV on the training rows (Hoerl & Kennard 1970; Golub, Heath & Wahba 1979).

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows, n >= 2·folds.
        folds: k of the k-fold split (>= 2); each held-out fold is about n/k rows.
        dims: keep each side's top ``dims`` principal directions over all rows (None: all).
        fold_seed: seeds the split (:func:`fold_labels`).

    Returns:
        Held-out mean reciprocal rank in [1/m, 1], both directions averaged (see the module
        docstring); chance :func:`alignability_chance` (0.0075 at n = 1,000 and 5 folds); 1 for
        x == y; symmetric; invariant to rotations, isotropic scaling and translations of either
        side.

    Raises:
        AlignkitError: fewer than 2·folds rows, bad options, or a constant representation.
    """
    return _score(RIDGE_ENGINE, x, y, folds, dims, fold_seed)


def procrustes_alignability(
    x: ArrayLike, y: ArrayLike, folds: int = FOLDS, dims: int | None = DIMS, fold_seed: int = 0
) -> float:
    """Held-out retrieval MRR of the orthogonal Procrustes rotation between the training-fold
    PCAs of both sides, reduced to a common width (Schönemann 1966).

    Args, returns and errors as :func:`ridge_alignability`.
    """
    return _score(PROCRUSTES_ENGINE, x, y, folds, dims, fold_seed)


def cca_alignability(
    x: ArrayLike, y: ArrayLike, folds: int = FOLDS, dims: int | None = DIMS, fold_seed: int = 0
) -> float:
    """Held-out retrieval MRR in the space of a regularised CCA (canonical ridge, Vinod 1976, of
    Hotelling's 1936 CCA; penalties by GCV), the canonical variates weighted by sqrt(ρ).

    Args, returns and errors as :func:`ridge_alignability`.
    """
    return _score(CCA_ENGINE, x, y, folds, dims, fold_seed)
