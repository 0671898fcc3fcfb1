"""Neighbourhood metrics: mutual k-nearest-neighbours and CKNNA (Huh et al. 2024).

Both follow "The Platonic Representation Hypothesis" (Huh, Cheung, Wang & Isola, ICML 2024) and
its code (minyoungg/platonic-rep, ``metrics.py`` and ``measure_alignment.py``):

* rows are L2-normalised, so the kernel is the cosine similarity K_ij = x̂_i·x̂_j (uncentred);
* N_k^X(i): the k rows most cosine-similar to row i, row i itself excluded;
* ties at the k-th place go to the smaller row index (platonic-rep leaves them to ``argsort``),
  so results are deterministic.

Neighbour lists are found with a blockwise running top-k over square blocks of the similarity
matrix; since it is symmetric only the blocks on and above the diagonal are multiplied (n²·d
FLOPs instead of 2·n²·d) and each updates both its rows and its columns. Memory O(n·k + block²),
never an n x n matrix. A permutation of the pairing only relabels y's lists (O(n·k)), so
permutation nulls and all-pairs scoring never redo a neighbour search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import _engine
from alignkit.metrics._checks import ArrayLike, as_pair, check_k, check_min_rows
from alignkit.metrics._engine import Engine, Options, evaluate


@dataclass(frozen=True, eq=False)
class _KnnState:
    name: str
    idx: torch.Tensor  # (n, k) int64 neighbour rows, ascending within each row
    sim: torch.Tensor  # (n, k) float64 cosine similarity to each of them
    self_cknna: float  # n(n-3)·HSIC_u(M∘K, M∘K) with M the neighbour mask of K itself


def knn_lists(x: torch.Tensor, k: int, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-nearest neighbours of every row, self excluded, ties to the smaller index.

    Args:
        x: checked ``(n, d)`` features; rows with zero norm are an error (cosine undefined).
        k: 1 <= k <= n - 1.

    Returns:
        ``idx (n, k)`` int64 (ascending per row) and ``sim (n, k)`` float64 cosine similarities.
    """
    n = x.shape[0]
    norms = x.norm(dim=1)
    zero = int((norms == 0).sum())
    if zero:
        raise AlignkitError(
            f"{name} has {zero} of {n} rows that are all zeros: cosine neighbours are undefined"
        )
    xn = x / norms.unsqueeze(1)
    if k == n - 1:  # every other row is a neighbour: the set is unique
        idx = torch.arange(n, device=x.device).repeat(n, 1)
        idx = idx[idx != torch.arange(n, device=x.device).unsqueeze(1)].view(n, k)
        return idx, _gather_sims(xn, idx)
    vals, idx = _running_topk(xn, k + 1)  # (n, k+1) descending, exact values
    tied = torch.nonzero(vals[:, k - 1] == vals[:, k]).flatten()
    if tied.numel():
        # a tie across the k-th place: recompute those rows; a stable descending sort keeps
        # index order among equal values, so the smaller index wins
        s = xn[tied] @ xn.T  # (t, n)
        s[torch.arange(tied.numel(), device=x.device), tied] = -math.inf
        srt = torch.sort(s, dim=1, descending=True, stable=True)
        vals[tied], idx[tied] = srt.values[:, : k + 1], srt.indices[:, : k + 1]
    idx, order = idx[:, :k].sort(dim=1)
    return idx, vals[:, :k].gather(1, order).double()


