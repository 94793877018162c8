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

* ``released`` (with ``--reference-dir``): the paper's released code itself, from a local
  checkout of github.com/vita-epfl/TAROT (run from there, never copied): its
  ``WFDEstimator.get_wfd`` whitening (joint centring, covariance, Cholesky, fp16 products,
  the dense candidates × targets score matrix) on the same feature files, then its
  ``DataSelector.select_data`` with ``fixed_size`` and ``otm`` (GeomLoss Sinkhorn). Its
  optional imports (``wandb``, ``seaborn``) are stubbed in the child; it needs ``pip install
  geomloss``. Without the option that side is skipped, saying how to get it.

Every selection is then scored with one evaluator (the library's OT on the same whitened
features), so "OT distance no worse" compares like with like, and the overlap of each
selection with the library's is printed.

    python benchmarks/bench_select.py [--n 100000] [--m 2000] [--d 1024] [--ratio 0.1] [--folds 5]
    python benchmarks/bench_select.py --reference-dir ~/src/TAROT --quick   # against the released code
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


# ----------------------------------------------------------------- the released code
REFERENCE_HINT = (
    "released code: skipped; to compare with it, `git clone https://github.com/vita-epfl/TAROT`, "
    "`pip install geomloss` and pass --reference-dir <that checkout>"
)


def reference_problem(ref_dir: str | None) -> str | None:
    """Why the released code cannot run here (None if it can)."""
    if not ref_dir:
        return REFERENCE_HINT
    if not os.path.isfile(os.path.join(ref_dir, "tarot", "data_selector.py")):
        return f"released code: {ref_dir} has no tarot/data_selector.py (a checkout of vita-epfl/TAROT?)"
    try:
        import geomloss  # noqa: F401
    except ImportError:
        return "released code: its selector needs GeomLoss (`pip install geomloss`)"
    return None


class _Store:
    """The one-model gradient store the released ``WFDEstimator.get_wfd`` reads (its saver)."""

    def __init__(self, cand: np.ndarray, targ: np.ndarray) -> None:
        self.current_store = {"candidate_grads": cand, "target_grads": targ}

    def load_current_store(self, model_id: str) -> None:
        pass


def released(args: argparse.Namespace, cand_path: str, targ_path: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The released code on the benchmark's files: its whitening and scores, then its fixed-size
    and OTM selections. Returns (fixed, otm, seconds after whitening, seconds after fixed-size)."""
    import types

    for name in ("wandb", "seaborn"):  # imported at module level, unused by these paths
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, os.path.abspath(args.reference_dir))
    import contextlib
    import io
    import tempfile

    import torch
    from tarot.data_selector import DataSelector
    from tarot.wfd_estimator import WFDEstimator

    est = WFDEstimator.__new__(WFDEstimator)  # only get_wfd runs: no model, no projector
    est.save_dir = tempfile.mkdtemp(dir=args.out)
    os.mkdir(os.path.join(est.save_dir, "0"))
    est.saver = _Store(np.load(cand_path), np.load(targ_path))
    est.device, est.dtype = "cpu", torch.float32
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        scores, g, g_target = est.get_wfd()
    t1 = time.perf_counter()
    cfg = {
        "device": "cpu",
        "selection_method": "fixed_size",
        "selection_ratio": args.ratio,
        "k_fold_splits": args.folds,
        "merge_target_data": False,
        "data_weighting": False,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        fixed, _ = DataSelector(cfg).select_data(scores, g, g_target)
    t2 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        otm, _ = DataSelector({**cfg, "selection_method": "otm"}).select_data(scores, g, g_target)
    return np.asarray(fixed), np.asarray(otm), t1, t2


# ----------------------------------------------------------------- children
def child(approach: str, args: argparse.Namespace) -> dict:
    cand_path, targ_path = data_files(args)
    out: dict = {"approach": approach}
    t0 = time.perf_counter()
    if approach == "released":
        fixed, otm, t1, t2 = released(args, cand_path, targ_path)
        t3 = time.perf_counter()
        out.update(whiten_s=t1 - t0, fixed_s=t2 - t1, otm_s=t3 - t2, total_s=t3 - t0, sort_s=[])
        np.save(os.path.join(args.out, f"{approach}_fixed.npy"), np.sort(fixed))
        np.save(os.path.join(args.out, f"{approach}_otm.npy"), np.sort(otm))
        return out
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
    p.add_argument("--only", choices=["library", "straightforward", "released"], default=None)
    p.add_argument("--reference-dir", default=None, help="checkout of github.com/vita-epfl/TAROT (the released code)")
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
    approaches = [args.only] if args.only else ["library", "straightforward", "released"]
    if "released" in approaches:
        problem = reference_problem(args.reference_dir)
        if problem is not None:
            print(problem)
            approaches.remove("released")
    if not approaches:
        return 2
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
    lib_sel = {}
    for res in results:
        if res["approach"] == "library":
            lib_sel = {k: np.load(os.path.join(args.out, f"library_{k}.npy")) for k in ("fixed", "otm")}
    for res in results:
        for kind in ("fixed", "otm"):
            idx = np.load(os.path.join(args.out, f"{res['approach']}_{kind}.npy"))
            ref = lib_sel.get(kind)
            res[f"{kind}_overlap"] = (
                len(np.intersect1d(idx, ref)) / max(len(idx), len(ref), 1) if ref is not None else float("nan")
            )
    print(
        f"\n{'approach':<16}{'whiten s':>9}{'fixed s':>9}{'otm s':>9}{'total s':>9}{'peak MiB':>10}"
        f"{'fixed OT':>10}{'otm size':>9}{'otm OT':>9}{'overlap fixed/otm':>19}"
    )
    for r in results:
        print(
            f"{r['approach']:<16}{r['whiten_s']:>9.1f}{r['fixed_s']:>9.1f}{r['otm_s']:>9.1f}{r['total_s']:>9.1f}"
            f"{r['peak_rss_mib']:>10.0f}{r['fixed_ot']:>10.4f}{r['otm_size']:>9d}{r['otm_ot']:>9.4f}"
            f"{r['fixed_overlap']:>10.3f}/{r['otm_overlap']:.3f}"
        )
    by = {r["approach"]: r for r in results}
    if "library" in by and "released" in by:
        lib, rel = by["library"], by["released"]
        print(
            f"\nagainst the released code: whitening {rel['whiten_s'] / lib['whiten_s']:.1f}x, fixed-size "
            f"{rel['fixed_s'] / lib['fixed_s']:.1f}x, OTM {rel['otm_s'] / lib['otm_s']:.1f}x, total "
            f"{rel['total_s'] / lib['total_s']:.1f}x faster; peak memory {lib['peak_rss_mib'] / rel['peak_rss_mib']:.2f} "
            f"of the released code's; OT distance fixed {lib['fixed_ot']:.4f} vs {rel['fixed_ot']:.4f}, "
            f"OTM {lib['otm_ot']:.4f} vs {rel['otm_ot']:.4f}"
        )
    results = [by[a] for a in ("library", "straightforward") if a in by]
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
