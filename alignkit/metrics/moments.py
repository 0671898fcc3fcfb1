"""Exact permutation moments of kernel-alignment statistics (the analytic null of CKA).

Every CKA variant is, up to factors that a re-pairing of the rows leaves unchanged, the statistic

    T(π) = Σ_ij A_ij B_π(i)π(j)

of two symmetric (n, n) matrices with zero row sums: for biased CKA the doubly centred kernels
A = HKH, B = HLH (CKA = T / (‖A‖_F ‖B‖_F); with linear kernels this is the RV coefficient of
Robert & Escoufier 1976); for the unbiased estimator of Song et al. (2012) the U-centred
kernels of Székely & Rizzo (2014, "Partial distance correlation with methods for dissimilarities",
Ann. Statist. 42, §2.2), whose diagonal is zero and whose off-diagonal inner product is
n(n-3)·HSIC_u. Under the uniform distribution of π over all n! permutations:

* mean: E T = tr A · tr B / (n - 1). For U-centred kernels tr A = 0, so the unbiased null has
  mean exactly 0.
* variance (Kazi-Aoual, Hitier, Sabatier & Lebreton 1995, "Refined approximations to
  permutation tests for multivariate inference", Comput. Stat. Data Anal. 20; in the form of
  Josse, Pagès & Husson 2008, "Testing the significance of the RV coefficient", Comput. Stat.
  Data Anal. 53, eq. 4), with β = (tr A)² / tr A², τ = (n-1)/((n-3)(n-1-β)) ·
  (n(n+1) Σ_i A_ii² / tr A² - (n-1)(β + 2)):

      Var(T / ‖A‖‖B‖) = 2(n-1-β_A)(n-1-β_B) / ((n+1)(n-1)²(n-2)) · (1 + (n-3)/(2n(n-1)) τ_A τ_B)

  For U-centred kernels (β = 0, Σ A_ii² = 0) this is 2/(n(n-3)) whatever the data: the
  unbiased CKA null has standard deviation sqrt(2/(n(n-3))) (derived here from the same
  formula; the direct sum over index patterns below gives the same value).
* third moment: by the index-pattern expansion used for these moments (the route of
  Kazi-Aoual et al.), E T³ = Σ_ρ S_A(ρ) S_B(ρ) / (n)_|ρ| over the 203 set partitions ρ of the
  six indices of A_i1j1 A_i2j2 A_i3j3, where S_A(ρ) sums the product over index tuples whose
  equalities are exactly ρ (obtained by Möbius inversion from the sums where indices in a block
  are equal and blocks are free) and (n)_m = n(n-1)...(n-m+1) counts the injective relabellings.
  Each free-block sum is a contraction of three copies of A along a graph with at most three
  edges: message passing on trees (O(n²) each), and tr(A³) = Σ A∘(AA) for the triangle (an n³
  product, or d³ from a linear kernel's feature covariance, and shared between a kernel's
  centrings by :func:`shifted_trace_cube`). The skewness needs the n x n kernel, so it is
  computed for n <= :data:`SKEW_MAX_ROWS` only.

The p-value uses a Pearson type III distribution with these three moments, as Josse et al.
(2008) recommend for the RV coefficient; beyond SKEW_MAX_ROWS the normal approximation.
The moments are exact; the p-value is an approximation named in ``null_method`` of score tables.
Tests compare all three with exhaustive enumeration of the n! pairings at n = 7 and with
10,000-permutation Monte Carlo.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import scipy.integrate
import scipy.stats
from numpy.typing import ArrayLike

SKEW_MAX_ROWS = 1024
"""Largest n for which the third moment (an n x n kernel per representation) is computed."""


# ----------------------------------------------------------------------------------------------
# closed-form mean and variance (Kazi-Aoual et al. 1995; Josse et al. 2008)


def rv_mean_var(
    n: int, tr_a: float, tr2_a: float, diag2_a: float, tr_b: float, tr2_b: float, diag2_b: float
) -> tuple[float, float]:
    """Mean and variance of T/(‖A‖_F‖B‖_F) over all n! re-pairings, for symmetric A, B with zero
    row sums: tr = trace, tr2 = ‖·‖²_F, diag2 = Σ_i (·)_ii². Needs n >= 4."""
    beta_a, beta_b = tr_a**2 / tr2_a, tr_b**2 / tr2_b

    def tau(beta: float, diag2: float, tr2: float) -> float:
        return (
            (n - 1)
            / ((n - 3) * (n - 1 - beta))
            * (n * (n + 1) * diag2 / tr2 - (n - 1) * (beta + 2))
        )

    mean = math.sqrt(beta_a * beta_b) / (n - 1)
    var = (
        2.0
        * (n - 1 - beta_a)
        * (n - 1 - beta_b)
        / ((n + 1) * (n - 1) ** 2 * (n - 2))
        * (
            1.0
            + (n - 3)
            / (2.0 * n * (n - 1))
            * tau(beta_a, diag2_a, tr2_a)
            * tau(beta_b, diag2_b, tr2_b)
        )
    )
    return mean, var


# ----------------------------------------------------------------------------------------------
# third moment by index patterns


def _partitions(m: int) -> list[tuple[int, ...]]:
    """Set partitions of m positions as restricted growth strings (block label per position)."""
    out: list[tuple[int, ...]] = []

    def grow(prefix: list[int], top: int) -> None:
        if len(prefix) == m:
            out.append(tuple(prefix))
            return
        for b in range(top + 2):
            grow([*prefix, b], max(top, b))

    grow([0], 0)
    return out


def _coarser(fine: tuple[int, ...], coarse: tuple[int, ...]) -> bool:
    """Every block of ``fine`` lies inside one block of ``coarse``."""
    seen: dict[int, int] = {}
    for f, c in zip(fine, coarse, strict=True):
        if seen.setdefault(f, c) != c:
            return False
    return True


@cache
def _mobius_table(
    m: int,
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[tuple[int, float], ...], ...]]:
    """Partitions of m positions and, for each ρ, the (index of σ >= ρ, μ(ρ, σ)) pairs.

    μ(ρ, σ) = Π over blocks of σ of (-1)^(k-1) (k-1)!, k = number of ρ-blocks merged into it."""
    parts = _partitions(m)
    table = []
    for rho in parts:
        row = []
        for j, sigma in enumerate(parts):
            if not _coarser(rho, sigma):
                continue
            merged: dict[int, set[int]] = {}
            for f, c in zip(rho, sigma, strict=True):
                merged.setdefault(c, set()).add(f)
            mu = 1.0
            for blocks in merged.values():
                k = len(blocks)
                mu *= (-1) ** (k - 1) * math.factorial(k - 1)
            row.append((j, mu))
        table.append(tuple(row))
    return tuple(parts), tuple(table)


class _Contractor:
    """Σ over free vertex indices of Π_edges A[u, v] for graphs with at most three edges.

    Tree graphs are contracted by message passing; a message depends only on the shape of the
    subtree it comes from (self-loops at its root, edge multiplicities, children), so messages
    are memoised by that shape and shared between the ~20 graphs: each distinct
    (Hadamard power) @ (vector) product is computed once. The one cycle (a triangle) is
    tr(A³), given by the caller when it has a cheaper route (see :func:`pattern_sums`).
    """

    def __init__(self, a: np.ndarray, trace_cube: float | None = None) -> None:
        self.a = a
        self.diag = np.diag(a).copy()
        self._trace_cube = trace_cube
        self._powers: dict[int, np.ndarray] = {1: a}
        self._messages: dict[tuple, np.ndarray] = {}

    def hadamard(self, k: int) -> np.ndarray:
        if k not in self._powers:  # products, not a**k: numpy's pow is ~20x slower
            self._powers[k] = self.hadamard(k - 1) * self.a
        return self._powers[k]

    def trace_cube(self) -> float:
        if self._trace_cube is None:
            self._trace_cube = float(np.sum(self.a * (self.a @ self.a)))  # the one n³ product
        return self._trace_cube

    def __call__(self, edges: tuple[tuple[int, int], ...], n_vertices: int) -> float:
        loops = [0] * n_vertices
        multi: dict[tuple[int, int], int] = {}
        for u, v in edges:
            if u == v:
                loops[u] += 1
            else:
                key = (min(u, v), max(u, v))
                multi[key] = multi.get(key, 0) + 1
        adj: dict[int, list[tuple[int, int]]] = {v: [] for v in range(n_vertices)}
        for (u, v), k in multi.items():
            adj[u].append((v, k))
            adj[v].append((u, k))
        total, seen = 1.0, set()
        for root in range(n_vertices):
            if root in seen:
                continue
            comp, stack = [], [root]
            seen.add(root)
            while stack:
                u = stack.pop()
                comp.append(u)
                for v, _ in adj[u]:
                    if v not in seen:
                        seen.add(v)
                        stack.append(v)
            comp_edges = [(u, v) for (u, v) in multi if u in comp]
            if len(comp_edges) >= len(comp):  # a cycle: with <= 3 edges, a plain triangle
                total *= self.trace_cube()
                continue
            total *= float(self._message(self._shape(root, -1, adj, loops)).sum())
        return total

    def _shape(self, u: int, parent: int, adj: dict, loops: list[int]) -> tuple:
        """The subtree under u as (self-loops at u, sorted ((multiplicity, child shape), ...))."""
        children = sorted((k, self._shape(v, u, adj, loops)) for v, k in adj[u] if v != parent)
        return loops[u], tuple(children)

    def _message(self, shape: tuple) -> np.ndarray:
        """Σ over the subtree's other indices, a (n,) vector over its root's index."""
        if shape not in self._messages:
            n_loops, children = shape
            msg = self.diag**n_loops if n_loops else np.ones(self.a.shape[0])
            for k, child in children:
                msg = msg * (self.hadamard(k) @ self._message(child))
            self._messages[shape] = msg
        return self._messages[shape]


def shifted_trace_cube(
    k: np.ndarray, trace_cube: float, u: np.ndarray, c: float, delta: np.ndarray
) -> float:
    """tr(B³) of B = K + u1ᵀ + 1uᵀ + c·11ᵀ - diag(δ) from tr(K³), in O(n²) instead of n³.

    Double centring (HKH: u = -K1/n, c = 1ᵀK1/n², δ = 0) and U-centring (zero diagonal) are
    such shifts, so one tr(K³) gives the triangle term of both. With M = B - K = -Δ + U C Uᵀ,
    U = [u, 1] ``(n, 2)``, C = [[0, 1], [1, c]], and cyclic traces of symmetric matrices:

        tr(B³) = tr K³ + 3 tr(K²M) + 3 tr(KM²) + tr M³, where
        tr(K²M) = -Σ_i δ_i (K²)_ii + tr((KU)ᵀ(KU) C)
        tr(KM²) = Σ_i K_ii δ_i² - 2 tr((KU)ᵀ(ΔU) C) + tr(UᵀKU C UᵀU C)
        tr(M³)  = -Σ δ³ + 3 tr(UᵀΔ²U C) - 3 tr(UᵀΔU C UᵀU C) + tr((C UᵀU)³)

    Args:
        k: ``(n, n)`` symmetric float64. trace_cube: tr(K³). u: ``(n,)``; c: scalar;
            delta: ``(n,)``.
    """
    n = k.shape[0]
    uu = np.stack([u, np.ones(n)], axis=1)  # (n, 2)
    cc = np.array([[0.0, 1.0], [1.0, c]])
    ku = k @ uu  # (n, 2)
    du = delta[:, None] * uu  # (n, 2)
    utu = uu.T @ uu  # (2, 2)
    k2_diag = np.einsum("ij,ij->i", k, k)  # (K²)_ii for symmetric K
    t_k2m = -float(delta @ k2_diag) + np.trace(ku.T @ ku @ cc)
    t_km2 = (
        float(np.diag(k) @ delta**2)
        - 2.0 * np.trace(ku.T @ du @ cc)
        + np.trace(uu.T @ ku @ cc @ utu @ cc)
    )
    t_m3 = (
        -float(np.sum(delta**3))
        + 3.0 * np.trace(du.T @ du @ cc)
        - 3.0 * np.trace(uu.T @ du @ cc @ utu @ cc)
        + np.trace(np.linalg.matrix_power(cc @ utu, 3))
    )
    return float(trace_cube + 3.0 * t_k2m + 3.0 * t_km2 + t_m3)


def _canonical(edges: tuple[tuple[int, int], ...], m: int) -> tuple[tuple[int, int], ...]:
    """The smallest sorted edge list over all relabellings of the m vertices: equal for
    isomorphic graphs, whose contractions of a symmetric matrix are equal."""
    best = None
    for perm in itertools.permutations(range(m)):
        key = tuple(sorted(tuple(sorted((perm[u], perm[v]))) for u, v in edges))
        if best is None or key < best:
            best = key
    return best  # type: ignore[return-value]


@cache
def _graph_classes(order: int) -> tuple[tuple[int, ...], tuple[tuple[tuple[int, int], ...], ...]]:
    """For each partition of ``_mobius_table(2·order)``, the index of its graph's isomorphism
    class, and one edge list per class (vertices 0..m-1)."""
    parts, _ = _mobius_table(2 * order)
    index: dict[tuple, int] = {}
    reps: list[tuple[tuple[int, int], ...]] = []
    cls = []
    for p in parts:
        edges = tuple((p[2 * r], p[2 * r + 1]) for r in range(order))
        key = _canonical(edges, max(p) + 1)
        if key not in index:
            index[key] = len(reps)
            reps.append(key)
        cls.append(index[key])
    return tuple(cls), tuple(reps)


def pattern_sums(a: np.ndarray, order: int = 3, trace_cube: float | None = None) -> np.ndarray:
    """S_A(ρ) for every set partition ρ of the 2·order indices of Π_r A[i_r, j_r].

    Args:
        a: ``(n, n)`` symmetric float64 matrix. order: the moment (1, 2 or 3).
        trace_cube: tr(A³) = Σ_ij A_ij (A²)_ij, the one contraction graph with a cycle, when the
            caller has a cheaper route to it than an n³ product (a linear kernel XXᵀ of d < n
            columns: tr((XᵀX)³), d³); None computes it from ``a``.

    Returns:
        ``(P,)`` exact-pattern sums in the order of the partitions of ``_mobius_table(2·order)``.
        Each of the ~20 distinct contraction graphs is evaluated once, in O(n²) passes (each
        distinct matrix-vector product once), the triangle in O(n³) unless ``trace_cube`` is
        given.
    """
    _, table = _mobius_table(2 * order)
    cls, reps = _graph_classes(order)
    contract = _Contractor(a, trace_cube)
    values = np.array(
        [contract(edges, 1 + max(max(e) for e in edges)) for edges in reps]
    )  # (classes,)
    at_least = values[np.array(cls)]
    return np.array([sum(mu * at_least[j] for j, mu in row) for row in table])


def raw_moment(sa: np.ndarray, sb: np.ndarray, n: int, order: int = 3) -> float:
    """E T^order over all n! re-pairings from the two matrices' :func:`pattern_sums`."""
    parts, _ = _mobius_table(2 * order)
    total = 0.0
    for p, x, y in zip(parts, sa, sb, strict=True):
        m = max(p) + 1
        if m > n or x == 0.0 or y == 0.0:
            continue
        total += x * y / math.perm(n, m)
    return total


