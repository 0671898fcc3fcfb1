"""Centred kernel alignment: linear (biased and unbiased), RBF, and the minibatch estimator.

Conventions (X is ``(n, d1)``, Y is ``(n, d2)``, rows are the same probe items):

* HSIC_b(K, L) = tr(K H L H) with H = I - 11ᵀ/n (the biased estimator; its (n-1)^-2 factor
  cancels in CKA). Linear kernels K = XXᵀ give the feature-space form ‖Y_cᵀ X_c‖²_F with
  column-centred X_c, Y_c (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited", eq. 5).
* HSIC_u(K, L) = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3)) with K̃, L̃
  the kernels with zeroed diagonals (Song et al. 2012, "Feature Selection via Dependence
  Maximization", JMLR 13, eq. 5). It is unbiased, can be negative, and needs n >= 4.
* CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)), with the same estimator in all three terms.

RBF CKA, with the same conventions, is in :mod:`alignkit.metrics.rbf`; the exact permutation
moments that both use are in :mod:`alignkit.metrics.moments`.

Feature-space form of the unbiased linear HSIC (derived here; no n x n matrix). HSIC_u is
invariant to K -> K + a1ᵀ + 1aᵀ + c, so columns may be centred first. With centred X, Y, row
norms r_i = ‖x_i‖², s_i = ‖y_i‖² and K = XXᵀ, L = YYᵀ:

* tr(K̃L̃) = Σ_{i≠j} K_ij L_ij = ‖YᵀX‖²_F - r·s
* 1ᵀK̃1 = ‖Xᵀ1‖² - Σr = -Σr           (centred: Xᵀ1 = 0)
* 1ᵀK̃L̃1 = (K̃1)·(L̃1) = (-r)·(-s) = r·s

so n(n-3)·HSIC_u = ‖YᵀX‖²_F + Σr·Σs / ((n-1)(n-2)) - n/(n-2)·r·s, in O(n·d1·d2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import moments
from alignkit.metrics._checks import ArrayLike, as_pair, check_min_rows
from alignkit.metrics._engine import Engine, Options, evaluate, permuted_dot

# --------------------------------------------------------------------------------------------
# linear CKA


@dataclass(frozen=True, eq=False)
class _LinearState:
    name: str
    xc: torch.Tensor  # (n, d) column-centred, GEMM dtype (float32 or float64)
    sq: torch.Tensor  # (n,) float64 squared row norms of xc
    sum_sq: float  # Σ_i ‖x_i‖²
    gram_norm: float  # ‖X_cᵀX_c‖_F = sqrt(HSIC_b(K, K)) up to the (n-1)^-2 factor
    self_u: float  # n(n-3)·HSIC_u(K, K)
    # cache: the (n, n) Gram matrix X_c X_cᵀ ("gram"), built on the first permuted pairing or
    # analytic null that needs it; for the analytic null's skewness (n <= SKEW_MAX_ROWS) tr(K³)
    # and the pattern sums
    kernel: dict[str, Any] = field(default_factory=dict, repr=False)

    def gram(self) -> torch.Tensor:
        if "gram" not in self.kernel:
            self.kernel["gram"] = self.xc @ self.xc.T  # (n, n)
        return self.kernel["gram"]


def _centre(x: torch.Tensor) -> torch.Tensor:
    # column means in the input dtype (torch reduces float32 with cascaded partial sums, so the
    # mean keeps ~1e-7 relative accuracy at any n); subtracting keeps the GEMMs in that dtype
    return x - x.mean(dim=0)


def _linear_prepare(x: torch.Tensor, opts: Options, name: str) -> _LinearState:
    (n, d) = x.shape
    xc = _centre(x)
    sq = torch.linalg.vector_norm(xc, dim=1).double().square_()  # (n,)
    state = _LinearState(name, xc, sq, float(sq.sum()), 0.0, math.nan)
    if _gram_form(n, d, d):  # ‖XᵀX‖²_F = ‖XXᵀ‖²_F: n²·d instead of n·d² multiply-adds
        gram_sq = float(torch.linalg.vector_norm(state.gram(), dtype=torch.float64)) ** 2
    else:
        gram_sq = float(torch.linalg.vector_norm(xc.T @ xc, dtype=torch.float64)) ** 2  # (d, d)
    if gram_sq == 0.0:
        raise AlignkitError(
            f"{name} is a constant representation (every row is the same vector): CKA is undefined"
        )
    sum_sq = state.sum_sq
    self_u = math.nan
    if n >= 4:
        self_u = gram_sq + sum_sq**2 / ((n - 1) * (n - 2)) - n / (n - 2) * float(sq @ sq)
    return _LinearState(name, xc, sq, sum_sq, math.sqrt(gram_sq), self_u, state.kernel)


def _linear_cross(
    sx: _LinearState, sy: _LinearState, perm: torch.Tensor | None, opts: Options
) -> tuple[float, float]:
    """(‖Y_πᵀ X‖²_F, r·s_π): the only pairing-dependent terms, shared by biased and unbiased.

    ‖Y_πᵀX‖²_F = ⟨K, P L Pᵀ⟩ with K = X_cX_cᵀ, L = Y_cY_cᵀ. The true pairing takes the Gram form
    when n²·(d1 + d2) < n·d1·d2 (features wider than the probe: the Grams are built once per
    representation, then each pair is one O(n²) dot); a permuted pairing of a small probe takes it
    when n² gathered entries cost less than an n·d1·d2 GEMM (see :func:`_gram_is_cheaper`).
    """
    (n, d1), d2 = sx.xc.shape, sy.xc.shape[1]
    if perm is None and _gram_form(n, d1, d2):
        return _dot64(sx.gram(), sy.gram()), float(sx.sq @ sy.sq)
    if perm is not None and _gram_is_cheaper(n, d1 * d2):
        frob_sq = permuted_dot(sx.gram(), sy.gram(), perm)
        return frob_sq, float(sx.sq @ sy.sq[perm])
    yc, s = (sy.xc, sy.sq) if perm is None else (sy.xc[perm], sy.sq[perm])
    cross = yc.T @ sx.xc  # (d2, d1) in the GEMM dtype
    return float(torch.linalg.vector_norm(cross, dtype=torch.float64)) ** 2, float(sx.sq @ s)


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨A, B⟩ = Σ_ij A_ij B_ij of two (n, n) matrices, summed in float64."""
    return float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))


