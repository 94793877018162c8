r"""Whitened feature distance and the optimal-transport distance built on it.

WFD between whitened, unit-normalised features is the Euclidean distance

.. math:: c(x, y) = \lVert x - y\rVert = \sqrt{\max(0,\ \lVert x\rVert^2 + \lVert y\rVert^2 - 2x^\top y)},

which for unit vectors is :math:`\sqrt{\max(0, 2 - 2x^\top y)}`. The general form also
serves the "w/o norm" ablation.

The OT distance between a source set :math:`S` (masses :math:`a`) and a target set
:math:`T` (masses :math:`b`, uniform by default) is

.. math:: W(a, b) = \min_{P \in U(a,b)} \langle P, C\rangle
          = \max_{f_i + g_j \le C_{ij}} \langle a, f\rangle + \langle b, g\rangle ,

solved exactly with POT's network simplex (``ot.emd2``) when :math:`|S|\,|T|` is small,
and with the log-domain Sinkhorn of :func:`sinkhorn_log` (torch, ε-scaling, warm starts,
row blocks) when it is large. The dual potentials :math:`f` (on :math:`S`) and :math:`g`
(on :math:`T`) follow the convention above: :math:`f_i` is the marginal cost of putting
more mass on :math:`s_i`, so a *lower* potential marks a point whose mass lowers the OT
distance. For Sinkhorn the plan is
:math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)`, so :math:`f, g` tend to
the exact (Kantorovich) potentials as :math:`\varepsilon \to 0`, and the value reported
is the transport cost :math:`\langle P_\varepsilon, C\rangle` of the entropic plan.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ._validate import check_masses
from .errors import TarotInputError

__all__ = [
    "OT_METHODS",
    "OTResult",
    "SinkhornResult",
    "cost_matrix",
    "ot_distance",
    "pairwise_wfd",
    "sinkhorn_log",
    "wfd",
]

log = logging.getLogger(__name__)

OTMethod = Literal["auto", "exact", "sinkhorn"]
OT_METHODS: tuple[str, ...] = ("auto", "exact", "sinkhorn")
#: ``auto`` uses the exact solver up to this many cost-matrix entries. Beyond about 10⁶
#: entries the network simplex (≈0.3 s at 3·10⁶ on 2 cores, growing faster than linearly)
#: loses to :func:`sinkhorn_log` (see ``benchmarks/bench_select.py``).
MAX_EXACT_ENTRIES = 1_000_000
#: Cost-matrix entries per row block in :func:`sinkhorn_log` (bounds its temporaries).
BLOCK_ENTRIES = 1 << 22
#: Smallest marginal tolerance :func:`sinkhorn_log` asks of float32.
FLOAT32_TOL = 1e-5
#: Iterations without a 10 % drop of the marginal error after which Sinkhorn gives up.
STALL_ITERS = 50


def pairwise_wfd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""Pairwise distances :math:`C_{ij} = \lVert x_i - y_j\rVert`, shape (n, m), float64.

    Parameters
    ----------
    x : np.ndarray, shape (n, d)
    y : np.ndarray, shape (m, d)
    """
    x64 = np.asarray(x, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    sq = (x64 * x64).sum(1)[:, None] + (y64 * y64).sum(1)[None, :] - 2.0 * (x64 @ y64.T)
    return np.sqrt(np.maximum(sq, 0.0))


def wfd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""Row-wise WFD of paired rows, :math:`\lVert x_i - y_i\rVert`, shape (n,)."""
    diff = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return np.sqrt((diff * diff).sum(axis=-1))


def cost_matrix(
    x: np.ndarray, y: np.ndarray, dtype: torch.dtype = torch.float32, block_rows: int = 8192
) -> torch.Tensor:
    r"""WFD cost matrix :math:`C_{ij} = \lVert x_i - y_j\rVert` as a torch tensor, shape (n, m).

    Computed block by block with one matmul each (``x`` may be a memory map); the result
    is the only (n, m) array. Same formula as :func:`pairwise_wfd`, in ``dtype``.
    """
    yt = torch.as_tensor(np.array(y), dtype=dtype)  # a copy: y may be a read-only memory map
    ysq = (yt * yt).sum(1)
    out = torch.empty((x.shape[0], yt.shape[0]), dtype=dtype)
    for start in range(0, x.shape[0], block_rows):
        xb = torch.as_tensor(np.asarray(x[start : start + block_rows]), dtype=dtype)
        blk = out[start : start + xb.shape[0]]
        torch.matmul(xb, yt.T, out=blk)
        blk.mul_(-2.0).add_((xb * xb).sum(1, keepdim=True)).add_(ysq).clamp_(min=0.0).sqrt_()
    return out


@dataclass(frozen=True)
class SinkhornResult:
    r"""Result of :func:`sinkhorn_log`.

    Attributes
    ----------
    value : float
        :math:`\langle P, C\rangle` of the final plan.
    f : np.ndarray, shape (n,)
    g : np.ndarray, shape (m,)
        Dual potentials, float64 (see :func:`sinkhorn_log` for the convention).
    n_iter : int
        Sinkhorn iterations (one update of ``g`` and one of ``f``) run, annealing included.
    error : float
        L1 error of the target marginal, :math:`\sum_j |\sum_i P_{ij} - b_j|`.
    converged : bool
        ``error <= tol`` was reached at the target :math:`\varepsilon`.
    """

    value: float
    f: np.ndarray
    g: np.ndarray
    n_iter: int
    error: float
    converged: bool


def sinkhorn_log(
    cost: torch.Tensor,
    a: np.ndarray,
    b: np.ndarray,
    eps: float,
    *,
    g_init: np.ndarray | None = None,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-6,
    block_entries: int = BLOCK_ENTRIES,
) -> SinkhornResult:
    r"""Entropic OT by log-domain Sinkhorn with ε-scaling, in row blocks.

    Solves :math:`\min_{P\in U(a,b)} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\,\|\,a\otimes b)`
    through its dual potentials, with the plan
    :math:`P_{ij} = a_i b_j \exp\big((f_i + g_j - C_{ij})/\varepsilon\big)` and the updates

    .. math:: g_j \leftarrow -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon},\qquad
              f_i \leftarrow -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}.

    After each :math:`f` update the rows of :math:`P` sum to :math:`a` exactly; the
    stopping rule is the L1 error of the columns, which the next :math:`g` update gives
    for free: :math:`\sum_i P_{ij} = b_j e^{(g_j - g_j^{new})/\varepsilon}`.

    ε-scaling: a cold start anneals :math:`\varepsilon_k = \max(\varepsilon, C_{\max}\,
    \text{scaling}^k)`, one iteration per value, before iterating at :math:`\varepsilon`
    (far fewer iterations than starting at a small :math:`\varepsilon`). A warm start
    (``g_init``) skips the annealing.

    Parameters
    ----------
    cost : torch.Tensor, shape (n, m)
        Cost matrix; its dtype is the compute dtype (float32 halves time and memory).
    a, b : np.ndarray, shapes (n,), (m,)
        Masses, each summing to one.
    eps : float
        Absolute regularisation :math:`\varepsilon > 0`.
    g_init : np.ndarray, shape (m,), optional
        Initial target potentials.
    scaling : float
        Annealing factor in (0, 1).
    max_iter, tol
        Iteration limit and the tolerance on the target-marginal L1 error. In float32
        the tolerance is at least :data:`FLOAT32_TOL` (the rounding floor of the
        marginals is about :math:`10^{-6}` at ``reg = 0.01``), and once the error is
        below ``100 * FLOAT32_TOL`` the loop also stops, unconverged, when it has not
        fallen by 10 % in :data:`STALL_ITERS` iterations.
    block_entries : int
        Cost entries per row block, bounding the temporaries to a few times this.

    Returns
    -------
    SinkhornResult
    """
    if not eps > 0:
        raise TarotInputError(f"Sinkhorn regularisation must be > 0, got eps={eps!r}")
    if not 0 < scaling < 1:
        raise TarotInputError(f"scaling must be in (0, 1), got {scaling!r}")
    n, m = cost.shape
    dt = cost.dtype
    with np.errstate(divide="ignore"):
        log_a = torch.as_tensor(np.log(a), dtype=dt)
        log_b = torch.as_tensor(np.log(b), dtype=dt)
    rows = max(1, block_entries // max(m, 1))
    blocks = [(s, min(n, s + rows)) for s in range(0, n, rows)]

    # One scratch block for every log-sum-exp: allocating a fresh (rows, m) temporary per
    # block fragments the heap and can double the resident memory of a large problem.
    buf = torch.empty((min(rows, n), m), dtype=dt)

    def lse(z: torch.Tensor, dim: int) -> torch.Tensor:  # in place on z
        mx = z.amax(dim=dim, keepdim=True).clamp_(min=torch.finfo(dt).min)
        return z.sub_(mx).exp_().sum(dim=dim).log_().add_(mx.squeeze(dim))

    def update_g(f: torch.Tensor, e: float) -> torch.Tensor:
        row = (log_a + f / e)[:, None]
        parts = torch.empty((len(blocks), m), dtype=dt)
        for k, (s, t) in enumerate(blocks):
            parts[k] = lse(torch.add(row[s:t], cost[s:t], alpha=-1.0 / e, out=buf[: t - s]), 0)
        return -e * lse(parts, 0)

    def update_f(g: torch.Tensor, e: float) -> torch.Tensor:
        col = (log_b + g / e)[None, :]
        out = torch.empty(n, dtype=dt)
        for s, t in blocks:
            out[s:t] = lse(torch.add(col, cost[s:t], alpha=-1.0 / e, out=buf[: t - s]), 1)
        return out.mul_(-e)

    cmax = float(cost.max()) if cost.numel() else 0.0
    if g_init is not None:
        g = torch.as_tensor(np.asarray(g_init), dtype=dt).clone()
        schedule: list[float] = []
    else:
        g = torch.zeros(m, dtype=dt)
        schedule = []
        e = max(cmax, eps)
        while e > eps:
            schedule.append(e)
            e *= scaling
    f = update_f(g, schedule[0] if schedule else eps)
    n_iter = 0
    for e in schedule:  # annealing: one iteration per value
        g = update_g(f, e)
        f = update_f(g, e)
        n_iter += 1
    tol_eff = max(tol, FLOAT32_TOL) if dt == torch.float32 else tol
    b_t = torch.as_tensor(b, dtype=dt)
    err, best, since = math.inf, math.inf, 0
    converged = False
    while n_iter < max_iter:
        g_new = update_g(f, eps)
        err = float((b_t * torch.expm1((g - g_new) / eps).abs()).sum())
        g = g_new
        f = update_f(g, eps)
        n_iter += 1
        if err <= tol_eff:
            converged = True
            break
        if err < 0.9 * best:
            best, since = err, 0
        elif dt == torch.float32 and err < 100 * FLOAT32_TOL:
            since += 1
            if since >= STALL_ITERS:  # float32 rounding floor: more iterations cannot help
                break
    value = 0.0
    row, col = log_a + f / eps, (log_b + g / eps)[None, :]
    for s, t in blocks:
        logp = torch.add(col, cost[s:t], alpha=-1.0 / eps, out=buf[: t - s]).add_(row[s:t, None])
        value += float(logp.exp_().mul_(cost[s:t]).sum(dtype=torch.float64))
    log.debug("sinkhorn %dx%d eps=%.3g: %d iterations, marginal error %.2g", n, m, eps, n_iter, err)
    return SinkhornResult(value, f.double().numpy(), g.double().numpy(), n_iter, err, converged)


@dataclass(frozen=True)
class OTResult:
    """Result of :func:`ot_distance`.

    Attributes
    ----------
    value : float
        Transport cost :math:`\\langle P, C\\rangle` of the optimal (or entropic) plan.
    method : str
        ``"exact"`` or ``"sinkhorn"``: the solver that ran.
    potential_source : np.ndarray, shape (n,)
        Dual potential :math:`f` on the source points.
    potential_target : np.ndarray, shape (m,)
        Dual potential :math:`g` on the target points.
    reg : float
        Absolute entropic regularisation used (0 for exact).
    converged : bool
        False if the solver hit its iteration limit.
    """

    value: float
    method: str
    potential_source: np.ndarray
    potential_target: np.ndarray
    reg: float = 0.0
    converged: bool = True


def ot_distance(
    source: np.ndarray,
    target: np.ndarray,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    method: OTMethod = "auto",
    reg: float = 0.01,
    max_exact_entries: int = MAX_EXACT_ENTRIES,
    max_iter: int = 5000,
    tol: float = 1e-6,
    cost: np.ndarray | None = None,
    g_init: np.ndarray | None = None,
) -> OTResult:
    r"""OT distance between point clouds under the WFD cost, with dual potentials.

    Parameters
    ----------
    source : np.ndarray, shape (n, d)
        E.g. the selected candidates' features.
    target : np.ndarray, shape (m, d)
        The target features.
    a, b : np.ndarray, optional, shapes (n,), (m,)
        Masses (normalised to sum to one); uniform when omitted.
    method : {"auto", "exact", "sinkhorn"}
        ``auto`` is exact when :math:`nm \le` ``max_exact_entries``, Sinkhorn otherwise.
    reg : float
        Entropic regularisation relative to the largest cost:
        :math:`\varepsilon = \text{reg}\cdot\max_{ij} C_{ij}`.
    max_exact_entries : int
        Size limit of ``auto``'s exact branch (:data:`MAX_EXACT_ENTRIES`).
    cost : np.ndarray, shape (n, m), optional
        A precomputed cost matrix (then ``source``/``target`` only give the sizes).
    max_iter, tol
        Sinkhorn's iteration limit and its stopping rule, the L1 error of the target
        marginal (:func:`sinkhorn_log`).
    g_init : np.ndarray, shape (m,), optional
        Warm start for Sinkhorn: target potentials of a nearby problem (e.g. the previous
        round of OTM, same targets); the exact solver ignores it.

    Returns
    -------
    OTResult
    """
    if method not in OT_METHODS:
        raise TarotInputError(f"unknown OT method {method!r}; choose one of {', '.join(OT_METHODS)}")
    n, m = source.shape[0], target.shape[0]
    if n == 0 or m == 0:
        raise TarotInputError(f"OT distance needs non-empty sets, got {n} source and {m} target points")
    if source.shape[1] != target.shape[1]:
        raise TarotInputError(f"dimension mismatch: {source.shape[1]} vs {target.shape[1]}")
    a_ = check_masses(a, n, "source masses")
    b_ = check_masses(b, m, "target masses")
    if method == "auto":
        method = "exact" if n * m <= max_exact_entries else "sinkhorn"
    if method == "exact":
        import ot  # POT takes ~1 s to import; only the exact solver needs it

        c = pairwise_wfd(source, target) if cost is None else np.asarray(cost, dtype=np.float64)
        value, logd = ot.emd2(a_, b_, c, log=True, numItermax=max(100_000, 50 * n * m))
        converged = int(logd.get("result_code", 1)) == 1
        if not converged:
            log.warning("exact OT did not reach optimality: %s", logd.get("warning"))
        return OTResult(float(value), "exact", np.asarray(logd["u"]), np.asarray(logd["v"]), 0.0, converged)

    dtype = torch.float64 if n * m <= MAX_EXACT_ENTRIES else torch.float32
    if cost is None:
        ct = cost_matrix(source, target, dtype)
    else:
        ct = torch.as_tensor(np.asarray(cost), dtype=dtype)
    cmax = float(ct.max())
    eps = reg * cmax if cmax > 0 else reg
    if not eps > 0:
        raise TarotInputError(f"Sinkhorn regularisation must be > 0, got reg={reg!r}")
    res = sinkhorn_log(ct, a_, b_, eps, g_init=g_init, max_iter=max_iter, tol=tol)
    if not res.converged:
        log.warning(
            "Sinkhorn did not converge in %d iterations (eps=%.3g, marginal error %.2g)", max_iter, eps, res.error
        )
    return OTResult(res.value, "sinkhorn", res.f, res.g, eps, res.converged)
