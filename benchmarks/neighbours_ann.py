"""Approximate neighbour indexes against exact search: build and search CPU seconds, recall.

    python benchmarks/neighbours_ann.py --n 20000 --d 1024 exact
    python benchmarks/neighbours_ann.py --n 20000 --d 1024 ivf 2:40:32 4:64:32
    python benchmarks/neighbours_ann.py --n 100000 --d 768 hnsw 16:40:64 16:40:32

One input of the synthetic float32 features of ``benchmarks/metrics.py`` (``inputs``), one
thread (torch and faiss). Every row is searched for its k + 1 = 11 most similar rows (itself
included, then dropped); the recall is ``alignkit``'s (share of listed neighbours reaching the
exact k-th similarity) on 1,000 sampled rows. Configurations: ``ivf LISTS_PER_SQRT_N:
TRAIN_POINTS_PER_LIST:NPROBE`` (lists = that x √n) and ``hnsw M:EF_CONSTRUCTION:EF_SEARCH``;
``exact`` times ``knn_lists``. This is the measurement behind docs/metrics-speed.md's faiss
table; the backends themselves are ``knn_graph(..., backend="faiss" | "faiss-ivf")``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics import inputs  # noqa: E402

from alignkit.metrics.knn import knn_lists  # noqa: E402
from alignkit.metrics.knn_graph import _drop_self, _recall  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("mode", choices=("exact", "ivf", "hnsw"))
    parser.add_argument("configs", nargs="*")
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    n, d, k = args.n, args.d, 10
    x, _ = inputs(n, d, seed=1)
    xn = (x / x.norm(dim=1, keepdim=True)).contiguous()
    a = xn.numpy()
    if args.mode == "exact":
        c = time.process_time()
        knn_lists(x, k)
        print(f"n={n} d={d} exact knn_lists: {time.process_time() - c:.1f} CPU s", flush=True)
        return
    for spec in args.configs:
        c = time.process_time()
        if args.mode == "ivf":
            per_sqrt, per_list, nprobe = (float(v) for v in spec.split(":"))
            lists = int(per_sqrt * math.sqrt(n))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed, index.cp.niter = 0, 10
            pick = np.random.default_rng(0).choice(n, min(n, int(per_list) * lists), False)
            index.train(a[np.sort(pick)])
            index.add(a)
            index.nprobe = int(nprobe)
            label = f"IVF lists={lists} train={int(per_list)}/list nprobe={int(nprobe)}"
        else:
            m, ef_c, ef_s = (int(v) for v in spec.split(":"))
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_c
            index.add(a)
            index.hnsw.efSearch = ef_s
            label = f"HNSW M={m} efConstruction={ef_c} efSearch={ef_s}"
        build = time.process_time() - c
        c = time.process_time()
        sim, found = index.search(a, k + 1)
        search = time.process_time() - c
        idx, _ = _drop_self(xn, torch.from_numpy(found), torch.from_numpy(sim), k)
        recall = _recall(xn, idx, k, 1000, 0)
        print(
            f"n={n} d={d} {label}: build {build:.1f} s, search {search:.1f} s, "
            f"total {build + search:.1f} CPU s, recall {recall:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
