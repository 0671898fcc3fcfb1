"""Neighbour search: the blocked exact search against a dense sort written here, the relabelled
null lists, and the faiss backend's reported recall against exact search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.metrics import knn as exact
from alignkit.metrics import neighbours as nb
from alignkit.metrics.neighbours import knn_graph, knn_lists, mutual_knn, mutual_knn_detail


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["default tiles", "small tiles", "small tiles, filter only"])
def tiles(request, monkeypatch):
    """Default tile sizes (one tile at these n), and tiles of 64 rows with strips of 32 and
    column chunks of 96, so that the diagonal strips, the chunks, the last short tile and
    the cell filter all run; "filter only" opens cells however many pass, so that the sparse
    merges run too (by default weak thresholds send a block to topk instead)."""
    if request.param != "default tiles":
        monkeypatch.setattr(exact, "TILE", 64)
        monkeypatch.setattr(exact, "SUB_TILE", 32)
        monkeypatch.setattr("alignkit.metrics._engine.BLOCK_ELEMENTS", 64 * 96)
    if request.param == "small tiles, filter only":
        monkeypatch.setattr(exact, "_OPEN_SHARE", 1.0)
    return request.param


def _naive_lists(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's k most cosine-similar other rows, by a stable sort of (-similarity, index)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # ties: smaller index first
    return np.sort(order, axis=1)


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Rows around 12 centres: neighbourhoods with structure, like encoder features."""
    g = np.random.default_rng(seed)
    centres = 3.0 * g.standard_normal((12, d))
    return centres[g.integers(0, 12, n)] + g.standard_normal((n, d))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("n", "k"), [(301, 10), (250, 1), (96, 40)])
def test_knn_lists_equal_a_dense_stable_sort(n, k, dtype, tiles, monkeypatch):
    x = _clustered(n, 24, seed=n).astype(dtype)
    calls = []
    merge = exact._merge_offers
    monkeypatch.setattr(exact, "_merge_offers", lambda *a: calls.append(1) or merge(*a))
    idx, sim = knn_lists(torch.from_numpy(x), k)
    expected = _naive_lists(x.astype(np.float64), k)
    np.testing.assert_array_equal(idx.numpy(), expected)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(
        sim.numpy(), np.einsum("id,ikd->ik", xn, xn[expected]), rtol=0, atol=1e-5
    )
    if tiles == "small tiles, filter only" and n > 200:
        assert calls, "the cell filter's sparse merge never ran"


def test_ties_at_the_kth_place_go_to_the_smaller_index(tiles):
    # 0/1 rows with four ones out of 12: every cosine is a multiple of 1/4, exactly, in any
    # summation order; duplicated rows add ties at similarity 1
    g = np.random.default_rng(5)
    x = np.zeros((230, 12))
    for i in range(230):
        x[i, g.choice(12, 4, replace=False)] = 1
    x[200:] = x[:30]
    for k in (1, 3, 7, 25):
        idx, _ = knn_lists(torch.from_numpy(x), k)
        np.testing.assert_array_equal(idx.numpy(), _naive_lists(x, k))
        idx32, _ = knn_lists(torch.from_numpy(x.astype(np.float32)), k)
        np.testing.assert_array_equal(idx32.numpy(), _naive_lists(x, k))


def test_every_other_row_is_a_neighbour_when_k_is_n_minus_1():
    x = _clustered(20, 5, seed=1)
    idx, _ = knn_lists(torch.from_numpy(x), 19)
    for i in range(20):
        assert idx[i].tolist() == [j for j in range(20) if j != i]


def test_relabelled_lists_are_the_lists_of_the_permuted_input(tiles):
    """The permutation null never searches again: y's lists relabelled must equal a new search
    on the permuted rows, and the score from them the score of the permuted pair."""
    x, y = _clustered(180, 16, seed=2), _clustered(180, 20, seed=3)
    perm = torch.from_numpy(np.random.default_rng(4).permutation(180))
    opts = {"k": 6}
    sx = nb._knn_prepare(torch.from_numpy(x), opts, "x")
    sy = nb._knn_prepare(torch.from_numpy(y), opts, "y")
    idx_p, _ = exact._relabel(sy.idx, sy.sim, perm)
    np.testing.assert_array_equal(np.sort(idx_p.numpy(), 1), _naive_lists(y[perm.numpy()], 6))
    cross = nb._knn_cross(sx, sy, perm, opts)
    score = nb._mutual_knn_finish(sx, sy, cross, opts)
    a, b = _naive_lists(x, 6), _naive_lists(y[perm.numpy()], 6)
    naive = np.mean([len(set(a[i]) & set(b[i])) / 6 for i in range(180)])
    assert score == pytest.approx(naive, abs=1e-12)
    assert score == pytest.approx(mutual_knn(x, y[perm.numpy()], k=6), abs=1e-12)


def test_exact_graph_reports_full_recall_and_bad_options_fail():
    x = _clustered(50, 8, seed=0)
    g = knn_graph(x, k=5)
    assert (g.backend, g.recall, g.recall_rows) == ("exact", 1.0, 0)
    np.testing.assert_array_equal(g.idx.numpy(), _naive_lists(x, 5))
    with pytest.raises(
        AlignkitError, match="unknown neighbour backend 'annoy'.*exact, faiss, faiss-ivf"
    ):
        knn_graph(x, backend="annoy")
    with pytest.raises(AlignkitError, match="k must be smaller than the number of rows"):
        knn_graph(x, k=50)
    x[3] = 0
    with pytest.raises(AlignkitError, match="1 of 50 rows that are all zeros"):
        knn_graph(x)


