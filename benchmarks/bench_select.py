"""Selection benchmark: whitening + fixed-size TAROT, and whitening + OTM, against the paper's released code.

Same synthetic clustered features for every approach (``n`` candidates from 64 clusters,
``m`` targets from 8 of them, dimension ``d``), written once to ``.npy`` files (as the
pipeline's gather step leaves them). Each approach runs each case (``fixed``: 10 % fixed-size
selection; ``otm``: OTM with ``--folds`` folds) in its own forked child, whitening included,
so its peak memory (max RSS, from ``os.wait4``) and its times are its own. Times: ``wall``
from the child's start (imports included), ``in-process`` after the imports, split into
whitening (+ the neighbour pass) and the selection.

* ``library``: what the pipeline's whiten and select stages call.
  :func:`tarot_select.whiten.whiten_files` streams both files to WFD files and, in the same
  pass, finds every target's ``max(16, 2·ceil(budget/m)+1)`` nearest WFD candidates (exact);
  :func:`tarot_select.api.select` (``tarot`` or ``otm``, OTM folds on ``--workers``
  processes) reads the features as memory maps and starts from those lists. numpy, scipy
  and POT only: torch is never imported.
* ``released`` (with ``--reference-dir``): the paper's released code itself, from a local
  checkout of github.com/vita-epfl/TAROT (run from there, never copied): its
  ``WFDEstimator.get_wfd`` whitening (joint centring, covariance, Cholesky, fp16 products,
  the dense candidates × targets score matrix) on the same feature files, then its
  ``DataSelector.select_data`` with ``fixed_size`` or ``otm`` (GeomLoss Sinkhorn). Its
  optional imports (``wandb``, ``seaborn``) are stubbed in the child; it needs ``pip install
  geomloss``. Without the option that side is skipped, saying how to get it.
* ``straightforward`` (``--straightforward``, slow): the same algorithm as the library written
  the obvious way on arrays loaded into memory: numpy whitening, the dense score matrix, a
  full sort per target, POT's dense Sinkhorn for the fill and ``ot.emd2`` for OTM's rounds.

Every selection is then scored with one evaluator (the library's exact OT on the same
whitened features), and its overlap with the library's selection is printed. For each library
child, one line sets the three parts of its whitening pass (fit, transform + write, neighbour
search) against their BLAS floors: flops over the GFLOP/s of the same products measured here
right after the child (float64 Gram, float32 transform, float32 scores).

    python benchmarks/bench_select.py --reference-dir ~/src/TAROT --n 50000 --m 1000 --d 256 --folds 10
    python benchmarks/bench_select.py --reference-dir ~/src/TAROT --n 100000 --m 2000 --d 1024 --folds 10
    python benchmarks/bench_select.py --quick                     # 10 k x 500 x 128, library only
    python benchmarks/bench_select.py --n 1000000 --m 10000 --only library   # 1 M
    python benchmarks/bench_select.py --n 10000000 --m 10000 --dtype float16 --only library --methods fixed
                                                       # 10 M: 20 GB of features, 62 GB of disk, ~27 min
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
    """Write the benchmark's features to ``.npy`` files once (the pipeline's gather output).

    ``--dtype float16`` halves the files (the pipeline's gather step may store float16 too);
    rows are written through a file handle, so generating 20 GB needs no more memory than a
    chunk. The same seed gives the same values up to the final cast."""
    tag = f"n{args.n}_m{args.m}_d{args.d}" + ("" if args.dtype == "float32" else f"_{args.dtype}")
    cand, targ = (os.path.join(args.data, f"{tag}_{k}.npy") for k in ("candidates", "targets"))
    if not (os.path.exists(cand) and os.path.exists(targ)):
        os.makedirs(args.data, exist_ok=True)
        rng = np.random.default_rng(0)
        dtype = np.dtype(args.dtype)
        centres = 3.0 * rng.normal(size=(64, args.d)).astype(np.float32)
        with open(cand + ".tmp", "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (args.n, args.d)}
            )
            for start in range(0, args.n, 50_000):
                rows = min(50_000, args.n - start)
                block = centres[rng.integers(0, 64, rows)] + rng.standard_normal((rows, args.d), dtype=np.float32)
                fh.write(block.astype(dtype, copy=False).tobytes())
        os.replace(cand + ".tmp", cand)
        t = centres[rng.integers(0, 8, args.m)] + rng.standard_normal((args.m, args.d), dtype=np.float32)
        np.save(targ, t.astype(dtype, copy=False))
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
    import importlib.util

    # find_spec, not import: importing GeomLoss imports torch, and every child forked from
    # this process would start with it in memory
    if importlib.util.find_spec("geomloss") is None:
        return "released code: its selector needs GeomLoss (`pip install geomloss`)"
    return None


class _Store:
    """The one-model gradient store the released ``WFDEstimator.get_wfd`` reads (its saver)."""

    def __init__(self, cand: np.ndarray, targ: np.ndarray) -> None:
        self.current_store = {"candidate_grads": cand, "target_grads": targ}

    def load_current_store(self, model_id: str) -> None:
        pass


def released(
    args: argparse.Namespace, cand_path: str, targ_path: str, method: str
) -> tuple[np.ndarray | None, np.ndarray | None, float, float, float]:
    """The released code on the benchmark's files: its whitening and scores, then its fixed-size
    or OTM selection. Returns (fixed, otm, time after the imports, after whitening, after the selection)."""
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

    t_in = time.perf_counter()
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
    fixed = otm = None
    with contextlib.redirect_stdout(io.StringIO()):
        if method == "fixed":
            fixed, _ = DataSelector(cfg).select_data(scores, g, g_target)
        else:
            otm, _ = DataSelector({**cfg, "selection_method": "otm"}).select_data(scores, g, g_target)
    t2 = time.perf_counter()
    return fixed, otm, t_in, t1, t2


# ----------------------------------------------------------------- children
def kernel_rates(d: int, m: int, rows: int = 8192, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of the BLAS products the whitening pass is made of, best of ``repeats``, on
    blocks of its shapes: the float64 Gram product (``syrk``, n·d² flops), the float32
    transform (2·n·d²) and the float32 neighbour scores (2·n·m·d)."""
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((rows, d))
    x32 = x64.astype(np.float32)
    w32 = rng.standard_normal((d, d)).astype(np.float32)
    y32 = rng.standard_normal((m, d)).astype(np.float32)
    jobs = {
        "gram_f64": (lambda: x64.T @ x64, rows * d * d),
        "transform_f32": (lambda: x32 @ w32, 2 * rows * d * d),
        "neighbors_f32": (lambda: y32 @ x32.T, 2 * rows * m * d),
    }
    rates = {}
    for name, (fn, flops) in jobs.items():
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        rates[name] = flops / best / 1e9
    return rates


def floor_report(lib: dict, n: int, m: int, d: int) -> str:
    """Each part of the library's whitening pass against its BLAS floor at the rates measured
    in the same child: fit (float64 Gram of n + m rows), transform + write (float32 product,
    the write included), neighbour search (float32 scores)."""
    parts, rates = lib.get("whiten_parts_s"), lib.get("kernel_rates")
    if not parts or not rates:
        return ""
    floors = {
        "fit": (n + m) * d * d / (rates["gram_f64"] * 1e9),
        "transform": 2 * (n + m) * d * d / (rates["transform_f32"] * 1e9),
        "neighbors": 2 * n * m * d / (rates["neighbors_f32"] * 1e9),
    }
    took = {"fit": parts["fit"], "transform": parts["transform"] - parts["neighbors"], "neighbors": parts["neighbors"]}
    cells = ", ".join(f"{k} {took[k]:.2f} s / floor {floors[k]:.2f} s = {took[k] / floors[k]:.1f}x" for k in floors)
    return (
        f"{lib['method']}: library whitening pass against its BLAS floor ({cells}; measured "
        f"{rates['gram_f64']:.0f} GFLOP/s float64 Gram, {rates['transform_f32']:.0f} / "
        f"{rates['neighbors_f32']:.0f} GFLOP/s float32 transform / scores)"
    )


def child(approach: str, method: str, args: argparse.Namespace) -> dict:
    """One approach, one selection method, in this (forked) process: whitening (and the neighbour
    pass) then the selection. Times: ``wall_s`` from the child's start (imports included),
    ``in_process_s`` after the imports, split into ``whiten_s`` and ``select_s``."""
    cand_path, targ_path = data_files(args)
    out: dict = {"approach": approach, "method": method}
    t0 = time.perf_counter()
    budget = round(args.ratio * args.n)
    if approach == "released":
        fixed, otm, t_in, t1, t2 = released(args, cand_path, targ_path, method)
        sel = fixed if method == "fixed" else otm
    elif approach == "library":
        # The library as the pipeline's whiten and select stages call it: whiten_files streams
        # both files to WFD files (and the neighbour lists), selections read memory maps.
        # GeomLoss is installed for the released side only (the project does not depend on it);
        # POT imports it when present, and with it torch, so this child runs as without it.
        sys.modules["geomloss"] = None  # type: ignore[assignment]
        from tarot_select import api
        from tarot_select.io import load_features
        from tarot_select.knn import Neighbors
        from tarot_select.whiten import whiten_files

        t_in = time.perf_counter()
        wc, wt, wn = (os.path.join(args.out, f"wfd_{method}_{k}") for k in ("candidates.npy", "targets.npy", "nb.npz"))
        k = max(16, 2 * math.ceil(budget / args.m) + 1)  # what fixed-size and OTM will ask for
        done = whiten_files(cand_path, targ_path, wc, wt, method="cholesky", out_neighbors=wn, neighbors_k=k)
        out["whiten_parts_s"] = done.seconds
        x, t = load_features(cand_path).array, load_features(targ_path).array
        xw, tw = load_features(wc).array, load_features(wt).array
        nb = Neighbors.load(wn)
        t1 = time.perf_counter()
        if method == "fixed":
            sel = api.select("tarot", x, t, budget=budget, wfd_features=(xw, tw), neighbors=nb, evaluate=False).indices
        else:
            sel = api.select(
                "otm",
                x,
                t,
                n_folds=args.folds,
                wfd_features=(xw, tw),
                neighbors=nb,
                evaluate=False,
                workers=args.workers,
            ).indices
        t2 = time.perf_counter()
    else:
        x, t = np.load(cand_path), np.load(targ_path)
        t_in = time.perf_counter()
        xw, tw = sf_whiten(x, t)
        t1 = time.perf_counter()
        sel = sf_fixed(xw, tw, budget) if method == "fixed" else sf_otm(xw, tw, args.folds)
        t2 = time.perf_counter()
    out.update(wall_s=t2 - t0, in_process_s=t2 - t_in, whiten_s=t1 - t_in, select_s=t2 - t1, sort_s=SORT_S)
    out["torch_imported"] = "torch" in sys.modules
    np.save(os.path.join(args.out, f"{approach}_{method}.npy"), np.sort(np.asarray(sel)))
    return out


def run_child(approach: str, method: str, argv: list[str]) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        args = parse(argv)
        res = child(approach, method, args)
        with os.fdopen(w, "w") as fh:
            fh.write(json.dumps(res))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        payload = fh.read()
    _, status, usage = os.wait4(pid, 0)
    if status != 0 or not payload:
        raise SystemExit(f"{approach} {method} child failed (status {status})")
    res = json.loads(payload)
    res["peak_rss_mib"] = usage.ru_maxrss / 1024
    return res


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--m", type=int, default=2_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="of the generated features")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "select"))
    p.add_argument("--data", default=None, help="folder for the generated feature files (default: OUT/data)")
    p.add_argument("--only", choices=["library", "straightforward", "released"], default=None)
    p.add_argument("--methods", nargs="+", choices=["fixed", "otm"], default=["fixed", "otm"])
    p.add_argument("--straightforward", action="store_true", help="also run the straightforward version (slow)")
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument("--workers", type=int, default=2, help="library OTM: folds on this many processes at once")
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
    print(
        f"n={args.n} m={args.m} d={args.d} ratio={args.ratio} folds={args.folds}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    approaches = [args.only] if args.only else ["library", "released"] + (["straightforward"] * args.straightforward)
    if "released" in approaches:
        problem = reference_problem(args.reference_dir)
        if problem is not None:
            print(problem)
            approaches.remove("released")
    if not approaches:
        return 2
    data_files(args)  # generated once, outside the timed children
    methods = [m for m in ("fixed", "otm") if m in args.methods]
    results = []
    for m in methods:
        for a in approaches:
            results.append(run_child(a, m, argv))  # fork before torch is imported here
            if a == "library":  # BLAS rates right after the child, here (its peak memory stays its own)
                results[-1]["kernel_rates"] = kernel_rates(args.d, args.m)

    sel = {
        (r["approach"], r["method"]): np.load(os.path.join(args.out, f"{r['approach']}_{r['method']}.npy"))
        for r in results
    }
    # The evaluator whitens the whole pool in memory and solves OT between each selection and
    # the targets: skipped where that would not fit (the 10 M case: 41 GB of whitened rows).
    largest = max(len(idx) for idx in sel.values())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    evaluate = 4 * args.n * args.d < ram / 2 and largest * args.m <= 1 << 30
    if evaluate:
        from tarot_select.distance import ot_distance
        from tarot_select.io import load_features
        from tarot_select.whiten import Whitener

        x, t = (load_features(p).array for p in data_files(args))
        w = Whitener("cholesky").fit(x, t)
        xw, tw = w.transform(x), w.transform(t)
    else:
        print(f"not evaluated: whitening {args.n} x {args.d} rows in memory and OT of {largest} x {args.m} do not fit")
    for r in results:
        idx = sel[(r["approach"], r["method"])]
        r["size"] = len(idx)
        # one exact evaluator for every selection
        r["ot"] = ot_distance(xw[idx], tw).value if evaluate else float("nan")
        ref = sel.get(("library", r["method"]))
        r["overlap"] = len(np.intersect1d(idx, ref)) / max(len(idx), len(ref), 1) if ref is not None else float("nan")
    print(
        f"\n{'case':<10}{'approach':<16}{'wall s':>8}{'in-proc s':>10}{'whiten s':>9}{'select s':>9}{'peak MiB':>10}"
        f"{'size':>7}{'OT':>8}{'overlap':>8}"
    )
    for r in results:
        print(
            f"{r['method']:<10}{r['approach']:<16}{r['wall_s']:>8.1f}{r['in_process_s']:>10.2f}{r['whiten_s']:>9.2f}"
            f"{r['select_s']:>9.2f}{r['peak_rss_mib']:>10.0f}{r['size']:>7d}{r['ot']:>8.4f}{r['overlap']:>8.3f}"
        )
    by = {(r["approach"], r["method"]): r for r in results}
    for m in methods:
        lib, rel = by.get(("library", m)), by.get(("released", m))
        if lib:
            print(floor_report(lib, args.n, args.m, args.d))
        if lib and rel:
            print(
                f"{m}: against the released code {rel['wall_s'] / lib['wall_s']:.1f}x wall, "
                f"{rel['in_process_s'] / lib['in_process_s']:.1f}x in-process (whitening "
                f"{rel['whiten_s'] / lib['whiten_s']:.1f}x, selection {rel['select_s'] / lib['select_s']:.1f}x), "
                f"peak memory {lib['peak_rss_mib'] / rel['peak_rss_mib']:.2f} of its; OT {lib['ot']:.4f} vs {rel['ot']:.4f}"
            )
        sf = by.get(("straightforward", m))
        if lib and sf:
            print(
                f"{m}: against the straightforward version {sf['wall_s'] / lib['wall_s']:.1f}x wall, "
                f"peak memory {lib['peak_rss_mib'] / sf['peak_rss_mib']:.2f} of its"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
