"""kNN engine benchmark: exact k nearest candidates of every target, two engines, same data.

* ``library``: :func:`tarot_select.knn.nearest_neighbors` (numpy: blocked float32 matmul,
  only entries above each target's running k-th score merged, streamed over candidate
  blocks, deterministic tie-break);
* ``faiss``: ``faiss.IndexFlatIP`` exact inner-product search (``pip install faiss-cpu``), on
  the same unit vectors (for unit vectors, largest inner product = smallest distance).

    python benchmarks/bench_knn.py [--n 200000] [--m 2000] [--d 1024] [--k 10]

Prints seconds per engine and whether their neighbour sets agree.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from tarot_select.knn import nearest_neighbors


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--m", type=int, default=2_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="n=20000, m=500, d=256")
    args = p.parse_args()
    if args.quick:
        args.n, args.m, args.d = 20_000, 500, 256
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, args.d)).astype(np.float32)
    x = unit(centres[rng.integers(0, 64, args.n)] + rng.normal(size=(args.n, args.d)).astype(np.float32))
    y = unit(centres[rng.integers(0, 8, args.m)] + rng.normal(size=(args.m, args.d)).astype(np.float32))
    threads = len(os.sched_getaffinity(0))
    print(f"n={args.n} m={args.m} d={args.d} k={args.k}, {threads} threads")
    t0 = time.perf_counter()
    ours = nearest_neighbors(x, y, args.k)
    t_lib = time.perf_counter() - t0
    print(f"library blocked matmul + top-k: {t_lib:.2f} s")
    try:
        import faiss
    except ImportError:
        print("faiss: not installed (pip install faiss-cpu)")
        return 0
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(args.d)
    index.add(x)
    _, idx = index.search(y, args.k)
    t_faiss = time.perf_counter() - t0
    agree = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ours.indices, idx)])
    print(
        f"faiss IndexFlatIP:               {t_faiss:.2f} s  (library / faiss = {t_lib / t_faiss:.2f}); "
        f"neighbour sets agree {agree:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