def test_missing_faiss_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(AlignkitError, match="pip install faiss-cpu"):
        knn_graph(_clustered(50, 8, seed=0), backend="faiss")


# ------------------------------------------------------------------------------------------------
# faiss


def _recall_against(idx: np.ndarray, exact: np.ndarray) -> float:
    return (
        float(np.mean([len(set(a) & set(b)) for a, b in zip(idx, exact, strict=True)]))
        / idx.shape[1]
    )


def test_faiss_ivf_recall_is_what_exact_search_says():
    pytest.importorskip("faiss")
    x = _clustered(3000, 32, seed=7)  # 75 inverted lists
    exact = _naive_lists(x, 10)
    low = knn_graph(x, k=10, backend="faiss-ivf", recall_sample=3000, nprobe=1)
    # every row sampled: the reported recall is the recall over all rows, computed here
    assert low.recall_rows == 3000
    assert low.recall == pytest.approx(_recall_against(low.idx.numpy(), exact), abs=1e-12)
    assert 0.2 < low.recall < 0.99  # one list of 75 misses neighbours: not a vacuous check
    assert not (low.idx == torch.arange(3000).unsqueeze(1)).any()  # self excluded
    full = knn_graph(x, k=10, backend="faiss-ivf", recall_sample=500, nprobe=10_000)
    assert full.recall == 1.0  # every list searched: the search is exhaustive
    np.testing.assert_array_equal(full.idx.numpy(), exact)
    # a sampled estimate is within its binomial error of the full-population value
    mid = knn_graph(x, k=10, backend="faiss-ivf", recall_sample=400, nprobe=4)
    truth = _recall_against(mid.idx.numpy(), exact)
    assert abs(mid.recall - truth) < 4 * math.sqrt(truth * (1 - truth) / 400) + 1e-9


def test_faiss_hnsw_recall_is_what_exact_search_says():
    pytest.importorskip("faiss")
    torch.set_num_threads(1)  # one thread: the graph, and so the lists, are deterministic
    x = _clustered(3000, 64, seed=7)
    exact = _naive_lists(x, 10)
    # the reported recall counts a listed row whose float32 similarity reaches the exact k-th
    # one; the set overlap here is in float64: near-ties may differ in a few of 30,000 entries
    narrow = knn_graph(x, k=10, backend="faiss", recall_sample=3000, ef_search=1)
    assert narrow.backend == "faiss" and narrow.recall_rows == 3000
    assert narrow.recall == pytest.approx(_recall_against(narrow.idx.numpy(), exact), abs=3e-4)
    assert not (narrow.idx == torch.arange(3000).unsqueeze(1)).any()  # self excluded
    wide = knn_graph(x, k=10, backend="faiss", recall_sample=3000, ef_search=256)
    assert wide.recall == pytest.approx(_recall_against(wide.idx.numpy(), exact), abs=3e-4)
    assert narrow.recall < wide.recall  # the beam width buys recall: not a vacuous check
    assert wide.recall > 0.99
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)  # the similarities of the listed rows
    expected_sim = np.einsum("id,ikd->ik", xn, xn[wide.idx.numpy()])
    np.testing.assert_allclose(wide.sim.numpy(), expected_sim, rtol=0, atol=1e-5)


def test_faiss_mutual_knn_scores_its_own_lists_and_reports_recall():
    pytest.importorskip("faiss")
    x, y = _clustered(2000, 24, seed=8), _clustered(2000, 24, seed=8) @ np.eye(24)[::-1]
    y = y + 0.5 * np.random.default_rng(9).standard_normal(y.shape)
    res = mutual_knn_detail(x, y, k=10, backend="faiss", recall_sample=2000, ef_search=12)
    a, b = res.x.idx.numpy(), res.y.idx.numpy()
    assert res.score == pytest.approx(
        np.mean([len(set(a[i]) & set(b[i])) / 10 for i in range(2000)]), abs=1e-12
    )
    assert res.x.recall == pytest.approx(_recall_against(a, _naive_lists(x, 10)), abs=1e-12)
    assert res.y.recall == pytest.approx(_recall_against(b, _naive_lists(y, 10)), abs=1e-12)
    assert mutual_knn(x, y, k=10, backend="faiss") == pytest.approx(
        mutual_knn(x, y, k=10), abs=0.05
    )


@pytest.mark.real
@pytest.mark.slow
def test_faiss_recall_on_real_image_features(data_dir):
    """MobileNet-v2 features of 400 Flickr8k images: the reported recall (all rows sampled) is
    the overlap with exact lists found here by a dense sort."""
    pytest.importorskip("faiss")
    from alignkit.features import extract_features
    from alignkit.probes import load_probe

    probe = load_probe("flickr8k:test", n=400, data_dir=data_dir, progress=False)
    kw = {"batch_size": 50, "num_workers": 0, "cache": False, "device": "cpu", "progress": False}
    feats = extract_features("torchvision:mobilenet_v2", probe, **kw)
    x = feats.features.double().numpy()  # (400, 1280)
    g = knn_graph(x, k=10, backend="faiss", recall_sample=400, ef_search=11)
    assert g.recall == pytest.approx(_recall_against(g.idx.numpy(), _naive_lists(x, 10)))
    assert 0.3 < g.recall < 1.0
