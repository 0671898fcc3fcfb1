"""RBF-kernel CKA: Gaussian kernels with a median-distance bandwidth, blockwise, never n x n.

Conventions (HSIC estimators, CKA) are those of :mod:`alignkit.metrics.cka`. Kernels are built in
row blocks from squared distances computed by a GEMM in the input dtype; kernel entries and every
sum over them are float64 (see :func:`_rbf_kernel_block`). Split from ``cka.py`` to keep each
module readable top to bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import moments
from alignkit.metrics._checks import ArrayLike, as_pair, check_min_rows, check_positive
from alignkit.metrics._engine import Engine, Options, block_rows, evaluate, permuted_dot
from alignkit.metrics.cka import (
    GRAM_MAX_ROWS,
    _centre,
    _cka_moments,
    _pattern_sums,
    _u_centred_with_trace_cube,
)


@dataclass(frozen=True, eq=False)
class _RbfState:
    name: str
    x: torch.Tensor  # (n, d) centred (distances unchanged; ‖a‖²+‖b‖²-2a·b better conditioned)
    sq: torch.Tensor  # (n,) squared row norms, GEMM dtype
    sigma2: float  # median off-diagonal squared distance x sigma_scale²
    row_off: torch.Tensor  # (n,) float64 Σ_{j≠i} K_ij
    sum_off: float  # Σ_{i≠j} K_ij
    sq_off: float  # Σ_{i≠j} K_ij²
    # the (n, n) kernel with a zero diagonal, kept for permuted pairings of small probes
    kernel: dict[str, Any] = field(default_factory=dict, repr=False)

    def full_kernel(self) -> torch.Tensor:
        if "k" not in self.kernel:
            self.kernel["k"] = _rbf_kernel_block(self, 0, self.x.shape[0])  # (n, n)
        return self.kernel["k"]


def _sq_dist_block(
    x: torch.Tensor, sq: torch.Tensor, i0: int, i1: int, j0: int = 0, j1: int | None = None
) -> torch.Tensor:
    """Squared distances of rows i0:i1 to rows j0:j1, clamped at 0: ``(i1-i0, j1-j0)``."""
    xj, sqj = x[j0:j1], sq[j0:j1]
    d2 = torch.addmm(sqj.unsqueeze(0), x[i0:i1], xj.T, alpha=-2.0)  # ‖b‖² - 2a·b
    d2.add_(sq[i0:i1].unsqueeze(1))
    return d2.clamp_(min=0.0)


def _upper_sq_dists(x: torch.Tensor, sq: torch.Tensor, block: int):
    """Yields the squared distances d²_ij for i < j, as 1-D tensors, a row block at a time."""
    n = x.shape[0]
    for i0 in range(0, n - 1, block):
        i1 = min(n, i0 + block)
        square = _sq_dist_block(x, sq, i0, i1, i0, i1)  # (b, b): only its upper triangle
        yield square[torch.ones_like(square, dtype=torch.bool).triu_(1)]
        if i1 < n:
            yield _sq_dist_block(x, sq, i0, i1, i1).view(-1)  # (b, n - i1): every j > i


def _kth_pair(values: torch.Tensor, ranks: tuple[int, int]) -> float:
    """Mean of the values at 0-based ranks (lo, hi) of ``values`` (np.median's convention)."""
    if values.device.type == "cpu":  # one introselect for both ranks
        part = np.partition(values.numpy(), list(ranks))
        return 0.5 * (float(part[ranks[0]]) + float(part[ranks[1]]))
    lo = values.kthvalue(ranks[0] + 1).values
    hi = lo if ranks[1] == ranks[0] else values.kthvalue(ranks[1] + 1).values
    return 0.5 * (float(lo) + float(hi))


def _median_sq_dist(
    x: torch.Tensor, sq: torch.Tensor, max_values: int = 1 << 24, bins: int = 1 << 16
) -> float:
    """Exact median of the n(n-1)/2 off-diagonal squared distances, in bounded memory.

    Up to ``max_values`` distances are selected in memory directly; beyond that a histogram pass
    narrows an interval that holds the middle ranks (each pass recomputes the distances blockwise)
    until the values inside it fit, and one more pass collects and selects them. Memory stays
    O(block·n + bins + max_values) whatever n is.
    """
    n = x.shape[0]
    m = n * (n - 1) // 2
    ranks = ((m - 1) // 2, m // 2)
    block = block_rows(n)
    if m <= max_values:
        return _kth_pair(torch.cat(list(_upper_sq_dists(x, sq, block))), ranks)
    lo, hi = 0.0, 4.0 * float(sq.max()) * 1.001 + 1e-30  # ‖a-b‖² <= 4 max‖·‖² for centred rows
    while True:
        width = (hi - lo) / bins
        below, counts = 0, torch.zeros(bins, dtype=torch.int64, device=x.device)
        for v in _upper_sq_dists(x, sq, block):
            below += int((v < lo).sum())
            v = v[(v >= lo) & (v < hi)]
            counts += torch.bincount(((v - lo) / width).long().clamp_(0, bins - 1), minlength=bins)
        cum = below + counts.cumsum(0)
        a = int(torch.searchsorted(cum, torch.tensor(ranks[0], device=cum.device), right=True))
        b = int(torch.searchsorted(cum, torch.tensor(ranks[1], device=cum.device), right=True))
        # one spare bin on each side: floor((v - lo)/width) may round a value into a neighbour
        a, b = max(a - 1, 0), min(b + 1, bins - 1)
        new_lo, new_hi = lo + a * width, (hi if b == bins - 1 else lo + (b + 1) * width)
        if int(counts[a : b + 1].sum()) > max_values and (new_hi - new_lo) > 1e-12 * max(hi, 1e-30):
            lo, hi = new_lo, new_hi
            continue
        below, parts = 0, []
        for v in _upper_sq_dists(x, sq, block):
            below += int((v < new_lo).sum())
            parts.append(v[(v >= new_lo) & (v < new_hi)])
        inside = torch.cat(parts)
        if below <= ranks[0] and ranks[1] < below + inside.numel():
            return _kth_pair(inside, (ranks[0] - below, ranks[1] - below))
        lo, hi = max(0.0, new_lo - width), new_hi + width  # rounding moved a rank out: widen, retry


def _rbf_kernel_block(
    s: _RbfState, i0: int, i1: int, x: torch.Tensor | None = None, sq: torch.Tensor | None = None
) -> torch.Tensor:
    """K[i0:i1, :] in float64 with a zero diagonal, ``(i1-i0, n)``; x/sq override for a permuted
    pairing.

    Distances come from a GEMM in the input dtype; the kernel entries and every sum over them are
    float64. The centred HSIC is a small difference of sums of n² entries near the same value
    (high-dimensional features put every distance close to the median), so float32 sums lose
    ~1e-4 of it: rbf_cka(x, x) was 1.00035 on float32 ReLU features (issue #8).
    """
    x = s.x if x is None else x
    sq = s.sq if sq is None else sq
    k = _sq_dist_block(x, sq, i0, i1).double().mul_(-0.5 / s.sigma2).exp_()
    rows = torch.arange(i1 - i0, device=k.device)
    k[rows, rows + i0] = 0.0
    return k


def _rbf_prepare(x: torch.Tensor, opts: Options, name: str) -> _RbfState:
    n = x.shape[0]
    xc = _centre(x)
    sq = xc.square().sum(dim=1)
    median = _median_sq_dist(xc, sq)
    if median <= 0.0:
        raise AlignkitError(
            f"{name}: the median squared distance between rows is 0 (at least half the row pairs "
            "are identical); the RBF bandwidth and RBF CKA are undefined"
        )
    state = _RbfState(name, xc, sq, median * opts["sigma_scale"] ** 2, torch.empty(0), 0.0, 0.0)
    block = block_rows(n)
    row_off = torch.empty(n, dtype=torch.float64, device=x.device)
    sq_off = 0.0
    for i0 in range(0, n, block):
        k = _rbf_kernel_block(state, i0, min(n, i0 + block))
        row_off[i0 : i0 + k.shape[0]] = k.sum(dim=1)  # float64 kernel block
        sq_off += float(torch.dot(k.view(-1), k.view(-1)))
    return _RbfState(name, xc, sq, state.sigma2, row_off, float(row_off.sum()), sq_off)


def _rbf_cross(
    sx: _RbfState, sy: _RbfState, perm: torch.Tensor | None, opts: Options
) -> tuple[float, float]:
    """(Σ_{i≠j} K_ij L_π(i)π(j), (K̃1)·(L̃1)_π), blockwise: two kernel blocks at a time."""
    n = sx.x.shape[0]
    if perm is not None and n <= GRAM_MAX_ROWS:  # each kernel once, then O(n²) per permutation
        return permuted_dot(sx.full_kernel(), sy.full_kernel(), perm), float(
            sx.row_off @ sy.row_off[perm]
        )
    y, sq = (sy.x, sy.sq) if perm is None else (sy.x[perm], sy.sq[perm])
    block = block_rows(n)
    total = 0.0
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        k = _rbf_kernel_block(sx, i0, i1)
        k.mul_(_rbf_kernel_block(sy, i0, i1, y, sq))
        total += float(k.sum())  # float64 blocks
    rows = sy.row_off if perm is None else sy.row_off[perm]
    return total, float(sx.row_off @ rows)


def _rbf_finish(sx: _RbfState, sy: _RbfState, cross: tuple[float, float], opts: Options) -> float:
    prod_off, rows_dot = cross
    n = sx.x.shape[0]
    if opts.get("unbiased", False):

        def hsic_u(prod: float, sum_k: float, sum_l: float, dot: float) -> float:
            return prod + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * dot

        kl = hsic_u(prod_off, sx.sum_off, sy.sum_off, rows_dot)
        kk = hsic_u(sx.sq_off, sx.sum_off, sx.sum_off, float(sx.row_off @ sx.row_off))
        ll = hsic_u(sy.sq_off, sy.sum_off, sy.sum_off, float(sy.row_off @ sy.row_off))
        for s, v in ((sx, kk), (sy, ll)):
            if not v > 0:
                raise AlignkitError(
                    f"unbiased RBF CKA is undefined: the unbiased HSIC of {s.name} with "
                    f"itself is {v:.3g}"
                )
        return kl / math.sqrt(kk * ll)

    # biased: tr(KHLH) = Σ K∘L - 2/n (K1)·(L1) + (1ᵀK1)(1ᵀL1)/n², with the unit diagonal put back
    def hsic_b(prod: float, sum_k: float, sum_l: float, dot: float) -> float:
        return prod - 2.0 / n * dot + sum_k * sum_l / n**2

    def parts(s: _RbfState) -> tuple[float, float]:
        return s.sum_off + n, float((s.row_off + 1.0) @ (s.row_off + 1.0))

    # (K1)·(L1) = (K̃1 + 1)·(L̃1 + 1) = rows_dot + Σ K̃1 + Σ L̃1 + n
    kl = hsic_b(
        prod_off + n, sx.sum_off + n, sy.sum_off + n, rows_dot + sx.sum_off + sy.sum_off + n
    )
    (sk, dk), (sl, dl) = parts(sx), parts(sy)
    kk = hsic_b(sx.sq_off + n, sk, sk, dk)
    ll = hsic_b(sy.sq_off + n, sl, sl, dl)
    return kl / math.sqrt(kk * ll)


def _rbf_centred_stats(s: _RbfState) -> tuple[float, float, float]:
    """(tr A, ‖A‖²_F, Σ A_ii²) of A = HKH, K = K̃ + I, from the row sums: O(n)."""
    n = s.x.shape[0]
    rows = s.row_off + 1.0  # K1
    total = s.sum_off + n  # 1ᵀK1
    diag = 1.0 - 2.0 * rows / n + total / n**2  # (n,) A_ii
    tr2 = (s.sq_off + n) - 2.0 / n * float(rows @ rows) + total**2 / n**2  # tr(KHKH)
    return float(diag.sum()), tr2, float(diag @ diag)


def _rbf_self_u(s: _RbfState) -> float:
    n = s.x.shape[0]
    return (
        s.sq_off + s.sum_off**2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(s.row_off @ s.row_off)
    )


def _with_trace_cube(s: _RbfState) -> tuple[np.ndarray, float]:
    """The kernel K = K̃ + I as a float64 array and tr(K³), the one n³ product per
    representation: both centrings' tr(A³) follow from it (:func:`moments.shifted_trace_cube`)."""
    k = s.full_kernel().cpu().numpy() + np.eye(s.x.shape[0])
    if "trace_cube" not in s.kernel:
        s.kernel["trace_cube"] = float(np.sum(k * (k @ k)))
    return k, s.kernel["trace_cube"]


def _rbf_moments(sx: _RbfState, sy: _RbfState, opts: Options) -> tuple[float, float, float]:
    n = sx.x.shape[0]
    unbiased = bool(opts.get("unbiased", False))
    if unbiased:
        sides = tuple((0.0, _rbf_self_u(s), 0.0) for s in (sx, sy))
        key, make = "s3_u", lambda s: lambda: _u_centred_with_trace_cube(*_with_trace_cube(s))
    else:
        sides = tuple(_rbf_centred_stats(s) for s in (sx, sy))

        def centred(s: _RbfState) -> tuple[np.ndarray, float]:
            """HKH = K - m1ᵀ - 1mᵀ + μ11ᵀ (m = K1/n, μ = 1ᵀK1/n²) and its tr((HKH)³)."""
            k, trace_cube = _with_trace_cube(s)
            m, mu = k.mean(axis=1), float(k.mean())
            hkh = k - m[:, None] - m[None, :] + mu
            return hkh, moments.shifted_trace_cube(k, trace_cube, -m, mu, np.zeros(n))

        key, make = "s3_b", lambda s: lambda: centred(s)
    if n > moments.SKEW_MAX_ROWS:
        return _cka_moments(n, unbiased, sides, None)
    sums = tuple((lambda s=s: _pattern_sums(s, key, make(s))) for s in (sx, sy))
    return _cka_moments(n, unbiased, sides, sums)


def _rbf_check(n: int, opts: Options) -> None:
    check_min_rows(n, 4 if opts.get("unbiased", False) else 3, "RBF CKA")
    opts["sigma_scale"] = check_positive(opts["sigma_scale"], "sigma_scale")


RBF_ENGINE = Engine(
    "rbf", ("sigma_scale",), _rbf_prepare, _rbf_cross, _rbf_finish, _rbf_check, _rbf_moments
)


def rbf_cka(x: ArrayLike, y: ArrayLike, sigma_scale: float = 1.0, unbiased: bool = False) -> float:
    """CKA with Gaussian kernels exp(-‖x_i - x_j‖² / (2σ²)), one σ per representation.

    σ² = (median of the n(n-1)/2 off-diagonal squared distances of that representation) x
    ``sigma_scale``², the reference code's rule (Kornblith et al. 2019 use the median distance
    times a factor). The median is exact; kernels are built in row blocks, so memory is
    O(block·n), never n x n; time O(n²(d1 + d2)) per pair plus the median passes per input.

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows.
        sigma_scale: multiplies σ (> 0).
        unbiased: False: biased HSIC (tr KHLH) in all three terms, in [0, 1]. True: Song et al.
            (2012) unbiased HSIC (needs n >= 4), about 0 for unrelated inputs.

    Returns:
        The score; 1 for identical inputs; invariant to rotations, translations and isotropic
        scaling of either input.
    """
    xt, yt = as_pair(x, y)
    opts = {"sigma_scale": sigma_scale, "unbiased": bool(unbiased)}
    return evaluate(RBF_ENGINE, xt, yt, opts)