def _gather_sims(xn: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row to its listed neighbours, ``(n, k)`` float64."""
    out = torch.empty(idx.shape, dtype=torch.float64, device=xn.device)
    chunk = max(1, _engine.BLOCK_ELEMENTS // (idx.shape[1] * xn.shape[1]))
    for i0 in range(0, idx.shape[0], chunk):
        nb = xn[idx[i0 : i0 + chunk]]  # (c, k, d)
        out[i0 : i0 + chunk] = (nb @ xn[i0 : i0 + chunk].unsqueeze(2)).squeeze(2).double()
    return out


def _running_topk(xn: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m largest off-diagonal entries of each row of S = xn xnᵀ, never holding S.

    S is symmetric, so only square blocks (I, J) with J >= I are multiplied: n²·d FLOPs, half of
    a full product. Diagonal blocks seed every row's top-m by ``topk``; each block above the
    diagonal then offers its rows (S_IJ) and its columns (S_IJᵀ) only the entries above their
    current m-th value (found by one comparison pass; few pass once the lists are seeded), merged
    by a sort. The values returned are exact and descending per row; which index of several equal
    values is kept is unspecified (the caller resolves ties at the boundary).
    Memory O(n·m + block²).
    """
    n, dev = xn.shape[0], xn.device
    side = max(m + 1, min(n, math.isqrt(_engine.BLOCK_ELEMENTS)))
    vals = torch.full((n, m), -math.inf, dtype=xn.dtype, device=dev)
    idx = torch.zeros((n, m), dtype=torch.int64, device=dev)
    starts = range(0, n, side)
    for i0 in starts:
        i1 = min(n, i0 + side)
        s = xn[i0:i1] @ xn[i0:i1].T  # (b, b)
        s.fill_diagonal_(-math.inf)  # self excluded
        mm = min(m, i1 - i0)
        v, p = torch.topk(s, mm, dim=1)
        vals[i0:i1, :mm], idx[i0:i1, :mm] = v, p + i0
    for i0 in starts:
        i1 = min(n, i0 + side)
        for j0 in starts:
            if j0 <= i0:
                continue
            j1 = min(n, j0 + side)
            s = xn[i0:i1] @ xn[j0:j1].T  # (bi, bj)
            r, c = torch.nonzero(s > vals[i0:i1, m - 1 :], as_tuple=True)  # row offers
            r2, c2 = torch.nonzero(
                s > vals[j0:j1, m - 1].unsqueeze(0), as_tuple=True
            )  # column offers
            owners = torch.cat([r + i0, c2 + j0])
            if owners.numel():
                nbrs = torch.cat([c + j0, r2 + i0])
                _merge(vals, idx, owners, nbrs, torch.cat([s[r, c], s[r2, c2]]))
    return vals, idx


def _merge(
    vals: torch.Tensor,
    idx: torch.Tensor,
    owners: torch.Tensor,
    nbrs: torch.Tensor,
    offered: torch.Tensor,
) -> None:
    """Merge offered (owner row, neighbour, value) entries into the running top-m, in place."""
    m = vals.shape[1]
    touched = torch.unique(owners)  # sorted
    own = torch.cat([touched.repeat_interleave(m), owners])
    nb = torch.cat([idx[touched].flatten(), nbrs])
    val = torch.cat([vals[touched].flatten(), offered])
    order = torch.argsort(val, descending=True, stable=True)
    order = order[torch.argsort(own[order], stable=True)]  # by owner, then value descending
    counts = torch.unique_consecutive(own[order], return_counts=True)[1]  # each >= m
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=vals.device) - starts.repeat_interleave(counts)
    keep = order[rank < m]  # m per touched owner, in owner order
    vals[touched] = val[keep].view(-1, m)
    idx[touched] = nb[keep].view(-1, m)


def _relabel(
    idx: torch.Tensor, sim: torch.Tensor, perm: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour lists of y after pairing row i of x with row perm[i] of y.

    Row i of the permuted y is y[perm[i]]; its neighbours are the rows j with perm[j] in
    N(perm[i]), i.e. perm⁻¹(N(perm[i])). O(n·k), no new search.
    """
    if perm is None:
        return idx, sim
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv[idx[perm]], sim[perm]


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


def mutual_knn(x: ArrayLike, y: ArrayLike, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024): mean_i |N_k^X(i) ∩ N_k^Y(i)| / k.

    Args:
        x: ``(n, d1)``; y: ``(n, d2)``, the same rows. Rows are L2-normalised (cosine neighbours);
            a row of zeros is an error.
        k: neighbourhood size, 1 <= k <= n - 1; default 10 as in the paper.

    Returns:
        A score in [0, 1]; 1 for identical inputs; chance level k / (n - 1) (see
        :func:`mutual_knn_chance`). Invariant to rotations and isotropic scaling (not to
        translations: cosine similarity is about the origin).
    """
    xt, yt = as_pair(x, y)
    return evaluate(MUTUAL_KNN_ENGINE, xt, yt, {"k": k})


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
