"""Neighbourhood metrics: mutual k-nearest-neighbours and CKNNA (Huh et al. 2024).

Both follow "The Platonic Representation Hypothesis" (Huh, Cheung, Wang & Isola, ICML 2024) and
its code (minyoungg/platonic-rep, ``metrics.py`` and ``measure_alignment.py``):

* rows are L2-normalised, so the kernel is the cosine similarity K_ij = x̂_i·x̂_j (uncentred);
* N_k^X(i): the k rows most cosine-similar to row i, row i itself excluded;
* ties at the k-th place go to the smaller row index (platonic-rep leaves them to ``argsort``),
  so results are deterministic.

Exact neighbour lists (:func:`knn_lists`) come from a blocked search over the similarity matrix
S = X̂X̂ᵀ that never holds it: S is symmetric, so only blocks on and above the diagonal are
multiplied (n²·d FLOPs per input, half of a full product, plus n·SUB_TILE·d for the diagonal
strips), and each block offers its entries to the running top-(k+1) lists of both its rows and
its columns. After the first tile almost no entry beats a row's current (k+1)-th value, so each
block is first reduced to maxima over 4 x 4 cells and only the cells that can change a list are
opened (blocks with weak thresholds take a plain ``topk``). Memory O(n·k + BLOCK_ELEMENTS).

Ties: the values are exact as the GEMM computed them; a row whose k-th and (k+1)-th values are
equal is recomputed and sorted stably, so ties at the k-th place go to the smaller row index,
in float32 and float64 alike (tested against a dense stable sort).

A permutation of the pairing only relabels y's lists (O(n·k), :func:`_relabel`), so permutation
nulls and all-pairs scoring never redo a neighbour search.

Past one machine's patience (n beyond about 50,000), ``backend="faiss"`` finds approximate lists
with an HNSW graph and reports their recall against exact search on a sample of rows
(:func:`knn_graph`, :class:`NeighbourResult`, :func:`mutual_knn_detail`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from alignkit.errors import AlignkitError, unknown_key
from alignkit.metrics import _engine
from alignkit.metrics._checks import ArrayLike, as_features, as_pair, check_k, check_min_rows
from alignkit.metrics._engine import Engine, Options, evaluate

_log = logging.getLogger(__name__)


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
    xn = _normalised(x, name)
    if k == n - 1:  # every other row is a neighbour: the set is unique
        idx = torch.arange(n, device=x.device).repeat(n, 1)
        idx = idx[idx != torch.arange(n, device=x.device).unsqueeze(1)].view(n, k)
        return idx, _gather_sims(xn, idx)
    vals, idx = _running_topk(xn, k + 1)  # (n, k+1) descending, exact values
    tied = torch.nonzero(vals[:, k - 1] == vals[:, k]).flatten()
    if tied.numel():
        # a tie across the k-th place: recompute those rows; a stable descending sort keeps
        # index order among equal values, so the smaller index wins
        for rows in tied.split(_engine.block_rows(n)):  # (c, n) blocks of bounded size
            s = xn[rows] @ xn.T  # (c, n)
            s[torch.arange(rows.numel(), device=x.device), rows] = -math.inf
            srt = torch.sort(s, dim=1, descending=True, stable=True)
            vals[rows], idx[rows] = srt.values[:, : k + 1], srt.indices[:, : k + 1]
    idx, order = idx[:, :k].sort(dim=1)
    return idx, vals[:, :k].gather(1, order).double()


def _normalised(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm; a row of zeros is an error (its cosine is undefined)."""
    norms = x.norm(dim=1)
    zero = int((norms == 0).sum())
    if zero:
        raise AlignkitError(
            f"{name} has {zero} of {x.shape[0]} rows that are all zeros: cosine neighbours are "
            "undefined"
        )
    return x / norms.unsqueeze(1)