GRAM_MAX_ROWS = 4096
"""Largest n for which a representation keeps its (n, n) Gram matrix (64 MiB in float32)."""


def _gram_form(n: int, d1: int, d2: int) -> bool:
    """Whether ‖YᵀX‖²_F is cheaper as ⟨XXᵀ, YYᵀ⟩: n²·(d1 + d2) against n·d1·d2 multiply-adds
    (issue #8: n=64, d=16,384 × 4,096 took 9.6 s and 3.8 GB in feature space). Self terms use it
    with d1 = d2 = d, i.e. when d > 2n."""
    return n <= GRAM_MAX_ROWS and n * (d1 + d2) < d1 * d2


def _gram_is_cheaper(n: int, feature_work: int) -> bool:
    """Gram-space cross terms cost ~n² gathered multiply-adds; feature space ~n·d1·d2 GEMM
    multiply-adds, which run ~100x faster per operation (measured on 2 CPU cores: one gathered
    element ~4-7 ns, one GEMM multiply-add ~0.05 ns), so Gram space wins while 128·n < d1·d2."""
    return n <= GRAM_MAX_ROWS and 128 * n < feature_work


def _linear_finish(
    sx: _LinearState, sy: _LinearState, cross: tuple[float, float], opts: Options
) -> float:
    frob_sq, rs = cross
    if not opts.get("unbiased", False):
        return frob_sq / (sx.gram_norm * sy.gram_norm)
    n = sx.xc.shape[0]
    for s in (sx, sy):
        if not s.self_u > 0:
            raise AlignkitError(
                f"unbiased CKA is undefined: the unbiased HSIC of {s.name} with itself is "
                f"{s.self_u / (n * (n - 3)):.3g} (must be > 0; features nearly constant "
                f"or n={n} too small)"
            )
    hsic = frob_sq + sx.sum_sq * sy.sum_sq / ((n - 1) * (n - 2)) - n / (n - 2) * rs
    return hsic / math.sqrt(sx.self_u * sy.self_u)


def _skew(third_raw: float, mean: float, var: float) -> float:
    """Skewness from E T³, E T and Var T."""
    central = third_raw - 3.0 * mean * var - mean**3
    return central / var**1.5 if var > 0 else math.nan


