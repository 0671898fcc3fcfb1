"""Neighbour lists with a choice of backend and their measured recall (:func:`knn_graph`): exact
blocked search (:mod:`alignkit.metrics.knn`), or, past one machine's patience (n beyond about
50,000), faiss's approximate HNSW graph or inverted file, whose recall against exact search is
reported on a sample of rows (:class:`NeighbourResult`). faiss is imported only when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from alignkit.errors import AlignkitError, unknown_key
from alignkit.metrics import _engine
from alignkit.metrics._checks import ArrayLike, as_features, check_k, check_min_rows
from alignkit.metrics.knn import _normalised, knn_lists

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