def _gather_sims(xn: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row to its listed neighbours, ``(n, k)`` float64."""
    out = torch.empty(idx.shape, dtype=torch.float64, device=xn.device)
    chunk = max(1, _engine.BLOCK_ELEMENTS // (idx.shape[1] * xn.shape[1]))
    for i0 in range(0, idx.shape[0], chunk):
        nb = xn[idx[i0 : i0 + chunk]]  # (c, k, d)
        out[i0 : i0 + chunk] = (nb @ xn[i0 : i0 + chunk].unsqueeze(2)).squeeze(2).double()
    return out


TILE = 1024
"""Rows per tile of the blocked search: MKL's float32 GEMM reaches its full rate at about a
thousand rows (measured 58 GFLOP/s per core at 1,024 rows against 50 at 256, d = 384)."""

SUB_TILE = 256
"""Rows per strip inside a diagonal tile: the wasted lower half of each diagonal square is then
n·SUB_TILE/2 entries in all, not n·TILE/2."""

_FAN = 4  # the max-filter's cells are _FAN x _FAN entries
_OPEN_SHARE = 0.15  # above this share of cells to open, a block's plain topk is cheaper


def _running_topk(xn: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m largest off-diagonal entries of each row of S = xn xnᵀ, never holding S.

    S is symmetric, so only the blocks on and above the diagonal are multiplied: n²·d FLOPs plus
    n·SUB_TILE·d, half of a full product. Rows are zero-padded to a multiple of 16; tile I (TILE
    rows, the last one shorter) multiplies its diagonal square in SUB_TILE-row strips, each from
    its own diagonal on, then the rest of its rows in column chunks of at most
    ``_engine.BLOCK_ELEMENTS`` entries. Each block offers every entry S_ij to row i's running
    top-m and, right of the block's own diagonal square, to row j's, so every unordered pair
    reaches both of its rows exactly once.

    An offer matters only if it beats its row's current m-th value, and after the first tile
    few do (about m / rows seen so far). So a block is reduced to maxima over cells of 4 x 4
    entries (one vectorised pass), each compared with the lowest threshold of the 8 rows it
    could offer to; only passing cells are opened, compared entry by entry and merged
    (:func:`_offer`). Rows whose lists are not full yet (the first tile) take a plain ``topk``.

    The values returned are exact (as the block GEMMs computed them) and descending per row;
    which index of several equal values is kept is unspecified (the caller resolves ties at the
    boundary). Memory O(n·m + BLOCK_ELEMENTS).
    """
    n, d = xn.shape
    dev, dtype = xn.device, xn.dtype
    step = 16  # tiles, strips and chunks in multiples of 16 rows (cells need 4)
    n_pad = -(-n // step) * step
    tile = max(step, min(TILE, math.isqrt(_engine.BLOCK_ELEMENTS) // step * step, n_pad))
    sub = max(step, min(SUB_TILE, tile) // step * step)
    chunk = max(tile, _engine.BLOCK_ELEMENTS // tile // step * step)
    if n_pad != n:
        xn = torch.cat([xn, torch.zeros(n_pad - n, d, dtype=dtype, device=dev)])
    vals = torch.full((n_pad, m), -math.inf, dtype=dtype, device=dev)
    vals[n:] = math.inf  # padding rows take no offers
    idx = torch.zeros((n_pad, m), dtype=torch.int64, device=dev)

    def block(r0: int, r1: int, c0: int, c1: int, own_from: int) -> None:
        """Offer S[r0:r1, c0:c1] to its rows, and its columns >= own_from to their rows."""
        s = xn[r0:r1] @ xn[c0:c1].T  # (b, w)
        if c0 == r0:
            s.diagonal().fill_(-math.inf)  # self excluded
        if c1 > n:
            s[:, max(0, n - c0) :] = -math.inf  # padding columns
        if r1 > n:
            s[max(0, n - r0) :] = -math.inf  # padding rows
        _offer(vals, idx, s, r0, c0, own_from)

    for i0 in range(0, n_pad, tile):
        i1 = min(n_pad, i0 + tile)
        for r0 in range(i0, i1, sub):  # the diagonal square, in strips
            r1 = min(i1, r0 + sub)
            block(r0, r1, r0, i1, r1)
        for c0 in range(i1, n_pad, chunk):  # the rest of the tile's rows
            block(i0, i1, c0, min(n_pad, c0 + chunk), c0)
    return vals[:n], idx[:n]


def _offer(
    vals: torch.Tensor, idx: torch.Tensor, s: torch.Tensor, r0: int, c0: int, own_from: int
) -> None:
    """Merge block s = S[r0:r0+b, c0:c0+w] into the running lists, in place: every entry into
    its row's list, and the entries of columns >= own_from into their column's list.

    Cell filter: the block's maxima over cells of 4 x 4 entries (rows R + t·b/4, columns
    4C .. 4C+3: one vectorised pass over the block, one over a quarter of it) are compared with
    the lowest threshold of the 8 rows a cell can offer to; only passing cells are read (as
    16-byte runs), compared entry by entry and merged. A direction whose lists are not full
    yet, or a block with more than _OPEN_SHARE of its cells to open (thresholds still weak),
    takes a plain ``topk`` of the block instead.
    """
    b, w = s.shape
    m, q = vals.shape[1], _FAN
    off = own_from - c0
    inf = torch.full((max(0, off),), math.inf, dtype=vals.dtype, device=vals.device)
    thr_r = vals[r0 : r0 + b, m - 1]  # (b,)
    thr_c = torch.cat([inf, vals[own_from : c0 + w, m - 1]])  # (w,); +inf: not ours to offer
    rows_dense = bool(torch.isneginf(thr_r).any())  # lists not full yet
    cols_dense = off < w and bool(torch.isneginf(thr_c).any())
    thr_r = torch.full_like(thr_r, math.inf) if rows_dense else thr_r  # +inf: offered by topk
    thr_c = torch.full_like(thr_c, math.inf) if cols_dense else thr_c
    big = small = torch.zeros(0, dtype=torch.int64, device=s.device)
    if not (rows_dense and (cols_dense or off >= w)):
        cell = s.view(q, b // q, w).amax(0)  # (b/4, w): max over rows R + t·b/4
        cell = torch.nn.functional.max_pool1d(cell.unsqueeze(1), q, q).squeeze(1)  # (b/4, w/4)
        low_r = thr_r.view(q, b // q).amin(0)  # (b/4,)
        low_c = thr_c.view(w // q, q).amin(1)  # (w/4,)
        big, small = torch.nonzero(cell > torch.minimum(low_r.unsqueeze(1), low_c), as_tuple=True)
        if big.numel() > _OPEN_SHARE * cell.numel():  # thresholds still weak: topk is cheaper
            rows_dense, cols_dense = True, off < w
            big = big[:0]
    if rows_dense:  # the plain top-m of each row of the block
        v, p = torch.topk(s, min(m, w), dim=1)
        _merge_dense(vals, idx, r0, v, p + c0)
    if cols_dense:
        v, p = torch.topk(s[:, off:].T.contiguous(), min(m, b), dim=1)  # topk on dim 0 is slow
        _merge_dense(vals, idx, own_from, v, p + r0)
    if not big.numel():
        return
    fan = torch.arange(q, device=s.device)
    rows = big.unsqueeze(1) + fan * (b // q)  # (P, 4)
    v = s.view(-1, q).index_select(0, (rows * (w // q) + small.unsqueeze(1)).view(-1))
    v = v.view(-1, q, q)  # (P, 4, 4): [cell, row t, column u]
    cols = small.unsqueeze(1) * q + fan  # (P, 4)
    for to_row, (own, other, own0, other0) in (
        (True, (rows, cols, r0, c0)),
        (False, (cols, rows, c0, r0)),
    ):
        thr = (thr_r if to_row else thr_c)[own]  # (P, 4)
        keep = v > (thr.unsqueeze(2) if to_row else thr.unsqueeze(1))
        p, t, u = torch.nonzero(keep, as_tuple=True)
        a, z = (t, u) if to_row else (u, t)
        _merge_offers(vals, idx, own[p, a] + own0, other[p, z] + other0, v[p, t, u])


def _merge_dense(
    vals: torch.Tensor, idx: torch.Tensor, o0: int, v: torch.Tensor, p: torch.Tensor
) -> None:
    """Rows o0.. of the running lists keep the best m of their list and (v, p). In place."""
    m = vals.shape[1]
    o1 = o0 + v.shape[0]
    top, pos = torch.topk(torch.cat([vals[o0:o1], v], dim=1), m, dim=1)
    idx[o0:o1] = torch.cat([idx[o0:o1], p], dim=1).gather(1, pos)
    vals[o0:o1] = top


def _merge_offers(
    vals: torch.Tensor,
    idx: torch.Tensor,
    owners: torch.Tensor,
    nbrs: torch.Tensor,
    offered: torch.Tensor,
) -> None:
    """Merge (owner row, neighbour, value) offers, a few per owner, into the running top-m."""
    if not owners.numel():
        return
    m = vals.shape[1]
    order = torch.argsort(owners)
    owners, nbrs, offered = owners[order], nbrs[order], offered[order]
    uniq, counts = torch.unique_consecutive(owners, return_counts=True)
    width = int(counts.max())
    if uniq.numel() * width > 8 * owners.numel() + 4096:  # a few owners with many offers
        _merge(vals, idx, owners, nbrs, offered)
        return
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(owners.numel(), device=owners.device) - starts.repeat_interleave(counts)
    row = torch.arange(uniq.numel(), device=owners.device).repeat_interleave(counts)
    pv = torch.full((uniq.numel(), width), -math.inf, dtype=vals.dtype, device=vals.device)
    pi = torch.zeros((uniq.numel(), width), dtype=torch.int64, device=vals.device)
    pv[row, slot], pi[row, slot] = offered, nbrs
    top, pos = torch.topk(torch.cat([vals[uniq], pv], dim=1), m, dim=1)
    idx[uniq] = torch.cat([idx[uniq], pi], dim=1).gather(1, pos)
    vals[uniq] = top


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


# ------------------------------------------------------------------------------------------------
# approximate neighbours (faiss) and neighbour lists with their recall

BACKENDS = ("exact", "faiss", "faiss-ivf")
"""Neighbour backends: exact blocked search; faiss's HNSW graph (``"faiss"``, the approximate
backend to use); faiss's inverted file (``"faiss-ivf"``)."""


@dataclass(frozen=True, eq=False)
class NeighbourResult:
    """Cosine k-nearest-neighbour lists of one representation, with what they cost in recall.

    Attributes:
        idx: ``(n, k)`` int64 neighbour rows, ascending within each row, self excluded.
        sim: ``(n, k)`` float64 cosine similarity to each of them.
        backend: one of :data:`BACKENDS`.
        recall: mean over ``recall_rows`` sampled rows of the share of listed neighbours that
            belong to the exact top k (a listed neighbour counts when its similarity reaches
            the exact k-th largest, so exact ties never count against it); 1.0 for the exact
            backend, NaN when no rows were sampled.
        recall_rows: rows sampled for ``recall`` (0 for the exact backend: nothing to check).
    """

    idx: torch.Tensor
    sim: torch.Tensor
    backend: str
    recall: float
    recall_rows: int


def knn_graph(
    x: ArrayLike,
    k: int = 10,
    backend: str = "exact",
    recall_sample: int = 1000,
    nprobe: int = 32,
    seed: int = 0,
    ef_search: int = 64,
) -> NeighbourResult:
    """Cosine k-nearest neighbours of every row (self excluded), exact or approximate.

    ``backend="exact"``: :func:`knn_lists` (blocked GEMM, n²·d multiply-adds; ties at the k-th
    place go to the smaller row index). The approximate backends search inner products of the
    L2-normalised rows with faiss (Douze et al. 2024, "The Faiss library"); which of several
    tied rows is kept is then unspecified:

    * ``"faiss"``: a hierarchical navigable small-world graph (``faiss.IndexHNSWFlat``, 16 links
      per node, efConstruction 40; Malkov & Yashunin 2018), each row searched with a beam of
      ``ef_search``; about n·log n graph steps to build and to search, so it grows far slower
      than exact search's n². The one to use past n of about 50,000 (docs/metrics-speed.md: at
      n = 100,000, d = 768 it took 60 CPU s per input at recall 0.994, the exact search 113 s;
      at n = 20,000 the exact search was the faster); below that use the exact search.
    * ``"faiss-ivf"``: an inverted file (``faiss.IndexIVFFlat``, round(2·√n) lists, k-means on
      40 sampled points per list; Jégou, Douze & Schmid 2011), ``nprobe`` lists searched per
      query: n²·d·nprobe/lists multiply-adds, not at GEMM speed, so it seldom beats the exact
      search at the same recall; kept for comparison.

    The recall of an approximate backend against exact search is measured on ``recall_sample``
    random rows (``recall_sample·n·d`` multiply-adds) and reported, so the cost of the
    approximation is visible beside the score. Rows that an index returns fewer than k others
    for are searched exactly.

    Args:
        x: ``(n, d)`` features; a row of zeros is an error.
        k: 1 <= k <= n - 1.
        backend: one of :data:`BACKENDS` (faiss needs ``pip install faiss-cpu``, the ``ann``
            extra).
        recall_sample: rows checked against exact search (approximate backends; 0 skips it).
        nprobe: inverted lists searched per query (``"faiss-ivf"``); more is slower and closer.
        seed: seeds the recall sample and the k-means of ``"faiss-ivf"``.
        ef_search: beam width of the graph search (``"faiss"``, at least k + 1); more is
            slower and closer. The graph is built in insertion order: with one thread the
            result is deterministic, with several it may differ between runs.

    Returns:
        A :class:`NeighbourResult`.

    Raises:
        AlignkitError: bad input, an unknown backend, or faiss not installed.
    """
    if backend not in BACKENDS:
        raise unknown_key("neighbour backend", str(backend), BACKENDS)
    xt = as_features(x, "x")
    n = xt.shape[0]
    check_min_rows(n, 2, "k-nearest neighbours")
    k = check_k(k, n)
    if backend == "exact":
        idx, sim = knn_lists(xt, k)
        return NeighbourResult(idx, sim, "exact", 1.0, 0)
    if isinstance(recall_sample, bool) or not isinstance(recall_sample, (int, np.integer)):
        raise AlignkitError(f"recall_sample must be an integer >= 0: got {recall_sample!r}")
    if recall_sample < 0:
        raise AlignkitError(f"recall_sample must be an integer >= 0: got {recall_sample}")
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise AlignkitError(f"{name} must be a positive integer: got {value!r}")
    faiss = _require_faiss()
    xn = _normalised(xt, "x").float().cpu().contiguous()  # faiss searches float32 on the CPU
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())  # the caller's thread budget
    try:
        if backend == "faiss":
            sim, found = _hnsw_search(faiss, xn.numpy(), k, int(ef_search))
        else:
            sim, found = _ivf_search(faiss, xn.numpy(), k, int(nprobe), seed)
    finally:
        faiss.omp_set_num_threads(threads)
    idx, sim = _drop_self(xn, torch.from_numpy(found), torch.from_numpy(sim), k)
    rows = min(int(recall_sample), n)
    recall = _recall(xn, idx, k, rows, seed) if rows else math.nan
    return NeighbourResult(idx.to(xt.device), sim.to(xt.device), backend, recall, rows)


def _require_faiss():  # noqa: ANN202 - a module
    try:
        import faiss
    except ImportError as exc:
        raise AlignkitError(
            "backend='faiss' needs the Python package 'faiss': pip install faiss-cpu "
            "(or alignkit[ann]); or use backend='exact'"
        ) from exc
    return faiss


def _hnsw_search(faiss, xn: np.ndarray, k: int, ef_search: int):  # noqa: ANN001, ANN202
    """HNSW graph of every row, then each row's k + 1 most similar: ``(sim, found)`` (n, k+1)."""
    index = faiss.IndexHNSWFlat(xn.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(xn)
    index.hnsw.efSearch = max(ef_search, k + 1)
    return index.search(xn, k + 1)


def _ivf_search(faiss, xn: np.ndarray, k: int, nprobe: int, seed: int):  # noqa: ANN001, ANN202
    """IVF-Flat index of every row, then each row's k + 1 most similar: ``(sim, found)``."""
    n, d = xn.shape
    lists = max(1, min(int(round(2 * math.sqrt(n))), n // 40))  # faiss wants >= 39 points/list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10  # k-means iterations: the lists need to be balanced, not optimal
    pick = np.random.default_rng(seed).choice(n, min(n, 40 * lists), replace=False)
    index.train(xn[np.sort(pick)])  # k-means on a sample: its cost was most of the search's
    index.add(xn)
    index.nprobe = min(nprobe, lists)
    return index.search(xn, k + 1)


def _drop_self(
    xn: torch.Tensor, found: torch.Tensor, sim: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, sim) ``(n, k)`` from an index's k + 1 results per row: self dropped where found,
    else the weakest; rows with fewer than k + 1 results (-1) are searched exactly."""
    n = found.shape[0]
    short = torch.nonzero((found < 0).any(1)).flatten()
    for rows in short.split(_engine.block_rows(n)):
        s = xn[rows] @ xn.T  # (c, n)
        top = torch.topk(s, k + 1, dim=1)
        found[rows], sim[rows] = top.indices, top.values
    sim = sim.double()
    is_self = found == torch.arange(n).unsqueeze(1)
    drop = torch.where(is_self.any(1), is_self.int().argmax(1), torch.full((n,), k))
    keep = torch.ones_like(is_self)
    keep[torch.arange(n), drop] = False
    found, sim = found[keep].view(n, k), sim[keep].view(n, k)
    found, order = found.sort(dim=1)
    return found, sim.gather(1, order)


def _recall(xn: torch.Tensor, idx: torch.Tensor, k: int, rows: int, seed: int) -> float:
    """Share of listed neighbours within the exact top k, on ``rows`` sampled rows."""
    n = xn.shape[0]
    pick = torch.from_numpy(np.sort(np.random.default_rng([seed, 2]).choice(n, rows, False)))
    hits = 0
    step = max(1, _engine.BLOCK_ELEMENTS // n)
    for i0 in range(0, rows, step):
        p = pick[i0 : i0 + step]
        s = (xn[p] @ xn.T).double()  # (c, n)
        s[torch.arange(p.numel()), p] = -math.inf
        kth = torch.topk(s, k, dim=1).values[:, -1:]  # exact k-th largest
        listed = s.gather(1, idx[p].to(s.device))
        hits += int((listed >= kth).sum())
    return hits / (rows * k)
