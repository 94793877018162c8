"""Per-sample gradient featurization on CPU: TRAK-style, LESS-style, CountSketch and factored.

Model: ``ResNet9(width=64, arch="trak")`` (2.27 M parameters) in eval mode, random
32x32x3 inputs (pixel values 0..255) and random labels, cross-entropy loss, projection
dimension d = 4096. All approaches see the same inputs (the first samples of one fixed
set) in one run. Printed:

* the machine (CPU, cores, torch threads, torch version, load average) and a measured
  float32 GEMM peak (best of several large ``torch.matmul``);
* per approach: samples/s and the time split (gradients vs projection), and GFLOP/s
  achieved as a fraction of that peak where the work is GEMM-like;
* ratios of the factored path against the TRAK- and LESS-style paths;
* quality on the same 64 samples: the Gram matrix of the features against the Gram
  matrix of the exact per-sample gradients (relative Frobenius error, correlation of
  off-diagonal entries, ratio of squared norms, error of cosine similarities).

Approaches
----------
(i)   TRAK-style: ``per_sample_gradients(mode="vmap")`` on a batch, then a dense
      Rademacher projection whose matrix is regenerated block by block for every batch
      (``DenseProjector(cache_bytes=0)``, 512-row blocks). If ``trak`` (pip ``traker``)
      can be imported, its ``BasicProjector`` (Rademacher, 100-column blocks drawn with
      ``bernoulli_``) is timed on the same gradients as well.
(ii)  LESS-style: one backward pass per sample (``mode="loop"``), gradients projected in
      groups of 16 (LESS's ``project_interval``) with the same dense projector.
(iii) CountSketch: vmap gradients, then :class:`CountSketchProjector` (cached hash).
(iv)  Factored: :class:`FactoredGradientFeaturizer` (one batched forward + backward to
      the layer outputs, then per-layer Kronecker blocks); default sum layout with
      ``factor_dim=16``, plus variants (``factor_dim=32``, LoGra's concat layout, and
      ``proj_kind="countsketch"``: exact per-layer gradients from the same hooks by one
      batched matmul each, count-sketched).

Run ``python benchmarks/bench_featurize.py`` (about 5-8 minutes on 2 cores) or with
``--quick`` (about 1-2 minutes: fewer samples, dense projections timed on the first
chunks of the matrix and extrapolated linearly -- marked "extrapolated").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tarot_select.factored import FactoredGradientFeaturizer
from tarot_select.gradients import flatten_gradients, per_sample_gradients
from tarot_select.project import BLOCK_ROWS, CountSketchProjector, DenseProjector
from tarot_select.tasks.cifar10.task import ResNet9

DIM = 4096
BATCH = 64
LESS_INTERVAL = 16


def loss_fn(forward: Callable[..., Any], sample: Any) -> torch.Tensor:
    return F.cross_entropy(forward(sample[0]), sample[1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gemm_peak(quick: bool) -> tuple[float, dict[int, float]]:
    """Best float32 GFLOP/s of square ``torch.matmul`` over a few sizes."""
    out: dict[int, float] = {}
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = math.inf
        for _ in range(3 if quick else 6):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        out[n] = 2 * n**3 / best / 1e9
    return max(out.values()), out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t0


def dense_projection(
    proj: DenseProjector, flat: torch.Tensor, max_chunks: int | None
) -> tuple[torch.Tensor | None, float, bool]:
    """Run (or time the first ``max_chunks`` chunks of, and extrapolate) an uncached dense projection."""
    n_chunks = math.ceil(proj._n_blocks / proj.blocks_per_chunk)
    if max_chunks is None or max_chunks >= n_chunks:
        z, t = timed(lambda: proj.project(flat))
        return z, t, False
    out = torch.zeros((flat.shape[0], proj.dim))
    t0 = time.perf_counter()
    for c in range(max_chunks):
        first = c * proj.blocks_per_chunk
        last = min(first + proj.blocks_per_chunk, proj._n_blocks)
        r = proj._rows(first, last)
        lo = first * BLOCK_ROWS
        out.addmm_(flat[:, lo : lo + r.shape[0]], r)
    t = (time.perf_counter() - t0) * n_chunks / max_chunks
    return None, t, True


def trak_basic_projection(flat: torch.Tensor, max_blocks: int | None) -> tuple[float, bool, int] | None:
    """Time traker's BasicProjector on ``flat`` (None if ``trak`` is not importable)."""
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except Exception:  # noqa: BLE001 - optional dependency, any import failure means "skip"
        return None
    proj = BasicProjector(flat.shape[1], DIM, 0, ProjectionType.rademacher, torch.device("cpu"))
    n_blocks = proj.num_blocks
    if max_blocks is None or max_blocks >= n_blocks:
        _, t = timed(lambda: proj.project(flat, model_id=0))
        return t, False, n_blocks
    t0 = time.perf_counter()
    for ind in range(max_blocks):
        proj.generate_sketch_matrix(proj.generator_states[ind])
        flat @ proj.proj_matrix
    return (time.perf_counter() - t0) * n_blocks / max_blocks, True, n_blocks


