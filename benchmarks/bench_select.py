"""Selection benchmark: whitening + fixed-size TAROT + OTM, the library against the straightforward way.

Same synthetic clustered features for both (``n`` candidates from 64 clusters, ``m`` targets
from 8 of them, dimension ``d``), written once to ``.npy`` files (as the pipeline's gather
step leaves them); each approach runs in its own child process so that its peak memory
(max RSS, from ``os.wait4``) is its own:

* ``library``: the pipeline's stages. ``pipeline.whiten_features`` streams both files to WFD
  feature files and, in the same pass, finds every target's nearest WFD candidates
  (exact, ``max(16, 2·ceil(budget/m)+1)`` of them); :func:`tarot_select.api.select`
  (``tarot`` at ``--ratio``, then ``otm``) reads the features as memory maps and starts
  from those lists: OT only on selection × targets (exact network simplex up to 10⁶
  entries, else the library's ε-scaling log-domain Sinkhorn, warm-started across OTM
  rounds).
* ``straightforward``: the same algorithm written the obvious way on arrays loaded into
  memory: whitening with numpy, the dense candidates × targets score matrix, a full sort per
  target, POT's log-domain Sinkhorn on the dense numpy cost matrix for the fill potentials,
  and the exact ``ot.emd2`` for OTM's rounds while they have ≤ 4·10⁶ entries (faster than
  POT's Sinkhorn there, so this favours the straightforward side).

Both selections are then scored with one evaluator (the library's Sinkhorn on the same
whitened features), so "OT distance no worse" compares like with like.

    python benchmarks/bench_select.py [--n 100000] [--m 2000] [--d 1024] [--ratio 0.1] [--folds 5]
    python benchmarks/bench_select.py --n 1000000 --m 10000 --only library   # the scale target
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

ROUND_CAP = 64  # neighbour ranks per target the straightforward OTM may visit


def data_files(args: argparse.Namespace) -> tuple[str, str]:
    """Write the benchmark's features to ``.npy`` files once (the pipeline's gather output)."""
    tag = f"n{args.n}_m{args.m}_d{args.d}"
    cand, targ = (os.path.join(args.data, f"{tag}_{k}.npy") for k in ("candidates", "targets"))
    if not (os.path.exists(cand) and os.path.exists(targ)):
        os.makedirs(args.data, exist_ok=True)
        rng = np.random.default_rng(0)
        centres = 3.0 * rng.normal(size=(64, args.d)).astype(np.float32)
        out = np.lib.format.open_memmap(cand + ".tmp", mode="w+", dtype=np.float32, shape=(args.n, args.d))
        for start in range(0, args.n, 50_000):
            rows = min(50_000, args.n - start)
            out[start : start + rows] = centres[rng.integers(0, 64, rows)] + rng.standard_normal(
                (rows, args.d), dtype=np.float32
            )
        out.flush()
        del out
        os.replace(cand + ".tmp", cand)
        t = centres[rng.integers(0, 8, args.m)] + rng.standard_normal((args.m, args.d), dtype=np.float32)
        np.save(targ, t)
    return cand, targ


# ----------------------------------------------------------------- straightforward
def sf_whiten(x: np.ndarray, t: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    both = np.concatenate([x, t]).astype(np.float64)
    mu = both.mean(0)
    cov = np.cov(both, rowvar=False)
    cov += eps * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    w = np.linalg.inv(np.linalg.cholesky(cov)).T
    out = []
    for a in (x, t):
        z = (a - mu) @ w
        out.append((z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32))
    return out[0], out[1]


def sf_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a.astype(np.float64) @ b.T.astype(np.float64)
    return np.sqrt(np.maximum(sq, 0.0))


def sf_ot(a: np.ndarray, b: np.ndarray, reg: float = 0.01, potentials: bool = False):
    import ot

    cost = sf_cost(a, b)
    wa, wb = np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b))
    if cost.size <= 4_000_000 and not potentials:
        return float(ot.emd2(wa, wb, cost, numItermax=10_000_000))
    plan, log = ot.sinkhorn(wa, wb, cost, reg * cost.max(), method="sinkhorn_log", numItermax=1000, log=True)
    if potentials:
        return log["log_u"] if "log_u" in log else np.log(log["u"])
    return float((plan * cost).sum())


SORT_S: list[float] = []  # time the straightforward side spends on its dense scores + sorts


def sf_order(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    t0 = time.perf_counter()
    scores = x @ t.T  # dense (n, m)
    order = np.argsort(-scores, axis=0, kind="stable")  # full sort per target
    SORT_S.append(time.perf_counter() - t0)
    return order


def sf_fixed(x: np.ndarray, t: np.ndarray, budget: int) -> np.ndarray:
    order = sf_order(x, t)
    chosen = np.zeros(len(x), dtype=bool)
    picked: list[np.ndarray] = []
    count, rank = 0, 0
    while count < budget:
        col = order[rank]
        new = np.unique(col[~chosen[col]])
        if count + len(new) <= budget:
            chosen[new] = True
            picked.append(new)
            count += len(new)
            rank += 1
            continue
        union = np.concatenate(picked + [new])
        f = sf_ot(x[union], t, potentials=True)[count:]
        keep = new[np.argsort(f, kind="stable")[: budget - count]]
        picked.append(keep)
        count = budget
    return np.concatenate(picked)


def sf_otm(x: np.ndarray, t: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    m = len(t)
    perm = np.random.default_rng(seed).permutation(m)
    union = np.zeros(len(x), dtype=bool)
    order = sf_order(x, t)
    for fold in np.array_split(perm, folds):
        rest = np.setdiff1d(np.arange(m), fold)
        chosen = np.zeros(len(x), dtype=bool)
        picked: list[np.ndarray] = []
        best, best_size = math.inf, 0
        for rank in range(ROUND_CAP):
            col = order[rank, fold]
            new = np.unique(col[~chosen[col]])
            if len(new) == 0:
                continue
            chosen[new] = True
            picked.append(new)
            sel = np.concatenate(picked)
            dist = sf_ot(x[sel], t[rest])
            if dist < best:
                best, best_size = dist, len(sel)
            else:
                break
        union[np.concatenate(picked)[:best_size]] = True
    return np.flatnonzero(union)


# ----------------------------------------------------------------- children
def child(approach: str, args: argparse.Namespace) -> dict:
    cand_path, targ_path = data_files(args)
    out: dict = {"approach": approach}
    t0 = time.perf_counter()
    if approach == "library":
        # The pipeline's stages: whiten_features streams both files to WFD files, then
        # the selections read them as memory maps.
        from tarot_select import api
        from tarot_select.experiments.stages import whiten_features
        from tarot_select.io import load_features
        from tarot_select.knn import Neighbors

        wc, wt, wn = (os.path.join(args.out, f"wfd_{k}") for k in ("candidates.npy", "targets.npy", "neighbors.npz"))
        budget = round(args.ratio * args.n)
        k = max(16, 2 * math.ceil(budget / args.m) + 1)  # what fixed-size and OTM will ask for
        whiten_features(cand_path, targ_path, wc, wt, method="cholesky", out_neighbors=wn, neighbors_k=k)
        x, t = load_features(cand_path).array, load_features(targ_path).array
        xw, tw = load_features(wc).array, load_features(wt).array
        nb = Neighbors.load(wn)
        t1 = time.perf_counter()
        sel = api.select("tarot", x, t, budget=budget, wfd_features=(xw, tw), neighbors=nb, evaluate=False)
        fixed = sel.indices
        t2 = time.perf_counter()
        sel = api.select("otm", x, t, n_folds=args.folds, wfd_features=(xw, tw), neighbors=nb, evaluate=False)
        otm = sel.indices
    else:
        x, t = np.load(cand_path), np.load(targ_path)
        budget = round(args.ratio * len(x))
        xw, tw = sf_whiten(x, t)
        t1 = time.perf_counter()
        fixed = sf_fixed(xw, tw, budget)
        t2 = time.perf_counter()
        otm = sf_otm(xw, tw, args.folds)
    t3 = time.perf_counter()
    out.update(whiten_s=t1 - t0, fixed_s=t2 - t1, otm_s=t3 - t2, total_s=t3 - t0, sort_s=SORT_S)
    np.save(os.path.join(args.out, f"{approach}_fixed.npy"), np.sort(fixed))
    np.save(os.path.join(args.out, f"{approach}_otm.npy"), np.sort(otm))
    return out


def run_child(approach: str, argv: list[str]) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        args = parse(argv)
        res = child(approach, args)
        with os.fdopen(w, "w") as fh:
            fh.write(json.dumps(res))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        payload = fh.read()
    _, status, usage = os.wait4(pid, 0)
    if status != 0 or not payload:
        raise SystemExit(f"{approach} child failed (status {status})")
    res = json.loads(payload)
    res["peak_rss_mib"] = usage.ru_maxrss / 1024
    return res


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--m", type=int, default=2_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "select"))
    p.add_argument("--data", default=None, help="folder for the generated feature files (default: OUT/data)")
    p.add_argument("--only", choices=["library", "straightforward"], default=None)
    p.add_argument("--quick", action="store_true", help="n=10000, m=500, d=128")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.m, args.d = 10_000, 500, 128
    if args.data is None:
        args.data = os.path.join(args.out, "data")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"n={args.n} m={args.m} d={args.d} ratio={args.ratio} folds={args.folds}, {os.cpu_count()} cores")
    approaches = [args.only] if args.only else ["library", "straightforward"]
    data_files(args)  # generated once, outside the timed children
    results = [run_child(a, argv) for a in approaches]  # fork before torch is imported here

    from tarot_select.distance import ot_distance
    from tarot_select.io import load_features
    from tarot_select.whiten import Whitener

    x, t = (load_features(p).array for p in data_files(args))
    w = Whitener("cholesky").fit(x, t)
    xw, tw = w.transform(x), w.transform(t)
    for res in results:
        for kind in ("fixed", "otm"):
            idx = np.load(os.path.join(args.out, f"{res['approach']}_{kind}.npy"))
            res[f"{kind}_size"] = len(idx)
            res[f"{kind}_ot"] = ot_distance(xw[idx], tw).value
    print(
        f"\n{'approach':<16}{'whiten s':>9}{'fixed s':>9}{'otm s':>9}{'total s':>9}{'peak MiB':>10}"
        f"{'fixed OT':>10}{'otm size':>9}{'otm OT':>9}"
    )
    for r in results:
        print(
            f"{r['approach']:<16}{r['whiten_s']:>9.1f}{r['fixed_s']:>9.1f}{r['otm_s']:>9.1f}{r['total_s']:>9.1f}"
            f"{r['peak_rss_mib']:>10.0f}{r['fixed_ot']:>10.4f}{r['otm_size']:>9d}{r['otm_ot']:>9.4f}"
        )
    if len(results) == 2:
        lib, sf = results
        shared = sf["total_s"] - sf["sort_s"][-1]
        print(
            f"straightforward scores + full sorts: {', '.join(f'{v:.1f}' for v in sf['sort_s'])} s "
            f"(sharing one between the two methods would leave {shared:.1f} s: {shared / lib['total_s']:.1f}x)"
        )
        print(
            f"\nspeed-up {sf['total_s'] / lib['total_s']:.1f}x, peak memory {lib['peak_rss_mib'] / sf['peak_rss_mib']:.2f} of "
            f"straightforward; fixed-size OT {lib['fixed_ot']:.4f} vs {sf['fixed_ot']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
