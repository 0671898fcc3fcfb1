"""Exact cosine k-nearest-neighbour lists (:func:`knn_lists`), the search behind mutual kNN and
CKNNA (:mod:`alignkit.metrics.neighbours`).

The lists come from a blocked search over the similarity matrix S = X̂X̂ᵀ that never holds it: S
is symmetric, so only blocks on and above the diagonal are multiplied (n²·d FLOPs per input,
half of a full product, plus n·SUB_TILE·d for the diagonal strips), and each block offers its
entries to the running top-(k+1) lists of both its rows and its columns. After the first tile
almost no entry beats a row's current (k+1)-th value, so each block is first reduced to maxima
over 4 x 4 cells and only the cells that can change a list are opened (blocks with weak
thresholds take a plain ``topk``). Memory O(n·k + BLOCK_ELEMENTS).

Ties: the values are exact as the GEMM computed them; a row whose k-th and (k+1)-th values are
equal is recomputed and sorted stably, so ties at the k-th place go to the smaller row index,
in float32 and float64 alike (tested against a dense stable sort).

A permutation of the pairing only relabels y's lists (O(n·k), :func:`_relabel`), so permutation
nulls and all-pairs scoring never redo a neighbour search.
"""

from __future__ import annotations

import math

import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import _engine


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