# ----------------------------------------------------------------------------------------------
# p-values


def upper_p(observed: float, mean: float, std: float, skew: float) -> float:
    """P(null >= observed) under a Pearson type III law with the given three moments (the normal
    law when ``skew`` is NaN or 0)."""
    if not std > 0:
        return math.nan
    z = (observed - mean) / std
    if not math.isfinite(skew) or skew == 0.0:
        return float(scipy.stats.norm.sf(z))
    return float(scipy.stats.pearson3.sf(z, skew))


LOG_SPACE_BELOW = 1e-290
"""p-values below this (down to those that underflow to 0) get their log10 in log space."""


def log10_upper_p(p: ArrayLike, z: ArrayLike, skew: ArrayLike) -> np.ndarray:
    """log10 of the p-values :func:`upper_p` gave at standardised scores ``z`` with skewness
    ``skew`` (NaN or 0: the normal law), elementwise, finite where p underflows to 0.

    Where ``p >= LOG_SPACE_BELOW`` this is ``log10(p)`` of the very p given. Below, the upper
    tail is evaluated in log space: ``scipy.stats.norm.logsf`` for the normal law, and for
    Pearson type III the integral of its density from z to the law's upper end as a log-space
    tanh-sinh quadrature of ``pearson3.logpdf`` (``scipy.integrate.tanhsinh(..., log=True)``;
    its agreement with the regularised incomplete gamma function at 60 digits (mpmath) is
    tested to 1e-9 relative; NaN where the quadrature does not converge). A law with negative
    skewness ends at ``z = 2 / |skew|``; beyond that end p is exactly 0 and its log10 is
    ``-inf``.

    Args:
        p, z, skew: broadcastable arrays, one element per score.
    Returns:
        float64 array of the broadcast shape; NaN where p or z is NaN.
    """
    p, z, skew = (np.asarray(a, dtype=float) for a in np.broadcast_arrays(p, z, skew))
    out = np.full(p.shape, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.isfinite(p) & (p >= LOG_SPACE_BELOW)
        out[direct] = np.log10(p[direct])
        far = np.isfinite(p) & ~direct & np.isfinite(z)
        normal = ~np.isfinite(skew) | (skew == 0.0)
        tail = far & normal
        out[tail] = scipy.stats.norm.logsf(z[tail]) / math.log(10)
        ended = far & (skew < 0) & (z >= 2.0 / np.abs(skew))  # beyond the law's upper end
        out[ended] = -math.inf
        tail = far & ~normal & ~ended
        if tail.any():  # log ∫_z^end pdf, as a log-space integral of the log density
            g = skew[tail]
            end = np.where(g < 0, 2.0 / np.abs(g), np.inf)  # the law's upper end
            got = scipy.integrate.tanhsinh(_pearson3_logpdf, z[tail], end, args=(g,), log=True)
            out[tail] = np.where(got.status == 0, got.integral.real / math.log(10), math.nan)
    return out


def _pearson3_logpdf(x: np.ndarray, skew: np.ndarray) -> np.ndarray:
    return scipy.stats.pearson3.logpdf(x, skew)