def _u_shift(k: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(u, c, δ) such that the U-centring of K is K + u1ᵀ + 1uᵀ + c·11ᵀ - diag(δ): with
    r = K̃1 the off-diagonal row sums, u = -r/(n-2), c = 1ᵀr/((n-1)(n-2)), and δ zeroes the
    diagonal (Székely & Rizzo 2014, §2.2). The diagonal of ``k`` is ignored."""
    n = k.shape[0]
    diag = np.diag(k)
    r = k.sum(axis=1) - diag  # (n,)
    u = -r / (n - 2)
    c = float(r.sum()) / ((n - 1) * (n - 2))
    return u, c, diag + 2.0 * u + c


def _u_centred(k: torch.Tensor | np.ndarray) -> np.ndarray:
    """Székely & Rizzo's U-centring of a kernel, ``(n, n)`` float64 with a zero diagonal: its
    off-diagonal inner products are n(n-3)·HSIC_u (Song et al. 2012)."""
    a = k.double().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k, np.float64)
    u, c, _ = _u_shift(a)
    out = a + u[:, None] + u[None, :] + c
    np.fill_diagonal(out, 0.0)
    return out


def _u_centred_with_trace_cube(k: np.ndarray, trace_cube: float) -> tuple[np.ndarray, float]:
    """The U-centring of K (float64) and its tr(Ã³), from tr(K³) in O(n²)."""
    u, c, delta = _u_shift(k)
    return _u_centred(k), moments.shifted_trace_cube(k, trace_cube, u, c, delta)


def _pattern_sums(
    state: Any, key: str, matrix: Callable[[], tuple[np.ndarray, float | None]]
) -> np.ndarray:
    """Third-moment pattern sums of one representation's centred kernel, cached on its state.

    ``matrix()`` gives the kernel and its tr(A³) (None: computed from the kernel, n³)."""
    if key not in state.kernel:
        a, trace_cube = matrix()
        state.kernel[key] = moments.pattern_sums(a, 3, trace_cube)
    return state.kernel[key]


def _trace_cube(s: _LinearState) -> float:
    """tr(K³) of K = X_cX_cᵀ: tr((X_cᵀX_c)³), d³, when d < n, else from the Gram matrix, n³.

    GEMMs in the features' dtype, the sum in float64: for float32 features it agreed with the
    float64 value to ~1e-8 relative (ReLU features, n = 1,000, d = 384-1,280; tr(K³) = Σ λ³ of a
    positive semi-definite matrix, so no cancellation is hidden in it), and the U-centred
    tr(Ã³) derived from it was ~0.93 of it there, so nothing is lost in the shift either."""
    if "trace_cube" not in s.kernel:
        n, d = s.xc.shape
        m = s.xc.T @ s.xc if d < n else s.gram()  # (d, d) or (n, n)
        s.kernel["trace_cube"] = float(torch.sum((m @ m) * m, dtype=torch.float64))
    return s.kernel["trace_cube"]


def _gram64(s: _LinearState) -> np.ndarray:
    return s.gram().double().cpu().numpy()


def _cka_moments(
    n: int,
    unbiased: bool,
    sides: tuple[tuple[float, float, float], tuple[float, float, float]],
    sums: tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]] | None,
) -> tuple[float, float, float]:
    """(mean, variance, skewness) of a CKA score over all re-pairings.

    ``sides``: per representation (tr A, ‖A‖²_F, Σ A_ii²) of its centred kernel (the U-centred one
    for the unbiased estimator, whose trace and diagonal are 0); ``sums``: callables giving each
    side's third-moment pattern sums, or None for no skewness."""
    (ta, qa, da), (tb, qb, db) = sides
    if unbiased:
        mean, var = 0.0, 2.0 / (n * (n - 3))
    else:
        mean, var = moments.rv_mean_var(n, ta, qa, da, tb, qb, db)
    if sums is None or n > moments.SKEW_MAX_ROWS:
        return mean, var, math.nan
    scale = math.sqrt(qa * qb)  # score = T / scale
    third = moments.raw_moment(sums[0](), sums[1](), n, 3)
    return mean, var, _skew(third, mean * scale, var * scale**2)


def _linear_moments(
    sx: _LinearState, sy: _LinearState, opts: Options
) -> tuple[float, float, float]:
    n = sx.xc.shape[0]
    unbiased = bool(opts.get("unbiased", False))
    if unbiased:
        _linear_finish(sx, sy, (0.0, 0.0), opts)  # raises if a self term is not positive
        sides = ((0.0, sx.self_u, 0.0), (0.0, sy.self_u, 0.0))
        key, make = "s3_u", lambda s: lambda: _u_centred_with_trace_cube(_gram64(s), _trace_cube(s))
    else:
        sides = tuple((s.sum_sq, s.gram_norm**2, float(s.sq @ s.sq)) for s in (sx, sy))
        key, make = "s3_b", lambda s: lambda: (_gram64(s), _trace_cube(s))
    if n > moments.SKEW_MAX_ROWS:
        return _cka_moments(n, unbiased, sides, None)
    sums = tuple((lambda s=s: _pattern_sums(s, key, make(s))) for s in (sx, sy))
    return _cka_moments(n, unbiased, sides, sums)


def _linear_check(n: int, opts: Options) -> None:
    if opts.get("unbiased", False):
        check_min_rows(n, 4, "unbiased linear CKA")
    else:
        check_min_rows(n, 2, "linear CKA")


LINEAR_ENGINE = Engine(
    "linear", (), _linear_prepare, _linear_cross, _linear_finish, _linear_check, _linear_moments
)


def linear_cka(x: ArrayLike, y: ArrayLike, unbiased: bool = False) -> float:
    """Linear CKA of two representations of the same n rows, in feature or Gram form.

    Args:
        x: ``(n, d1)`` features (torch tensor or numpy array, any float dtype, any device).
        y: ``(n, d2)`` features of the same rows in the same order.
        unbiased: False: Kornblith et al. (2019) biased CKA
            ‖Y_cᵀX_c‖²_F / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F),
            the reference code's estimator, in [0, 1], with a positive floor for unrelated
            features when d is not small against n (independent Gaussians, n=1024, d=768:
            about 0.43). True: Song et al. (2012) unbiased HSIC in the numerator and both self
            terms (needs n >= 4); about 0 for unrelated features, can be negative, never clamped.

    Returns:
        The score as a float; 1 for identical inputs. Invariant to orthogonal rotations,
        isotropic scaling and translations of either input. Cost: the cheaper of the feature
        form ‖Y_cᵀX_c‖²_F (n·d1·d2 time, d1·d2 memory, plus n·d² per self term) and the Gram
        form ⟨X_cX_cᵀ, Y_cY_cᵀ⟩ (n²·(d1 + d2) time, n² memory), chosen by those counts, so
        features wider than the probe (a flattened conv activation) never build d x d matrices.
        GEMMs in float32 for float32 input (float64 otherwise), sums in float64.
    """
    xt, yt = as_pair(x, y)
    return evaluate(LINEAR_ENGINE, xt, yt, {"unbiased": bool(unbiased)})


# --------------------------------------------------------------------------------------------
# minibatch CKA


def _hsic_u_linear(xc: torch.Tensor, yc: torch.Tensor) -> float:
    """HSIC_u(XXᵀ, YYᵀ) of one batch (feature-space form above), float64."""
    n = xc.shape[0]
    xc, yc = _centre(xc), _centre(yc)
    r = xc.square().sum(1, dtype=torch.float64)
    s = yc.square().sum(1, dtype=torch.float64)
    frob = float((yc.T @ xc).double().square().sum())
    return (frob + float(r.sum() * s.sum()) / ((n - 1) * (n - 2)) - n / (n - 2) * float(r @ s)) / (
        n * (n - 3)
    )


def minibatch_cka(
    x: ArrayLike, y: ArrayLike, batch_size: int = 1000, *, seed: int | None = None
) -> float:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks Learn the
    Same Things?", eq. 3): the unbiased HSIC of each minibatch averaged over minibatches, in the
    numerator and in both self terms: mean_b HSIC_u(K_b, L_b) / sqrt(mean_b HSIC_u(K_b, K_b) ·
    mean_b HSIC_u(L_b, L_b)).

    Rows are cut into consecutive batches of ``batch_size`` (shuffled first when ``seed`` is
    given); a final batch of fewer than 4 rows is dropped. Converges to the unbiased linear CKA
    of the whole set's population value; each batch costs O(batch·d1·d2).

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, same rows. batch_size: rows per batch, >= 4.
    """
    xt, yt = as_pair(x, y)
    n = xt.shape[0]
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 4
    ):
        raise AlignkitError(
            f"batch_size must be an integer >= 4 (unbiased HSIC needs 4 rows): got {batch_size!r}"
        )
    check_min_rows(n, 4, "minibatch CKA")
    if seed is not None:
        order = torch.from_numpy(np.random.default_rng(seed).permutation(n)).to(xt.device)
        xt, yt = xt[order], yt[order]
    kl = kk = ll = 0.0
    batches = 0
    for i0 in range(0, n, int(batch_size)):
        xb, yb = xt[i0 : i0 + batch_size], yt[i0 : i0 + batch_size]
        if xb.shape[0] < 4:
            break
        kl += _hsic_u_linear(xb, yb)
        kk += _hsic_u_linear(xb, xb)
        ll += _hsic_u_linear(yb, yb)
        batches += 1
    if not (kk > 0 and ll > 0):
        which = "x" if not kk > 0 else "y"
        raise AlignkitError(
            f"minibatch CKA is undefined: the mean unbiased HSIC of {which} with itself "
            "is not positive"
        )
    return kl / math.sqrt(kk * ll)