def quality(z: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Gram-matrix agreement of features ``z`` with exact gradients (both (n, ·))."""
    z, g = z.double(), exact.double()
    k, kh = g @ g.T, z @ z.T
    iu = np.triu_indices(k.shape[0], 1)
    ratio = (torch.diag(kh) / torch.diag(k)).numpy()
    nk, nkh = torch.sqrt(torch.diag(k)), torch.sqrt(torch.diag(kh))
    cos, cos_h = k / torch.outer(nk, nk), kh / torch.outer(nkh, nkh)
    return {
        "gram_rel_err": float(torch.linalg.norm(kh - k) / torch.linalg.norm(k)),
        "offdiag_corr": float(np.corrcoef(kh.numpy()[iu], k.numpy()[iu])[0, 1]),
        "norm2_ratio_mean": float(ratio.mean()),
        "norm2_ratio_std": float(ratio.std()),
        "cos_abs_err": float((cos_h - cos).abs().numpy()[iu].mean()),
    }


def counted_flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples; dense projections extrapolated")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "out" / "bench_featurize.json")
    args = ap.parse_args()
    quick = args.quick
    t_start = time.perf_counter()

    torch.manual_seed(0)
    model = ResNet9(64, "trak").eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    n_fact_batches = 2 if quick else 4
    gen = torch.Generator().manual_seed(1)
    n_total = BATCH * n_fact_batches
    x_all = torch.randint(0, 256, (n_total, 3, 32, 32), generator=gen).float()
    y_all = torch.randint(0, 10, (n_total,), generator=gen)
    batch = (x_all[:BATCH], y_all[:BATCH])

    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg(),
        "quick": quick,
        "model": "ResNet9(width=64, arch='trak')",
        "n_params": n_params,
        "dim": DIM,
        "batch": BATCH,
    }
    peak, peaks = gemm_peak(quick)
    info["gemm_peak_gflops"] = peak
    info["gemm_by_size"] = peaks
    print(f"date         {info['date']}")
    print(f"machine      {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} threads")
    print(f"load avg     {' '.join(f'{v:.2f}' for v in info['load_avg_start'])} (1, 5, 15 min) at start")
    print(f"model        {info['model']}, {n_params:,} parameters; d = {DIM}; batch {BATCH}")
    print(
        f"GEMM peak    {peak:.1f} GFLOP/s float32 (matmul " + ", ".join(f"{n}: {v:.0f}" for n, v in peaks.items()) + ")"
    )

    # useful flops of a per-sample gradient: forward + backward (input and weight grads) of one sample
    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch[0]), batch[1], reduction="sum").backward()

    grad_flops = counted_flops(train_step) / BATCH
    model.zero_grad(set_to_none=True)

    rows: list[dict[str, Any]] = []

    def row(name: str, n: int, t_grad: float, t_proj: float, flops: float | None, note: str = "") -> dict[str, Any]:
        total = t_grad + t_proj
        r = {
            "approach": name,
            "samples_timed": n,
            "samples_per_s": n / total,
            "grad_s_per_sample": t_grad / n,
            "proj_s_per_sample": t_proj / n,
            "gflop_per_sample": None if flops is None else flops / 1e9,
            "gflops_achieved": None if flops is None else flops * n / total / 1e9,
            "note": note,
        }
        r["peak_fraction"] = None if flops is None else r["gflops_achieved"] / peak
        rows.append(r)
        return r

    # ---------------------------------------------------------------- (i) TRAK-style
    per_sample_gradients(model, loss_fn, (x_all[:4], y_all[:4]), names)  # warm-up
    grads, t_vmap = timed(lambda: per_sample_gradients(model, loss_fn, batch, names, mode="vmap"))
    exact = flatten_gradients(grads, names)
    del grads
    dense = DenseProjector(n_params, DIM, seed=0, kind="rademacher", cache_bytes=0)
    max_chunks = 2 if quick else None
    z_dense, t_dense, extrap = dense_projection(dense, exact, max_chunks)
    dense_flops = 2.0 * n_params * DIM
    row(
        "(i) TRAK-style: vmap + dense Rademacher (blocks regenerated)",
        BATCH,
        t_vmap,
        t_dense,
        grad_flops + dense_flops,
        "projection extrapolated" if extrap else "",
    )
    trak = trak_basic_projection(exact, 4 if quick else None)
    if trak is not None:
        t_trak, trak_extrap, trak_blocks = trak
        row(
            "(i') TRAK-style: vmap + traker BasicProjector",
            BATCH,
            t_vmap,
            t_trak,
            grad_flops + dense_flops,
            f"projection extrapolated from 4 of {trak_blocks} blocks" if trak_extrap else "",
        )

    # ---------------------------------------------------------------- (ii) LESS-style
    less_batch = (x_all[:LESS_INTERVAL], y_all[:LESS_INTERVAL])
    per_sample_gradients(model, loss_fn, (x_all[:2], y_all[:2]), names, mode="loop")  # warm-up
    less_grads, t_loop = timed(lambda: per_sample_gradients(model, loss_fn, less_batch, names, mode="loop"))
    less_flat = flatten_gradients(less_grads, names)
    del less_grads
    _, t_less_proj, extrap = dense_projection(dense, less_flat, max_chunks)
    row(
        f"(ii) LESS-style: per-sample backward + dense (groups of {LESS_INTERVAL})",
        LESS_INTERVAL,
        t_loop,
        t_less_proj,
        grad_flops + dense_flops,
        "projection extrapolated" if extrap else "",
    )
    del less_flat

    # ---------------------------------------------------------------- (iii) CountSketch
    cs = CountSketchProjector(n_params, DIM, seed=0)
    cs.project(exact[:2])  # builds the cached hash
    z_cs, t_cs = timed(lambda: cs.project(exact))
    row("(iii) CountSketch: vmap + index_add_", BATCH, t_vmap, t_cs, None)

    # ---------------------------------------------------------------- (iv) factored
    variants = [
        ("(iv) factored: sum layout, factor_dim=16 (default)", {}),
        ("(iv-b) factored: sum layout, factor_dim=32", {"factor_dim": 32}),
        ("(iv-c) factored: concat layout (LoGra, 1 block/layer)", {"layout": "concat"}),
        ("(iv-d) hooked exact layer grads + CountSketch", {"proj_kind": "countsketch"}),
    ]
    fact_quality: dict[str, dict[str, float]] = {}
    main_fz = None
    for label, kw in variants:
        fz = FactoredGradientFeaturizer(model, loss_fn, proj_dim=DIM, seed=0, **kw)
        main_fz = main_fz or fz
        fz.project_batch((x_all[:8], y_all[:8]))  # warm-up, builds factors
        t_cap = t_proj = 0.0
        z_first = None
        for b in range(n_fact_batches):
            xb = (x_all[b * BATCH : (b + 1) * BATCH], y_all[b * BATCH : (b + 1) * BATCH])
            t0 = time.perf_counter()
            n, calls = fz._capture(xb)  # batched forward + backward to the layer outputs
            t1 = time.perf_counter()
            z = fz._project(n, calls)  # Kronecker blocks
            t2 = time.perf_counter()
            t_cap, t_proj = t_cap + (t1 - t0), t_proj + (t2 - t1)
            if b == 0:
                z_first = z
            del calls
        with FlopCounterMode(display=False) as fc:
            fz.project_batch(batch)
        flops = fc.get_total_flops() / BATCH
        r = row(label, BATCH * n_fact_batches, t_cap, t_proj, flops, f"dim {fz.dim}")
        r["layers"] = len(fz.layers)
        fact_quality[label] = quality(z_first, exact)

    assert main_fz is not None
    cov = main_fz.n_params
    small = main_fz.small.n_params if main_fz.small else 0

    # ---------------------------------------------------------------- report
    print()
    print(
        f"{'approach':58s} {'n':>4s} {'samples/s':>10s} {'grad ms/smp':>11s} {'proj ms/smp':>11s} "
        f"{'GFLOP/smp':>9s} {'GFLOP/s':>8s} {'%peak':>6s}  note"
    )
    for r in rows:
        gf = "" if r["gflop_per_sample"] is None else f"{r['gflop_per_sample']:.2f}"
        ga = "" if r["gflops_achieved"] is None else f"{r['gflops_achieved']:.1f}"
        pf = "" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%"
        print(
            f"{r['approach']:58s} {r['samples_timed']:4d} {r['samples_per_s']:10.2f} "
            f"{1e3 * r['grad_s_per_sample']:11.1f} {1e3 * r['proj_s_per_sample']:11.1f} "
            f"{gf:>9s} {ga:>8s} {pf:>6s}  {r['note']}"
        )
    print("(ms/smp = milliseconds per sample; GFLOP/smp = useful flops per sample: forward+backward of the")
    print(" gradient (3x forward for vmap/loop) + 2*P*d for dense; counted by torch's FlopCounterMode for factored)")

    fact = rows[-len(variants)]
    traker_r = next((r for r in rows if r["approach"].startswith("(i') ")), None)
    trak_r = next(r for r in rows if r["approach"].startswith("(i) "))
    less_r = next(r for r in rows if r["approach"].startswith("(ii)"))
    print()
    print(f"factored (default) vs TRAK-style : {fact['samples_per_s'] / trak_r['samples_per_s']:8.1f}x  (target >= 5x)")
    if traker_r is not None:
        print(f"factored (default) vs traker     : {fact['samples_per_s'] / traker_r['samples_per_s']:8.1f}x")
    print(
        f"factored (default) vs LESS-style : {fact['samples_per_s'] / less_r['samples_per_s']:8.1f}x  (target >= 20x)"
    )
    cs_r = rows[-1]
    print(f"hooked CountSketch (iv-d) vs TRAK-style : {cs_r['samples_per_s'] / trak_r['samples_per_s']:8.1f}x")
    print(f"hooked CountSketch (iv-d) vs LESS-style : {cs_r['samples_per_s'] / less_r['samples_per_s']:8.1f}x")
    print(
        f"factored projection time / vmap per-sample-gradient time : "
        f"{fact['proj_s_per_sample'] / trak_r['grad_s_per_sample']:.2f}  (target <= 1)"
    )
    print(
        f"factored projection time / its own forward+backward time : "
        f"{fact['proj_s_per_sample'] / fact['grad_s_per_sample']:.2f}"
    )
    print(
        f"parameters covered by factored features: {cov:,} of {n_params:,} (100%): "
        f"{cov - small:,} in {len(main_fz.layers)} Kronecker layers, {small:,} batch-norm parameters projected densely"
    )

    print()
    print(f"quality on the same {BATCH} samples vs exact per-sample gradients (d = {DIM}):")
    print(f"{'features':58s} {'Gram rel.err':>12s} {'offdiag corr':>12s} {'|phi|^2/|g|^2':>16s} {'cos abs.err':>11s}")
    qual = {"dense Rademacher (TRAK/LESS projector)": quality(z_dense, exact) if z_dense is not None else None}
    qual["CountSketch"] = quality(z_cs, exact)
    qual.update(fact_quality)
    for name, q in qual.items():
        if q is None:
            print(f"{name:58s} (not computed: --quick extrapolates the dense projection)")
            continue
        print(
            f"{name:58s} {q['gram_rel_err']:12.4f} {q['offdiag_corr']:12.4f} "
            f"{q['norm2_ratio_mean']:9.3f}±{q['norm2_ratio_std']:.3f} {q['cos_abs_err']:11.4f}"
        )
    info["load_avg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - t_start
    print()
    print(f"load avg at end {' '.join(f'{v:.2f}' for v in info['load_avg_end'])}; wall time {info['wall_s']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"info": info, "rows": rows, "quality": qual}, indent=2, default=str))
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
