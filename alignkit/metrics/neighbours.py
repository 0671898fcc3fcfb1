"""Neighbourhood metrics: mutual k-nearest-neighbours and CKNNA (Huh et al. 2024).

Both follow "The Platonic Representation Hypothesis" (Huh, Cheung, Wang & Isola, ICML 2024) and
its code (minyoungg/platonic-rep, ``metrics.py`` and ``measure_alignment.py``):

* rows are L2-normalised, so the kernel is the cosine similarity K_ij = x̂_i·x̂_j (uncentred);
* N_k^X(i): the k rows most cosine-similar to row i, row i itself excluded;
* ties at the k-th place go to the smaller row index (platonic-rep leaves them to ``argsort``),
  so results are deterministic.

The neighbour lists are exact (:mod:`alignkit.metrics.knn`, a blocked search that never holds
the n x n similarity matrix; ties at the k-th place to the smaller row index), or, past one
machine's patience (n beyond about 50,000), approximate from faiss with their recall measured
(:mod:`alignkit.metrics.knn_graph`: :func:`knn_graph`, :class:`NeighbourResult`, used by
:func:`mutual_knn_detail`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import _engine
from alignkit.metrics._checks import ArrayLike, as_pair, check_k, check_min_rows
from alignkit.metrics._engine import Engine, Options, evaluate
from alignkit.metrics.knn import _relabel, knn_lists
from alignkit.metrics.knn_graph import NeighbourResult, knn_graph

__all__ = [  # knn_lists, knn_graph and NeighbourResult live in knn and knn_graph
    "CKNNA_ENGINE",
    "MUTUAL_KNN_ENGINE",
    "MutualKnnResult",
    "NeighbourResult",
    "cknna",
    "knn_graph",
    "knn_lists",
    "mutual_knn",
    "mutual_knn_chance",
    "mutual_knn_detail",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _KnnState:
    name: str
    idx: torch.Tensor  # (n, k) int64 neighbour rows, ascending within each row
    sim: torch.Tensor  # (n, k) float64 cosine similarity to each of them
    self_cknna: float  # n(n-3)·HSIC_u(M∘K, M∘K) with M the neighbour mask of K itself


def _matches(
    idx_x: torch.Tensor, idx_y: torch.Tensor, sim_y: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For each x-neighbour slot (i, a): is idx_x[i, a] also a y-neighbour of i (and L_ij there).

    Returns ``hit (n, k)`` bool and, when ``sim_y`` is given, ``l_val (n, k)`` float64 (0 where
    not a hit). O(n·k²) in row chunks of bounded memory.
    """
    n, k = idx_x.shape
    hit = torch.empty(n, k, dtype=torch.bool, device=idx_x.device)
    l_val = None if sim_y is None else torch.empty(n, k, dtype=torch.float64, device=idx_x.device)
    chunk = max(1, _engine.BLOCK_ELEMENTS // (k * k))
    for i0 in range(0, n, chunk):
        eq = idx_x[i0 : i0 + chunk, :, None] == idx_y[i0 : i0 + chunk, None, :]  # (c, k, k)
        hit[i0 : i0 + chunk] = eq.any(2)
        if l_val is not None:
            l_val[i0 : i0 + chunk] = (eq * sim_y[i0 : i0 + chunk, None, :]).sum(2)
    return hit, l_val


def _sparse_hsic_u(
    n: int, rows: torch.Tensor, cols: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> float:
    """n(n-3)·HSIC_u(A, B) for A, B supported on the same off-diagonal entries (rows, cols).

    Song et al. (2012) eq. 5 as platonic-rep's ``hsic_unbiased`` evaluates it, including on the
    asymmetric masked kernels: tr(ÃB̃) = Σ_ij A_ij B_ji, 1ᵀÃB̃1 = Σ_j (Σ_i A_ij)(Σ_l B_jl).
    """
    keys = rows * n + cols
    order = torch.argsort(keys)
    keys, b_sorted = keys[order], b[order]
    rev = cols * n + rows  # where B_ji lives
    pos = torch.searchsorted(keys, rev).clamp_(max=max(keys.numel() - 1, 0))
    found = keys[pos] == rev if keys.numel() else torch.zeros_like(rev, dtype=torch.bool)
    trace = float((a * torch.where(found, b_sorted[pos], torch.zeros_like(a))).sum())
    col_a = torch.zeros(n, dtype=torch.float64, device=a.device).index_add_(0, cols, a)
    row_b = torch.zeros(n, dtype=torch.float64, device=a.device).index_add_(0, rows, b)
    return (
        trace
        + float(a.sum()) * float(b.sum()) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * float(col_a @ row_b)
    )


def _knn_prepare(x: torch.Tensor, opts: Options, name: str) -> _KnnState:
    n = x.shape[0]
    idx, sim = knn_lists(x, opts["k"], name)
    rows = torch.arange(n, device=x.device).repeat_interleave(idx.shape[1])
    self_term = (
        _sparse_hsic_u(n, rows, idx.flatten(), sim.flatten(), sim.flatten()) if n >= 4 else math.nan
    )
    return _KnnState(name, idx, sim, self_term)


_KnnCross = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # y lists relabelled, hits


def _knn_cross(sx: _KnnState, sy: _KnnState, perm: torch.Tensor | None, opts: Options) -> _KnnCross:
    idx_y, sim_y = _relabel(sy.idx, sy.sim, perm)
    return idx_y, sim_y, _matches(sx.idx, idx_y)[0]


def _mutual_knn_finish(sx: _KnnState, sy: _KnnState, cross: _KnnCross, opts: Options) -> float:
    hit = cross[2]
    return float(hit.sum(dtype=torch.float64)) / hit.numel()


def _cknna_finish(sx: _KnnState, sy: _KnnState, cross: _KnnCross, opts: Options) -> float:
    idx_y, sim_y, _ = cross
    hit, l_val = _matches(sx.idx, idx_y, sim_y)
    n, k = hit.shape
    for s in (sx, sy):
        if not s.self_cknna > 0:
            raise AlignkitError(
                f"CKNNA is undefined: the unbiased HSIC of {s.name}'s neighbour-masked kernel "
                f"with itself is {s.self_cknna / (n * (n - 3)):.3g} (must be > 0)"
            )
    rows = torch.arange(n, device=hit.device).unsqueeze(1).expand(n, k)[hit]
    kl = _sparse_hsic_u(n, rows, sx.idx[hit], sx.sim[hit], l_val[hit])
    return kl / math.sqrt(sx.self_cknna * sy.self_cknna)


def _mutual_knn_check(n: int, opts: Options) -> None:
    check_min_rows(n, 2, "mutual kNN")
    opts["k"] = check_k(opts["k"], n)


def _cknna_check(n: int, opts: Options) -> None:
    check_min_rows(n, 4, "CKNNA (unbiased HSIC)")
    opts["k"] = check_k(opts["k"], n)


MUTUAL_KNN_ENGINE = Engine(
    "knn", ("k",), _knn_prepare, _knn_cross, _mutual_knn_finish, _mutual_knn_check
)
CKNNA_ENGINE = Engine("knn", ("k",), _knn_prepare, _knn_cross, _cknna_finish, _cknna_check)


def mutual_knn_chance(n: int, k: int = 10) -> float:
    """Expected mutual-kNN score under a uniformly random pairing of rows: exactly k / (n - 1).

    Under a random pairing the permuted y-neighbour set of row i, perm⁻¹(N(perm[i])), is a
    uniform k-subset of the n - 1 rows other than i, independent of N^X(i); the overlap of two
    k-subsets of n - 1 items has mean k² / (n - 1), so the score's mean is k / (n - 1).
    """
    return k / (n - 1)


def mutual_knn(
    x: ArrayLike,
    y: ArrayLike,
    k: int = 10,
    backend: str = "exact",
    recall_sample: int = 1000,
) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024): mean_i |N_k^X(i) ∩ N_k^Y(i)| / k.

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows. Rows are L2-normalised (cosine neighbours);
            a row of zeros is an error.
        k: neighbourhood size, 1 <= k <= n - 1; default 10 as in the paper.
        backend: ``"exact"`` (default), or ``"faiss"`` (``"faiss-ivf"``), approximate neighbours
            for n beyond about 50,000 (see :func:`knn_graph`); the neighbour recall of the
            approximation is logged at INFO level, and returned by :func:`mutual_knn_detail`.
        recall_sample: rows checked against exact search with the faiss backend.

    Returns:
        A score in [0, 1]; 1 for identical inputs; chance level k / (n - 1) (see
        :func:`mutual_knn_chance`). Invariant to rotations and isotropic scaling (not to
        translations: cosine similarity is about the origin).
    """
    if backend == "exact":
        xt, yt = as_pair(x, y)
        return evaluate(MUTUAL_KNN_ENGINE, xt, yt, {"k": k})
    return mutual_knn_detail(x, y, k, backend=backend, recall_sample=recall_sample).score


@dataclass(frozen=True, eq=False)
class MutualKnnResult:
    """A mutual-kNN score with the neighbour lists it came from (and their recall)."""

    score: float
    x: NeighbourResult
    y: NeighbourResult


def mutual_knn_detail(
    x: ArrayLike,
    y: ArrayLike,
    k: int = 10,
    backend: str = "exact",
    recall_sample: int = 1000,
    nprobe: int = 32,
    seed: int = 0,
    ef_search: int = 64,
) -> MutualKnnResult:
    """:func:`mutual_knn` with both neighbour graphs, so an approximate score carries its recall.

    Arguments as :func:`knn_graph`; ``result.x.recall`` and ``result.y.recall`` say what share
    of the approximate neighbours are exact ones (1.0 for the exact backend).
    """
    xt, yt = as_pair(x, y)
    _mutual_knn_check(xt.shape[0], {"k": k})
    gx = knn_graph(xt, k, backend, recall_sample, nprobe, seed, ef_search)
    gy = knn_graph(yt, k, backend, recall_sample, nprobe, seed, ef_search)
    if backend != "exact":
        _log.info(
            "mutual_knn backend=%s: neighbour recall %.4f (x) and %.4f (y) on %d sampled rows",
            backend,
            gx.recall,
            gy.recall,
            gx.recall_rows,
        )
    hit = _matches(gx.idx, gy.idx)[0]
    return MutualKnnResult(float(hit.sum(dtype=torch.float64)) / hit.numel(), gx, gy)


def cknna(x: ArrayLike, y: ArrayLike, k: int = 10) -> float:
    """CKNNA, "centered kernel nearest-neighbour alignment" (Huh et al. 2024, appendix).

    Exactly platonic-rep's ``AlignmentMetrics.cknna`` with its defaults (``unbiased=True``,
    ``distance_agnostic=False``) on L2-normalised rows as its ``measure_alignment.py`` feeds it:

    * kernels K = X̂X̂ᵀ, L = ŶŶᵀ (cosine, no feature centring; the unbiased HSIC centres);
    * mask M_ij = [j ∈ N_k^X(i)]·[j ∈ N_k^Y(i)] (self excluded; M is not symmetric);
    * CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_X∘K, M_X∘K) · HSIC_u(M_Y∘L, M_Y∘L)), with
      HSIC_u the Song et al. (2012) estimator evaluated literally on these asymmetric matrices.

    Differences from platonic-rep: its default ``topk=None`` crashes (compared with 2 before the
    None check), ours is k = 10, the value its alignment script passes; we drop the +1e-6 it adds
    to the denominator and raise an error when a self term is not positive; ties are broken by
    row index. Because the masked matrices are asymmetric the score is not exactly symmetric in
    (x, y). O(n·k) beyond the neighbour search; 1 for identical inputs.

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows (n >= 4). k: 1 <= k <= n - 1.
    """
    xt, yt = as_pair(x, y)
    return evaluate(CKNNA_ENGINE, xt, yt, {"k": k})
