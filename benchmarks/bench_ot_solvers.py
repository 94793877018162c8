"""OT solvers in the middle range, and how much the fixed-size fill depends on its potentials.

Part 1, solvers (default): whitened clustered features (``n`` candidates from 10 Gaussian
clusters, ``m`` targets from 3 of them, d = 32, ZCA-whitened together, unit rows), for
900 × 700, 2,000 × 1,000 and 5,000 × 5,000 (``--quick``: the first two). Per size:

* POT's exact ``ot.emd2`` on the float64 WFD cost matrix: wall and CPU seconds, the value;
* the library's ``ot_distance(method="auto")``: wall seconds, the solver it chose, the
  relative error against POT, its ``bias_bound``;
* the library's forced Sinkhorn (``reg = 0.01``): wall seconds, iterations, relative error,
  ``bias_bound`` (certified bound on |value - exact|), and the same solve without
  over-relaxation (``overrelax=False``, the former iteration) for comparison;
* the cost model's predictions (``distance.estimated_seconds``).

Part 2, fill sensitivity (``--fill``): ``select_fixed_size`` at 5 / 10 / 20 % on clustered
whitened features (1,500 candidates from 10 clusters, 300 targets from 3, d = 32; and a
digits-like 1,400 candidates × 100 targets, d = 256), ``--seeds`` data seeds each, with the
fill ranked by the exact network-simplex duals (``ot_method="exact"``, the former fill)
and by Sinkhorn potentials at ``reg`` = 0.05, 0.01 (the default) and 0.003. It reports
the Jaccard index between the selections, each selection's exact OT distance to the
target, and the smallest Jaccard between a selection and the one made from randomly
permuted candidates (mapped back; 1 = the fill does not depend on the order).

Torch's threads spin while they wait (OpenMP's default wait policy): on a 2-core machine
that other jobs keep busy, two threads make Sinkhorn 5-30 times slower than one. The
script prints ``OMP_WAIT_POLICY``; ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts)
avoids the collapse.

    python benchmarks/bench_ot_solvers.py [--quick] [--fill [--seeds 4] [--no-solvers]] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np


def clustered(n: int, m: int, d: int = 32, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ZCA-whitened, unit-normalised clustered candidates (k clusters) and targets (3 of them)."""
    from tarot_select.whiten import Whitener

    r = np.random.default_rng(seed)
    centres = 3.0 * r.normal(size=(k, d))
    cand = centres[r.integers(0, k, n)] + r.normal(size=(n, d))
    targ = centres[r.integers(0, 3, m)] + r.normal(size=(m, d))
    w = Whitener("zca").fit(cand, targ)
    return w.transform(cand), w.transform(targ)


def timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its wall and CPU seconds."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, time.process_time() - c


def solver_rows(sizes: list[tuple[int, int]]) -> list[dict]:
    import ot
    import torch

    from tarot_select.distance import cost_matrix, estimated_seconds, ot_distance, pairwise_wfd, sinkhorn_log

    rows = []
    for n, m in sizes:
        x, y = clustered(n, m)
        c = pairwise_wfd(x, y)
        a, b = np.full(n, 1 / n), np.full(m, 1 / m)
        exact, t_pot, cpu_pot = timed(ot.emd2, a, b, c, numItermax=max(100_000, 50 * n * m))
        exact = float(exact)
        auto, t_auto, _ = timed(ot_distance, x, y, method="auto")
        sink, t_sink, _ = timed(ot_distance, x, y, method="sinkhorn")
        ct = cost_matrix(x, y, torch.float64 if n * m <= 1_000_000 else torch.float32)
        eps = 0.01 * float(ct.max())
        plain, t_plain, _ = timed(sinkhorn_log, ct, a, b, eps, overrelax=False)
        row = {
            "n": n,
            "m": m,
            "exact": exact,
            "pot_s": t_pot,
            "pot_cpu_s": cpu_pot,
            "auto_s": t_auto,
            "auto_solver": auto.method,
            "auto_rel_err": (auto.value - exact) / exact,
            "auto_bias_bound": auto.bias_bound,
            "sinkhorn_s": t_sink,
            "sinkhorn_iter": sink.n_iter,
            "sinkhorn_rel_err": (sink.value - exact) / exact,
            "sinkhorn_bias_bound": sink.bias_bound,
            "sinkhorn_lower_ok": sink.lower_bound <= exact + 1e-9,
            "plain_s": t_plain,
            "plain_iter": plain.n_iter,
            "plain_rel_err": (plain.value - exact) / exact,
            "model_exact_s": estimated_seconds(n, m, "exact"),
            "model_sinkhorn_s": estimated_seconds(n, m, "sinkhorn"),
            "load": os.getloadavg()[0],
        }
        rows.append(row)
        print(
            f"{n:>6}x{m:<6}{t_pot:>8.2f}{cpu_pot:>8.2f}{t_auto:>8.2f} {auto.method:<9}{row['auto_rel_err']:>+10.1e}"
            f"{t_sink:>8.2f}{sink.n_iter:>6d}{row['sinkhorn_rel_err']:>+9.4f}{sink.bias_bound / exact:>9.4f}"
            f"{t_plain:>8.2f}{plain.n_iter:>6d}{row['model_exact_s']:>8.2f}{row['model_sinkhorn_s']:>8.2f}"
            f"{row['load']:>6.1f}",
            flush=True,
        )
    return rows


def jaccard(u: np.ndarray, v: np.ndarray) -> float:
    su, sv = set(u.tolist()), set(v.tolist())
    return len(su & sv) / len(su | sv)


FILLS = {
    "exact": {"ot_method": "exact"},
    "sk.05": {"ot_method": "sinkhorn", "reg": 0.05},
    "sk.01": {"ot_method": "sinkhorn", "reg": 0.01},
    "sk.003": {"ot_method": "sinkhorn", "reg": 0.003},
}
PAIRS = [("exact", "sk.01"), ("exact", "sk.003"), ("sk.01", "sk.003"), ("sk.01", "sk.05")]


def fill_rows(problems: list[tuple[str, int, int, int]], ratios: tuple[float, ...], seeds: int) -> list[dict]:
    from tarot_select.distance import ot_distance
    from tarot_select.select import select_fixed_size

    rows = []
    for name, n, m, d in problems:
        for seed in range(seeds):
            x, y = clustered(n, m, d=d, seed=seed)
            perm = np.random.default_rng(seed + 1).permutation(n)
            for ratio in ratios:
                budget = round(ratio * n)
                sel, dist, perm_j, info = {}, {}, {}, {}
                for key, kw in FILLS.items():
                    s = select_fixed_size(x, y, budget, **kw)
                    sel[key], info[key] = s.indices, s.info
                    dist[key] = ot_distance(x[s.indices], y, method="exact").value
                    sp = select_fixed_size(x[perm], y, budget, **kw)
                    perm_j[key] = jaccard(s.indices, perm[sp.indices])
                fill = info["sk.01"].get("fill", {})
                row = {
                    "problem": name,
                    "seed": seed,
                    "ratio": ratio,
                    "budget": budget,
                    "full_rounds": info["sk.01"]["full_rounds"],
                    "fill_kept": fill.get("kept", 0),
                    "fill_round": fill.get("round_size", 0),
                    **{f"J {u}/{v}": jaccard(sel[u], sel[v]) for u, v in PAIRS},
                    **{f"OT {k}": dist[k] for k in FILLS},
                    **{f"perm {k}": perm_j[k] for k in FILLS},
                }
                rows.append(row)
                print(
                    f"{name:<18}{seed:>5d}{ratio:>5.2f}{budget:>5d}{row['full_rounds']:>3d}"
                    f"{row['fill_kept']:>5d}/{row['fill_round']:<4d}"
                    + "".join(f"{row[f'J {u}/{v}']:>11.3f}" for u, v in PAIRS)
                    + "".join(f"{dist[k]:>8.4f}" for k in FILLS)
                    + f"{min(perm_j.values()):>6.3f}",
                    flush=True,
                )
        for ratio in ratios:
            rs = [r for r in rows if r["problem"] == name and r["ratio"] == ratio]
            print(
                f"{name:<18}{'mean':>5}{ratio:>5.2f}{'':>18}"
                + "".join(f"{np.mean([r[f'J {u}/{v}'] for r in rs]):>11.3f}" for u, v in PAIRS)
                + "".join(f"{np.mean([r[f'OT {k}'] for r in rs]):>8.4f}" for k in FILLS)
                + f"{min(min(r[f'perm {k}'] for k in FILLS) for r in rs):>6.3f}",
                flush=True,
            )
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="solver rows up to 2,000 x 1,000 only")
    p.add_argument("--fill", action="store_true", help="also the fill-sensitivity table")
    p.add_argument("--seeds", type=int, default=4, help="data seeds of the fill table")
    p.add_argument("--no-solvers", action="store_true", help="skip the solver table")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "out", "ot_solvers.json"))
    args = p.parse_args(argv)

    import torch

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    sizes = [(900, 700), (2000, 1000)] + ([] if args.quick else [(5000, 5000)])
    print(
        f"\n{'size':<13}{'pot s':>8}{'pot cpu':>8}{'auto s':>8} {'solver':<9}{'auto err':>10}"
        f"{'sk s':>8}{'sk it':>6}{'sk err':>9}{'sk bnd':>9}{'plain s':>8}{'it':>6}{'mod ex':>8}{'mod sk':>8}{'load':>6}"
    )
    out: dict = {"solvers": [] if args.no_solvers else solver_rows(sizes)}
    if args.fill:
        print(
            f"\n{'problem':<18}{'seed':>5}{'ratio':>5}{'B':>5}{'fr':>3}{'  fill':<10}"
            + "".join(
                f"{'J ' + u.replace('exact', 'ex').replace('sk', '') + '/' + v.replace('sk', ''):>11}" for u, v in PAIRS
            )
            + "".join(f"{'OT ' + k.replace('exact', 'ex').replace('sk', ''):>8}" for k in FILLS)
            + f"{'perm':>6}"
        )
        out["fill"] = fill_rows(
            [("clustered d=32", 1500, 300, 32), ("digits-like d=256", 1400, 100, 256)], (0.05, 0.1, 0.2), args.seeds
        )
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
