r"""Whitened feature distance and the optimal-transport distance built on it.

WFD between whitened, unit-normalised features is the Euclidean distance

.. math:: c(x, y) = \lVert x - y\rVert = \sqrt{\max(0,\ \lVert x\rVert^2 + \lVert y\rVert^2 - 2x^\top y)},

which for unit vectors is :math:`\sqrt{\max(0, 2 - 2x^\top y)}`. The general form also
serves the "w/o norm" ablation.

The OT distance between a source set :math:`S` (masses :math:`a`) and a target set
:math:`T` (masses :math:`b`, uniform by default) is

.. math:: W(a, b) = \min_{P \in U(a,b)} \langle P, C\rangle
          = \max_{f_i + g_j \le C_{ij}} \langle a, f\rangle + \langle b, g\rangle ,

solved exactly with POT's network simplex (``ot.emd2``) or approximately with the
log-domain Sinkhorn of :func:`sinkhorn_log` (numpy, ε-scaling, adaptive over-relaxation,
warm starts, row blocks spread over threads). The dual potentials :math:`f` (on :math:`S`) and :math:`g`
(on :math:`T`) follow the convention above: :math:`f_i` is the marginal cost of putting
more mass on :math:`s_i`, so a *lower* potential marks a point whose mass lowers the OT
distance. For Sinkhorn the plan is
:math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)`, so :math:`f, g` tend to
the exact (Kantorovich) potentials as :math:`\varepsilon \to 0`, and the value reported
is the transport cost :math:`\langle P_\varepsilon, C\rangle` of the entropic plan.

Uniqueness of the potentials
    The exact duals are unique (up to :math:`f + c, g - c`) only when the optimal basis
    is non-degenerate. With uniform masses it rarely is: a support of the optimal plan
    with fewer than :math:`n + m - 1` entries splits into components whose relative
    offsets are free inside an interval, and the network simplex returns one end of it,
    chosen by pivoting order, hence by the order of the points. The entropic dual
    :math:`\max_{f,g}\langle a,f\rangle+\langle b,g\rangle-\varepsilon\sum_{ij}a_ib_j
    e^{(f_i+g_j-C_{ij})/\varepsilon}` is strictly concave modulo that one constant, so
    Sinkhorn's potentials are unique, and :math:`f` is the gradient of the smooth
    :math:`W_\varepsilon(a)`. Rankings by potential (selection fill, potential weights)
    use them (:mod:`tarot_select.select`).

Solver choice (``method="auto"``), by expected cost
    The exact solver is unbiased, while Sinkhorn at ``reg = 0.01`` reads 1–2 % high, and
    in the middle range it costs a few times more (measured on 2 cores, clustered whitened
    features: 0.12 s vs 0.06 s at 900 × 700, 0.35 s vs 0.10 s at 2,000 × 1,000, 11 s
    vs 1.0 s at 5,000 × 5,000, Sinkhorn in the kernel domain). :func:`estimated_seconds`
    models its CPU time as
    :math:`t_\text{exact} \approx` :data:`EXACT_SECONDS_1M` :math:`\cdot (nm/10^6)^{`
    :data:`EXACT_EXPONENT` :math:`}` and Sinkhorn's as
    :math:`t_\text{sk} \approx \kappa \cdot 10^{-9}\, nm\,
    k` with :math:`\kappa` = :data:`SINKHORN_KERNEL_NS_PER_ENTRY` up to
    :data:`KERNEL_MAX_ENTRIES` (kernel-domain iterations), :data:`SINKHORN_NS_PER_ENTRY`
    beyond (log domain), and :math:`k` = :data:`SINKHORN_ITERS` (cold) or
    :data:`SINKHORN_ITERS_WARM` iterations. ``auto`` (:func:`choose_solver`) is exact when the problem fits the
    exact solver's memory (:math:`nm \le` :data:`MAX_EXACT_ENTRIES`, about
    :data:`EXACT_BYTES_PER_ENTRY` bytes an entry: the float64 cost matrix, its
    temporaries and the network simplex) and its predicted time is at most
    :data:`EXACT_AFFORDABLE_SECONDS` or at most Sinkhorn's; Sinkhorn otherwise.
    ``benchmarks/bench_ot_solvers.py`` measures both sides.

Error bound of a Sinkhorn value (:attr:`OTResult.bias_bound`)
    Two certificates bracket the exact :math:`W`. From the potentials, the c-transforms
    :math:`g^c_j = \min_i (C_{ij} - f_i)` and :math:`f^{cc}_i = \min_j (C_{ij} - g^c_j)`
    are dual feasible, so :math:`L = \langle a, f^{cc}\rangle + \langle b, g^c\rangle \le W`.
    The plan :math:`P` has marginal L1 error :math:`\delta` (rows and columns); rounding
    it onto :math:`U(a,b)` moves at most :math:`2\delta` of mass (Altschuler, Weed &
    Rigollet 2017, Lemma 7), so :math:`W \le \langle P, C\rangle + 2\delta\, C_{\max}`.
    Hence

    .. math:: |\langle P, C\rangle - W| \le \max\big(\langle P, C\rangle - L,\ 2\delta\, C_{\max}\big)
              =: \text{bias\_bound}.

    For comparison, the a-priori entropic gap is
    :math:`0 \le \langle P_\varepsilon, C\rangle - W \le \varepsilon\,
    \mathrm{KL}(P^\star\|a\otimes b) \le \varepsilon \log\min(n, m)` (any coupling's
    mutual information is at most :math:`\min(H(a), H(b))`); the certificate is computed
    from the run and is usually several times tighter. An exact solve that reached
    optimality has ``bias_bound = 0``.

Warm-started exact problems on a few arcs
    OTM's rounds solve a problem close to the previous one, whose potentials
    (``potentials_init``) show where the new plan lives: the pairs of small reduced cost
    :math:`C_{ij} - f_i - g_j`. From :data:`ARCS_MIN_ENTRIES` entries on (uniform masses,
    POT >= 0.9.7), the network simplex runs on about :data:`ARCS_PER_ROW` such arcs a point
    plus a feasible staircase, and its duals are checked on every pair; violated pairs are
    added until none is left (:func:`_emd_on_arcs`). The certificate is LP duality, so the
    value is the exact optimum, not an approximation: the same trace as the dense solver to
    rounding (tested), in about 0.4 of the dense warm-started solve's time on OTM's rounds
    (four folds of the benchmark's 50 k pool on one thread: 2.5–2.6 s against 6.7 s),
    and with about 10 B an entry of temporaries (the reduced costs, the arc mask) instead of
    the dense network simplex's 60.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._validate import check_masses
from .errors import TarotInputError

__all__ = [
    "OT_METHODS",
    "OTResult",
    "SinkhornResult",
    "choose_solver",
    "cost_matrix",
    "dual_lower_bound",
    "estimated_seconds",
    "ot_distance",
    "pairwise_wfd",
    "sinkhorn_log",
    "wfd",
]

log = logging.getLogger(__name__)

OTMethod = Literal["auto", "exact", "sinkhorn"]
OT_METHODS: tuple[str, ...] = ("auto", "exact", "sinkhorn")
#: Largest problem (cost-matrix entries) ``auto`` gives the exact solver: its memory,
#: about :data:`EXACT_BYTES_PER_ENTRY` bytes an entry (≈1 GB here), and a predicted
#: ≈10 s of CPU (5,000 × 5,000 measured 11 s on clustered whitened features).
MAX_EXACT_ENTRIES = 25_000_000
#: Peak memory of the exact path per entry: float64 cost matrix (8 B), the temporaries
#: of :func:`pairwise_wfd` (16 B) and POT's network simplex (17 B, measured at 9·10⁶ and
#: 25·10⁶ entries).
EXACT_BYTES_PER_ENTRY = 41
#: Cost model of ``ot.emd2`` (single-threaded network simplex), CPU seconds at 10⁶
#: entries and the exponent of :math:`nm/10^6`; a least-squares fit to 0.2–25·10⁶ entries
#: of clustered whitened features (``benchmarks/bench_ot_solvers.py``). Harder inputs
#: (more degenerate, fewer clusters) take a few times longer.
EXACT_SECONDS_1M = 0.27
EXACT_EXPONENT = 1.11
#: Sinkhorn's cost per cost-matrix entry and iteration (one update of ``g`` and one of
#: ``f``), nanoseconds of CPU in float32 (1.5–1.7 ns of wall time with two threads on an
#: otherwise idle 2-core machine, 3 ns with one).
SINKHORN_NS_PER_ENTRY = 3.0
#: The same in the kernel domain (:func:`sinkhorn_log` up to :data:`KERNEL_MAX_ENTRIES`):
#: 0.47 ns of wall time per entry and iteration at 5,000 × 5,000 on 2 threads, annealing,
#: kernel builds and the final pass included (``benchmarks/bench_ot_solvers.py``, 2026-11-30).
SINKHORN_KERNEL_NS_PER_ENTRY = 1.0
#: Iterations of :func:`sinkhorn_log` at ``reg = 0.01`` from a cold start (annealing
#: included; 40–120 measured from 0.6 to 25·10⁶ entries) and from a warm start (OTM's
#: next round: median 52, as a new round changes the problem much).
SINKHORN_ITERS = 100
SINKHORN_ITERS_WARM = 50
#: ``auto`` stays exact while its predicted time (all of a caller's solves together) is
#: below this, even if Sinkhorn is predicted faster (the exact value has no entropic bias).
EXACT_AFFORDABLE_SECONDS = 30.0
#: Sinkhorn computes in float64 up to this many entries, in float32 beyond.
FLOAT64_MAX_ENTRIES = 1_000_000
#: Cost-matrix entries per row block in :func:`sinkhorn_log` (bounds its temporaries).
BLOCK_ENTRIES = 1 << 22
#: Smallest marginal tolerance :func:`sinkhorn_log` asks of float32.
FLOAT32_TOL = 1e-5
#: Largest problem (entries) whose Sinkhorn iterates at the target ε in the kernel domain
#: (:func:`sinkhorn_log`): a stored kernel of the cost matrix's size and dtype (256 MiB in
#: float32); larger problems iterate in the log domain on the cost matrix alone.
KERNEL_MAX_ENTRIES = 1 << 26
#: Drift :math:`\max|f - \hat f|/\varepsilon` (or of :math:`g`) at which the kernel is rebuilt
#: about the current potentials ("absorption"), per dtype: the scalings
#: :math:`e^{(f-\hat f)/\varepsilon}` stay far from overflow and underflow.
ABSORB_AT = {np.dtype(np.float32): 20.0, np.dtype(np.float64): 200.0}
#: Iterations without a 10 % drop of the marginal error after which Sinkhorn gives up.
STALL_ITERS = 50
#: Largest over-relaxation factor of :func:`sinkhorn_log` (convergence needs < 2).
OMEGA_MAX = 1.9
#: Iterations between two estimates of the convergence rate (over-relaxation).
OMEGA_WINDOW = 10
#: Smallest warm-started exact problem (entries) solved on a sparse set of arcs
#: (:func:`_emd_on_arcs`); smaller ones go to the dense network simplex.
ARCS_MIN_ENTRIES = 1 << 16
#: Arcs per source point in the first sparse problem (those of smallest reduced cost).
ARCS_PER_ROW = 8
#: Every source and target point of a sparse problem gets its pairs below its smallest
#: reduced cost over every ``ARCS_MIN``-th pair: about this many (at least one).
ARCS_MIN = 8
#: Sparse solves before :func:`_emd_on_arcs` gives up and the dense solver runs.
ARCS_MAX_SOLVES = 8


def estimated_seconds(n: int, m: int, method: str, *, warm_start: bool = False) -> float:
    r"""Predicted CPU seconds of one OT solve of an :math:`n \times m` problem.

    .. math:: t_\text{exact} = t_{1M}\,(nm/10^6)^{\alpha},\qquad
              t_\text{sinkhorn} = \kappa\, 10^{-9}\, nm\, k ,

    with :math:`t_{1M}` = :data:`EXACT_SECONDS_1M`, :math:`\alpha` =
    :data:`EXACT_EXPONENT`, :math:`\kappa` = :data:`SINKHORN_KERNEL_NS_PER_ENTRY` up to
    :data:`KERNEL_MAX_ENTRIES` entries (:data:`SINKHORN_NS_PER_ENTRY` beyond) and :math:`k`
    = :data:`SINKHORN_ITERS` (:data:`SINKHORN_ITERS_WARM` for a warm start). A model for
    choosing between solvers, not a promise: inputs and machine load move both by
    factors.

    Parameters
    ----------
    n, m : int
        Source and target sizes.
    method : {"exact", "sinkhorn"}
    warm_start : bool
        Sinkhorn starts from the potentials of a nearby problem.
    """
    entries = float(n) * float(m)
    if method == "exact":
        return EXACT_SECONDS_1M * (entries / 1e6) ** EXACT_EXPONENT
    if method == "sinkhorn":
        iters = SINKHORN_ITERS_WARM if warm_start else SINKHORN_ITERS
        per_entry = SINKHORN_KERNEL_NS_PER_ENTRY if entries <= KERNEL_MAX_ENTRIES else SINKHORN_NS_PER_ENTRY
        return per_entry * 1e-9 * entries * iters
    raise TarotInputError(f"no cost model for OT method {method!r}; choose exact or sinkhorn")


def choose_solver(
    n: int,
    m: int,
    *,
    warm_start: bool = False,
    solves: int = 1,
    max_exact_entries: int = MAX_EXACT_ENTRIES,
) -> Literal["exact", "sinkhorn"]:
    r"""The solver ``method="auto"`` runs for an :math:`n \times m` problem.

    Exact when it fits (:math:`nm \le` ``max_exact_entries``) and is affordable,

    .. math:: s\, t_\text{exact} \le \max\big(T,\ s\, t_\text{sinkhorn}\big),

    :math:`s` = ``solves`` problems of this size (OTM solves one per round and fold),
    :math:`T` = :data:`EXACT_AFFORDABLE_SECONDS`, the times from
    :func:`estimated_seconds`; Sinkhorn otherwise. With the measured constants a single
    solve is exact up to the memory bound (the exact solve of :data:`MAX_EXACT_ENTRIES`
    entries is predicted at about 10 s).

    Parameters
    ----------
    n, m : int
        Source and target sizes.
    warm_start : bool
        Sinkhorn would start from the potentials of a nearby problem.
    solves : int
        How many problems of this size the caller will solve with the same solver.
    max_exact_entries : int
        Memory bound of the exact solver, in cost-matrix entries.
    """
    if n * m > max_exact_entries:
        return "sinkhorn"
    t_exact = solves * estimated_seconds(n, m, "exact")
    t_sink = solves * estimated_seconds(n, m, "sinkhorn", warm_start=warm_start)
    return "exact" if t_exact <= max(EXACT_AFFORDABLE_SECONDS, t_sink) else "sinkhorn"


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


def _np_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype from a numpy or torch dtype (``torch.float32`` -> ``float32``)."""
    if type(dtype).__module__.startswith("torch"):
        return np.dtype(str(dtype).removeprefix("torch."))
    return np.dtype(dtype)


#: Threads for the row blocks of :func:`cost_matrix`, :func:`sinkhorn_log` and
#: :func:`dual_lower_bound` (numpy releases the GIL inside its loops).
THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: start a new pool there."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _map_blocks(fn: Callable[[int, int, int], Any], blocks: Sequence[tuple[int, int]]) -> list[Any]:
    """``[fn(worker, start, stop) ...]`` over row blocks, on :data:`THREADS` threads.

    ``worker`` (0 .. THREADS-1) picks a private scratch buffer; each worker takes every
    THREADS-th block, so results come back in block order.
    """
    global _POOL
    if THREADS == 1 or len(blocks) == 1:
        return [fn(0, s, t) for s, t in blocks]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="tarot-ot")

    def run(w: int) -> list[Any]:
        return [fn(w, s, t) for s, t in blocks[w::THREADS]]

    parts = list(_POOL.map(run, range(THREADS)))
    out: list[Any] = [None] * len(blocks)
    for w, res in enumerate(parts):
        out[w::THREADS] = res
    return out


#: Packages POT imports when they are installed, only for functions this library never calls
#: (``ot.lowrank``'s k-means and ``ot.gromov``'s clusterings: scikit-learn, which brings pandas;
#: ``ot.gromov``'s graph partitions: networkx; ``ot.bregman``'s GeomLoss wrapper, which brings
#: torch). POT imports each inside ``try``/``except ImportError`` and runs without it (its
#: minimal-dependency configuration). ``_import_pot(minimal=True)`` hides them.
POT_OPTIONAL_IMPORTS: tuple[str, ...] = ("sklearn", "networkx", "geomloss")

#: POT's switches for its array backends other than numpy (each imports its framework).
_POT_BACKEND_SWITCHES: tuple[str, ...] = (
    "POT_BACKEND_DISABLE_PYTORCH",
    "POT_BACKEND_DISABLE_JAX",
    "POT_BACKEND_DISABLE_CUPY",
    "POT_BACKEND_DISABLE_TENSORFLOW",
)


class _HiddenModules:
    """Import hook (``sys.meta_path``) under which ``import <name>`` of the given top-level
    packages and their submodules raises :class:`ModuleNotFoundError`, as if not installed.
    (A ``None`` in ``sys.modules`` would do the same, but scipy looks modules up there and
    takes ``None`` for a loaded one.)"""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden while importing POT)", name=fullname)


def _import_pot(minimal: bool = False) -> Any:
    """POT, imported on first use (only the exact solver needs it; it takes about a second).

    When torch is not loaded yet, POT is imported without its torch backend
    (``POT_BACKEND_DISABLE_PYTORCH``, set for the import only): otherwise importing POT
    imports torch, about 500 MiB of resident memory that nothing in this module uses.
    Code that wants POT's torch backend in the same process imports torch (or POT) first.

    ``minimal=True`` is for worker processes that only solve OT problems (OTM's forked fold
    workers): the import also runs without POT's other array backends and with
    :data:`POT_OPTIONAL_IMPORTS` hidden (those not loaded already), as POT runs where they are
    not installed. Measured on the benchmark's host: 73 MiB less resident memory (176 → 103 MiB
    after numpy and scipy) and 0.98 → 0.45 s. The hook is removed after the import; in that
    process POT keeps those optional features off (``ot.lowrank``'s k-means initialisation,
    ``ot.gromov``'s graph clusterings, ``ot.bregman``'s GeomLoss solvers). No effect when POT
    is loaded already.
    """
    import sys

    if "ot" in sys.modules or ("torch" in sys.modules and not minimal):
        import ot

        return ot
    switches = _POT_BACKEND_SWITCHES if minimal else _POT_BACKEND_SWITCHES[:1]
    if "torch" in sys.modules:  # minimal, but torch is here anyway: its backend costs nothing more
        switches = switches[1:]
    before = {key: os.environ.get(key) for key in switches}
    hook = _HiddenModules([name for name in POT_OPTIONAL_IMPORTS if name not in sys.modules]) if minimal else None
    os.environ.update({key: "1" for key in switches})
    if hook is not None:
        sys.meta_path.insert(0, hook)
    try:
        import ot
    finally:
        if hook is not None:
            sys.meta_path.remove(hook)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return ot


def _emd_warm_start_supported(ot: Any) -> bool:
    """Whether this POT's ``emd2`` takes ``potentials_init`` (a warm start of the network
    simplex, POT >= 0.9.7); older versions solve from scratch (same value, slower)."""
    import inspect

    try:
        return "potentials_init" in inspect.signature(ot.emd2).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C function without a signature
        return False


def _warm_start_potentials(c: np.ndarray, init: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    r"""Dual potentials ``(f, g)`` for every row of ``c`` from those of a smaller problem.

    ``init = (f_old, g)``: ``f_old`` covers the first ``len(f_old)`` rows (the previous
    round's selection), ``g`` every column. Each further row :math:`i` starts at the
    c-transform :math:`f_i = \min_j (C_{ij} - g_j)`, the largest value that keeps the pair
    dual feasible (:math:`f_i + g_j \le C_{ij}`).
    """
    f_old, g = (np.asarray(x, dtype=np.float64) for x in init)
    n, m = c.shape
    if g.shape != (m,) or f_old.ndim != 1 or len(f_old) > n:
        raise TarotInputError(
            f"warm-start potentials of shapes {f_old.shape}, {g.shape} do not fit a {n} x {m} problem"
        )
    f_new = (c[len(f_old) :] - g[None, :]).min(axis=1) if len(f_old) < n else np.empty(0)
    return np.concatenate([f_old, f_new]), g


def _emd_arcs_supported(ot: Any) -> bool:
    """Whether this POT's ``emd`` solves on a sparse cost matrix (POT >= 0.9.7)."""
    try:
        version = tuple(int(p) for p in str(ot.__version__).split(".")[:3] if p.isdigit())
    except AttributeError:  # pragma: no cover - POT always has a version
        return False
    return version >= (0, 9, 7)


def _staircase_arcs(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Arcs of the north-west-corner plan between ``n`` and ``m`` uniform masses.

    In units of :math:`1/(nm)`, source :math:`i` covers :math:`[im, (i+1)m)` and target
    :math:`j` covers :math:`[jn, (j+1)n)`; the plan moves each overlap, so these at most
    :math:`n + m - 1` arcs carry a feasible plan (integer arithmetic: exact).
    """
    cuts = np.union1d(np.arange(1, n, dtype=np.int64) * m, np.arange(1, m, dtype=np.int64) * n)
    starts = np.concatenate([np.zeros(1, dtype=np.int64), cuts])
    return starts // m, starts // n


def _emd_on_arcs(
    ot: Any, c: np.ndarray, f0: np.ndarray, g0: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, int] | None:
    r"""Exact OT between uniform masses on a sparse set of arcs, certified on all of them.

    Column generation: the network simplex (POT's ``emd`` on a sparse cost) solves the transport
    problem restricted to a set :math:`E` of arcs, and its duals :math:`(u, v)` are checked
    on every pair. If :math:`C_{ij} - u_i - v_j \ge -\tau` for all :math:`(i, j)` (:math:`\tau`
    = 10⁻¹¹ · (1 + max C)), :math:`(u, v)` is dual feasible for the whole problem and the
    restricted plan primal feasible with the same objective, so by LP duality it is optimal:
    the value is the dense solver's optimum (to rounding). Otherwise the violated pairs
    join :math:`E` and the problem is solved again.

    :math:`E` starts with the north-west-corner arcs (:func:`_staircase_arcs`: the restricted
    problem is always feasible) and the pairs of smallest reduced cost under the warm-start
    potentials :math:`(f_0, g_0)`: about :data:`ARCS_PER_ROW` per source point under one
    threshold (a strided sample's quantile), and about :data:`ARCS_MIN` more in every row and
    column (below its minimum over a strided subset), where a nearby problem's optimal plan
    lived. After a solve without a certificate, the same choice under the new duals joins
    too. On OTM's rounds (100–2,000 × 900 points, about 2 % of the pairs) it takes 1.7
    restricted solves a round on average.

    Returns ``(value, u, v, solves)``, or None when :data:`ARCS_MAX_SOLVES` restricted solves
    did not reach a certificate or the solver failed (the caller then solves densely).
    """
    from scipy.sparse import coo_matrix

    n, m = c.shape
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    tol = 1e-11 * (1.0 + max(float(c.max()), -float(c.min())))
    c_flat = c.reshape(-1)  # a view when c is contiguous (OTM's cost rows are)
    red = np.subtract(c, f0[:, None])
    red -= g0[None, :]
    step = max(1, red.size // 65536)
    sampled = -(-red.size // step)  # entries of red.ravel()[::step]
    q = min(sampled - 1, int(sampled * ARCS_PER_ROW / m))

    def smallest(red: np.ndarray) -> np.ndarray:
        # about ARCS_PER_ROW arcs a row under one threshold, and about ARCS_MIN in every row
        # and column: below the row's (column's) minimum over every ARCS_MIN-th entry
        sample = red.ravel()[::step]
        below = np.maximum(red[:, ::ARCS_MIN].min(axis=1), np.partition(sample, q)[q])
        arcs = red <= below[:, None]
        arcs |= red <= red[::ARCS_MIN].min(axis=0)[None, :]
        return arcs

    arcs = smallest(red)
    rows, cols = _staircase_arcs(n, m)
    arcs[rows, cols] = True
    for solves in range(1, ARCS_MAX_SOLVES + 1):
        flat = np.flatnonzero(arcs)  # with divmod, 4x faster than a 2-D nonzero
        i, j = np.divmod(flat, m)
        sparse = coo_matrix((c_flat[flat], (i, j)), shape=(n, m))
        # ot.emd, not ot.emd2: on a sparse cost, emd2 also maps the flow back onto the arcs
        # for its gradient, a Python loop over every arc (0.7 s of the benchmark's 4.5 s
        # for four 50 k folds); the value is the same solver's ``cost``
        _, logd = ot.emd(a, b, sparse, log=True, numItermax=max(100_000, 50 * len(i)))
        if int(logd.get("result_code", 0)) != 1:
            log.debug("sparse network simplex stopped (%s); solving densely", logd.get("warning"))
            return None
        u, v = np.asarray(logd["u"], dtype=np.float64), np.asarray(logd["v"], dtype=np.float64)
        np.subtract(c, u[:, None], out=red)
        violated = red < (v - tol)[None, :]  # C - u - v < -tol
        if violated.any():
            violated &= ~arcs
        if not violated.any():
            return float(logd["cost"]), u, v, solves
        red -= v[None, :]
        arcs |= violated
        arcs |= smallest(red)
    log.debug("no certificate after %d sparse solves; solving densely", ARCS_MAX_SOLVES)
    return None


def cost_matrix(x: np.ndarray, y: np.ndarray, dtype: Any = np.float32, block_rows: int = 8192) -> np.ndarray:
    r"""WFD cost matrix :math:`C_{ij} = \lVert x_i - y_j\rVert`, shape (n, m), in ``dtype``.

    Computed block by block with one matmul each (``x`` may be a memory map); the result
    is the only (n, m) array. Same formula as :func:`pairwise_wfd`.
    """
    dt = _np_dtype(dtype)
    yt = np.array(y, dtype=dt)  # a copy: y may be a read-only memory map
    ysq = np.einsum("ij,ij->i", yt, yt)[None, :]
    out = np.empty((x.shape[0], yt.shape[0]), dtype=dt)
    for start in range(0, x.shape[0], block_rows):
        xb = np.asarray(x[start : start + block_rows], dtype=dt)
        blk = out[start : start + xb.shape[0]]
        np.matmul(xb, yt.T, out=blk)
        blk *= -2.0
        blk += np.einsum("ij,ij->i", xb, xb)[:, None]
        blk += ysq
        np.maximum(blk, 0.0, out=blk)
        np.sqrt(blk, out=blk)
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
        L1 error of the target marginal, :math:`\sum_j |\sum_i P_{ij} - b_j|`, the
        stopping criterion (measured before the last iteration).
    converged : bool
        ``error`` reached the effective tolerance at the target :math:`\varepsilon`
        (``tol``; in float32 at least :data:`FLOAT32_TOL`).
    plan_error : float
        L1 error of both marginals of the returned plan,
        :math:`\sum_i|\sum_j P_{ij} - a_i| + \sum_j|\sum_i P_{ij} - b_j|`.
    omega : float
        Over-relaxation factor of the last iteration (1: plain Sinkhorn).
    """

    value: float
    f: np.ndarray
    g: np.ndarray
    n_iter: int
    error: float
    converged: bool
    plan_error: float = math.nan
    omega: float = 1.0


def _next_omega(omega: float, rate: float) -> float:
    r"""Over-relaxation factor from the observed per-iteration contraction ``rate``.

    Linearised at its fixed point, Sinkhorn's alternation is block Gauss-Seidel on a
    2-cyclic system, so Young's SOR theory applies: an iteration relaxed by
    :math:`\omega` contracts at :math:`r` with :math:`(r + \omega - 1)^2 = r\,\omega^2\mu^2`,
    :math:`\mu^2` being plain Sinkhorn's rate. Solving for :math:`\mu^2` and taking the
    optimum :math:`\omega^\star = 2 / (1 + \sqrt{1 - \mu^2})` (capped at
    :data:`OMEGA_MAX`). A rate :math:`\ge 1` halves :math:`\omega - 1`.
    """
    if not rate < 1.0:
        return 1.0 + (omega - 1.0) / 2.0
    mu2 = min(((rate + omega - 1.0) / omega) ** 2 / rate, 0.9999)
    return float(min(OMEGA_MAX, max(1.0, 2.0 / (1.0 + math.sqrt(1.0 - mu2)))))


def sinkhorn_log(
    cost: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    eps: float,
    *,
    g_init: np.ndarray | None = None,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-6,
    block_entries: int = BLOCK_ENTRIES,
    overrelax: bool = True,
    kernel_max_entries: int = KERNEL_MAX_ENTRIES,
) -> SinkhornResult:
    r"""Entropic OT by log-domain Sinkhorn with ε-scaling and over-relaxation, in row blocks.

    Solves :math:`\min_{P\in U(a,b)} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\,\|\,a\otimes b)`
    through its dual potentials, with the plan
    :math:`P_{ij} = a_i b_j \exp\big((f_i + g_j - C_{ij})/\varepsilon\big)` and the updates

    .. math:: g_j \leftarrow -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon},\qquad
              f_i \leftarrow -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}.

    After each plain :math:`f` update the rows of :math:`P` sum to :math:`a` exactly; the
    stopping rule is the L1 error of the columns, which the next :math:`g` update gives
    for free: :math:`\sum_i P_{ij} = b_j e^{(g_j - g_j^{new})/\varepsilon}`.

    ε-scaling: a cold start anneals :math:`\varepsilon_k = \max(\varepsilon, C_{\max}\,
    \text{scaling}^k)`, one iteration per value, before iterating at :math:`\varepsilon`
    (far fewer iterations than starting at a small :math:`\varepsilon`). A warm start
    (``g_init``) skips the annealing.

    Over-relaxation (``overrelax``): at :math:`\varepsilon` the updates become
    :math:`g \leftarrow g + \omega(g^{new} - g)`, :math:`f \leftarrow f + \omega(f^{new} - f)`
    (Thibault et al. 2021; Lehmann et al. 2022), with :math:`\omega` re-estimated every
    :data:`OMEGA_WINDOW` iterations from the observed contraction rate of the marginal
    error (:func:`_next_omega`, Young's optimal SOR factor), starting at 1. It cuts the
    iterations at small :math:`\varepsilon` 2–8 fold (plain Sinkhorn needs
    :math:`O(C_{\max}/\varepsilon)` of them); if the error ever exceeds 10 times its best
    value, :math:`\omega` falls back to 1. The fixed point, hence the result, is the same;
    the last :math:`f` is always a plain update (exact row sums).

    Kernel domain (problems up to ``kernel_max_entries``): at :math:`\varepsilon` the
    same updates are computed from a stored kernel
    :math:`K_{ij} = e^{(\hat f_i + \hat g_j - C_{ij})/\varepsilon}` about reference
    potentials :math:`\hat f, \hat g`:

    .. math:: g_j = \hat g_j - \varepsilon \log \big(K^\top (a \odot u)\big)_j,\qquad
              f_i = \hat f_i - \varepsilon \log \big(K (b \odot v)\big)_i,

    with :math:`u = e^{(f-\hat f)/\varepsilon}`, :math:`v = e^{(g-\hat g)/\varepsilon}`:
    one matrix-vector product per update instead of an exponential of every entry. When
    :math:`f` or :math:`g` drifts more than :data:`ABSORB_AT` ε from the reference, the
    kernel is rebuilt about the current potentials (absorption, Schmitzer 2019); an update
    that is still not finite after a rebuild (a kernel row or column underflowed) falls back
    to the log domain. The annealing uses one kernel per ε value (built instead of the
    log domain's two exponentiated passes). The iterates are the log-domain ones up to
    rounding.

    Parameters
    ----------
    cost : np.ndarray, shape (n, m)
        Cost matrix (a torch tensor is read as an array); its dtype is the compute dtype
        (float32 halves time and memory).
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
    overrelax : bool
        Adaptive over-relaxation at the target :math:`\varepsilon` (False: plain Sinkhorn).
    kernel_max_entries : int
        Largest problem iterated in the kernel domain (0: always the log domain).

    Returns
    -------
    SinkhornResult
    """
    if not eps > 0:
        raise TarotInputError(f"Sinkhorn regularisation must be > 0, got eps={eps!r}")
    if not 0 < scaling < 1:
        raise TarotInputError(f"scaling must be in (0, 1), got {scaling!r}")
    cost = np.asarray(cost)
    if cost.dtype not in (np.float32, np.float64):
        cost = cost.astype(np.float64)
    n, m = cost.shape
    dt = cost.dtype
    with np.errstate(divide="ignore"):
        log_a = np.log(np.asarray(a, dtype=np.float64)).astype(dt)
        log_b = np.log(np.asarray(b, dtype=np.float64)).astype(dt)
    rows = max(1, block_entries // max(m, 1))
    blocks = [(s, min(n, s + rows)) for s in range(0, n, rows)]
    lowest = np.finfo(dt).min

    # One scratch block per thread for every log-sum-exp: allocating a fresh (rows, m)
    # temporary per block fragments the heap and can double the resident memory of a large problem.
    bufs = [np.empty((min(rows, n), m), dtype=dt) for _ in range(min(THREADS, len(blocks)))]

    def lse(z: np.ndarray, axis: int) -> np.ndarray:  # in place on z
        mx = np.maximum(z.max(axis=axis, keepdims=True), lowest)
        z -= mx
        np.exp(z, out=z)
        return np.log(z.sum(axis=axis)) + mx.squeeze(axis)

    def scaled(w: int, s: int, t: int, inv_e: float) -> np.ndarray:
        z = bufs[w][: t - s]
        np.multiply(cost[s:t], -inv_e, out=z)
        return z

    def update_g(f: np.ndarray, e: float) -> np.ndarray:
        row = (log_a + f / e).astype(dt)[:, None]

        def part(w: int, s: int, t: int) -> np.ndarray:
            z = scaled(w, s, t, 1.0 / e)
            z += row[s:t]
            return lse(z, 0)

        parts = np.stack(_map_blocks(part, blocks))
        return (-e * lse(parts, 0)).astype(dt)

    def update_f(g: np.ndarray, e: float) -> np.ndarray:
        col = (log_b + g / e).astype(dt)[None, :]

        def part(w: int, s: int, t: int) -> np.ndarray:
            z = scaled(w, s, t, 1.0 / e)
            z += col
            return lse(z, 1)

        return (-e * np.concatenate(_map_blocks(part, blocks))).astype(dt)

    a_dt, b_dt = np.asarray(a, dtype=dt), np.asarray(b, dtype=dt)
    # the kernel ("K"), its reference potentials ("f", "g") and its regularisation ("e")
    kern: dict[str, Any] = {}
    kernel_on = [0 < n * m <= kernel_max_entries]  # off for good after an underflow or overflow

    def absorb(f: np.ndarray, g: np.ndarray, e: float) -> None:
        """(Re)build the kernel about (f, g) at e. A row or column that underflows to zeros
        shows as a non-finite update (log 0), which ``step_g`` / ``step_f`` catch."""
        k = kern.get("K")
        if k is None:
            k = np.empty((n, m), dtype=dt)
        col = (g / e).astype(dt)[None, :]
        row = (f / e).astype(dt)[:, None]

        def part(w: int, s: int, t: int) -> None:
            z = k[s:t]
            np.multiply(cost[s:t], -1.0 / e, out=z)
            z += col
            z += row[s:t]
            np.exp(z, out=z)

        with np.errstate(over="ignore"):
            _map_blocks(part, blocks)
        kern.update(K=k, f=f.copy(), g=g.copy(), e=e)

    def kernel_g(f: np.ndarray) -> np.ndarray:
        e = kern["e"]
        u = np.exp((f - kern["f"]) / e).astype(dt)
        with np.errstate(divide="ignore", over="ignore"):
            return (kern["g"] - e * np.log(kern["K"].T @ (a_dt * u))).astype(dt)

    def kernel_f(g: np.ndarray) -> np.ndarray:
        e = kern["e"]
        v = np.exp((g - kern["g"]) / e).astype(dt)
        with np.errstate(divide="ignore", over="ignore"):
            return (kern["f"] - e * np.log(kern["K"] @ (b_dt * v))).astype(dt)

    def usable(f: np.ndarray, g: np.ndarray, e: float) -> bool:
        """A kernel at e whose reference is within ABSORB_AT of (f, g), rebuilt if needed."""
        if not kernel_on[0]:
            return False
        if kern.get("e") == e:
            bound = ABSORB_AT.get(dt, 20.0) * e
            if np.abs(f - kern["f"]).max() <= bound and np.abs(g - kern["g"]).max() <= bound:
                return True
        absorb(f, g, e)
        return True

    def give_up(e: float) -> None:
        kernel_on[0] = False
        kern.clear()
        log.debug("sinkhorn: the kernel underflows or overflows at eps=%.3g; iterating in the log domain", e)

    def step(
        kernel_update: Callable[[np.ndarray], np.ndarray],
        log_update: Callable[[np.ndarray, float], np.ndarray],
        arg: np.ndarray,
        f: np.ndarray,
        g: np.ndarray,
        e: float,
    ) -> np.ndarray:
        """One potential's update at e from ``arg``, the other one (the current pair is
        (f, g)): kernel domain when a kernel is usable, else (or if it is not finite twice,
        the second time after a rebuild about the current potentials) the log domain."""
        for _ in range(2):
            if not usable(f, g, e):
                break
            out = kernel_update(arg)
            if np.isfinite(out).all():
                return out
            kern.pop("e", None)  # forces the rebuild
        else:
            give_up(e)  # the log domain from here on
        return log_update(arg, e)

    def step_g(f: np.ndarray, g: np.ndarray, e: float) -> np.ndarray:
        return step(kernel_g, update_g, f, f, g, e)

    def step_f(g: np.ndarray, f: np.ndarray, e: float) -> np.ndarray:
        return step(kernel_f, update_f, g, f, g, e)

    cmax = float(cost.max()) if cost.size else 0.0
    if g_init is not None:
        g = np.array(g_init, dtype=dt)
        schedule: list[float] = []
    else:
        g = np.zeros(m, dtype=dt)
        schedule = []
        e = max(cmax, eps)
        while e > eps:
            schedule.append(e)
            e *= scaling
    f = update_f(g, schedule[0] if schedule else eps)
    n_iter = 0
    for e in schedule:  # annealing: one iteration per value (one kernel per value)
        g = step_g(f, g, e)
        f = step_f(g, f, e)
        n_iter += 1
    tol_eff = max(tol, FLOAT32_TOL) if dt == np.float32 else tol
    b_arr = np.asarray(b, dtype=dt)
    err, best, since = math.inf, math.inf, 0
    converged = False
    omega, errs, last_estimate = 1.0, [], 0
    relaxed_f = False  # the current f is a relaxed (not a plain) update
    while n_iter < max_iter:
        g_new = step_g(f, g, eps)
        err = float((b_arr * np.abs(np.expm1((g - g_new) / eps))).sum())
        if err <= tol_eff or not math.isfinite(err):
            g = g_new
            f, relaxed_f = step_f(g, f, eps), False
            n_iter += 1
            converged = err <= tol_eff
            break
        if err < 0.9 * best:
            best, since = err, 0
        elif dt == np.float32 and err < 100 * FLOAT32_TOL:
            since += 1
            if since >= STALL_ITERS:  # float32 rounding floor: more iterations cannot help
                break
        if overrelax:
            errs.append(err)
            k = len(errs) - 1
            if omega > 1.0 and err > 10.0 * min(errs):
                omega, last_estimate = 1.0, k  # diverging: back to plain Sinkhorn
                log.debug("sinkhorn: over-relaxation diverged at iteration %d, omega reset to 1", n_iter)
            elif k - last_estimate >= OMEGA_WINDOW:
                omega = _next_omega(omega, (err / errs[k - OMEGA_WINDOW]) ** (1.0 / OMEGA_WINDOW))
                last_estimate = k
        if omega == 1.0:
            g = g_new
            f, relaxed_f = step_f(g, f, eps), False
        else:
            g = (g + omega * (g_new - g)).astype(dt)
            f_new = step_f(g, f, eps)
            f, relaxed_f = (f + omega * (f_new - f)).astype(dt), True
        n_iter += 1
    if relaxed_f:  # exact row sums for the returned plan
        f = step_f(g, f, eps)
    kern.clear()  # the kernel's memory goes before the plan's pass
    row = (log_a + f / eps).astype(dt)[:, None]
    col = (log_b + g / eps).astype(dt)[None, :]
    a64 = np.asarray(a, dtype=np.float64)

    def plan_part(w: int, s: int, t: int) -> tuple[np.ndarray, float, float]:
        p = scaled(w, s, t, 1.0 / eps)
        p += col
        p += row[s:t]
        np.exp(p, out=p)
        col_sum = p.sum(0, dtype=np.float64)
        row_err = float(np.abs(p.sum(1, dtype=np.float64) - a64[s:t]).sum())
        p *= cost[s:t]
        return col_sum, row_err, float(p.sum(dtype=np.float64))

    parts = _map_blocks(plan_part, blocks)
    col_sum = np.sum([c for c, _, _ in parts], axis=0)
    row_err = sum(r for _, r, _ in parts)
    value = sum(v for _, _, v in parts)
    plan_error = row_err + float(np.abs(col_sum - np.asarray(b, dtype=np.float64)).sum())
    log.debug("sinkhorn %dx%d eps=%.3g: %d iterations, marginal error %.2g, omega %.2f", n, m, eps, n_iter, err, omega)
    return SinkhornResult(
        float(value), f.astype(np.float64), g.astype(np.float64), n_iter, err, converged, plan_error, omega
    )


def dual_lower_bound(cost: np.ndarray, a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    r"""Certified lower bound on the exact OT value from any source potentials :math:`f`.

    .. math:: g^c_j = \min_i (C_{ij} - f_i),\qquad f^{cc}_i = \min_j (C_{ij} - g^c_j),\qquad
              L = \langle a, f^{cc}\rangle + \langle b, g^c\rangle \le W(a, b),

    since :math:`f^{cc}_i + g^c_j \le C_{ij}` (dual feasibility) for every pair. Two
    passes over the cost matrix in row blocks of :data:`BLOCK_ENTRIES`; sums in float64.

    Parameters
    ----------
    cost : np.ndarray, shape (n, m)
        (A torch tensor is read as an array.)
    a, b : np.ndarray, shapes (n,), (m,)
        Masses (summing to one).
    f : np.ndarray, shape (n,)
    """
    ct = np.asarray(cost)
    n, m = ct.shape
    rows = max(1, BLOCK_ENTRIES // max(m, 1))
    blocks = [(s, min(n, s + rows)) for s in range(0, n, rows)]
    f_t = np.asarray(f, dtype=ct.dtype)
    g_c = np.min(_map_blocks(lambda w, s, t: (ct[s:t] - f_t[s:t, None]).min(0), blocks), axis=0)
    f_cc = np.concatenate(_map_blocks(lambda w, s, t: (ct[s:t] - g_c[None, :]).min(1), blocks))
    return float(np.dot(a, f_cc.astype(np.float64)) + np.dot(b, g_c.astype(np.float64)))


@dataclass(frozen=True)
class OTResult:
    r"""Result of :func:`ot_distance`.

    Attributes
    ----------
    value : float
        Transport cost :math:`\langle P, C\rangle` of the optimal (or entropic) plan.
    method : str
        ``"exact"`` or ``"sinkhorn"``: the solver that ran.
    potential_source : np.ndarray, shape (n,)
        Dual potential :math:`f` on the source points.
    potential_target : np.ndarray, shape (m,)
        Dual potential :math:`g` on the target points.
    reg : float
        Absolute entropic regularisation :math:`\varepsilon` used (0 for exact).
    converged : bool
        False if the solver hit its iteration limit.
    bias_bound : float
        Upper bound on :math:`|\text{value} - W|`, :math:`W` the exact OT distance: 0 for
        an exact solve that reached optimality; for Sinkhorn
        :math:`\max(\text{value} - L,\ 2\delta C_{\max})` (module docstring).
    lower_bound : float
        Certified :math:`L \le W` (:func:`dual_lower_bound`); ``value`` for a converged
        exact solve.
    requested : str
        The method asked for (``"auto"``, ``"exact"`` or ``"sinkhorn"``).
    n_iter : int
        Sinkhorn iterations (0 for exact).
    marginal_error : float
        L1 marginal error of the plan behind ``value`` (0 for exact).
    """

    value: float
    method: str
    potential_source: np.ndarray
    potential_target: np.ndarray
    reg: float = 0.0
    converged: bool = True
    bias_bound: float = 0.0
    lower_bound: float = math.nan
    requested: str = ""
    n_iter: int = 0
    marginal_error: float = 0.0

    def summary(self) -> dict[str, float | int | str | bool]:
        """Solver, value and its error bound as a JSON-ready dict (for selection metadata)."""
        return {
            "value": float(self.value),
            "solver": self.method,
            "requested": self.requested,
            "reg": float(self.reg),
            "bias_bound": float(self.bias_bound),
            "lower_bound": float(self.lower_bound),
            "converged": bool(self.converged),
            "n_iter": int(self.n_iter),
            "marginal_error": float(self.marginal_error),
        }


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
    potentials_init: tuple[np.ndarray, np.ndarray] | None = None,
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
        ``auto`` picks by expected cost (:func:`choose_solver`): exact up to
        ``max_exact_entries`` entries (when affordable), Sinkhorn beyond.
    reg : float
        Entropic regularisation relative to the largest cost:
        :math:`\varepsilon = \text{reg}\cdot\max_{ij} C_{ij}`.
    max_exact_entries : int
        Largest :math:`nm` ``auto`` solves exactly (:data:`MAX_EXACT_ENTRIES`).
    cost : np.ndarray, shape (n, m), optional
        A precomputed cost matrix (then ``source``/``target`` only give the sizes).
    max_iter, tol
        Sinkhorn's iteration limit and its stopping rule, the L1 error of the target
        marginal (:func:`sinkhorn_log`).
    g_init : np.ndarray, shape (m,), optional
        Warm start for Sinkhorn: target potentials of a nearby problem (e.g. the previous
        round of OTM, same targets); the exact solver ignores it. ``auto`` counts a warm
        start in Sinkhorn's predicted cost.
    potentials_init : (np.ndarray, np.ndarray), optional
        Warm start for the exact solver: ``(f, g)``, the exact potentials of a nearby
        problem with the same targets, ``f`` covering the first ``len(f)`` source points
        (e.g. OTM's previous round; the rest start at the c-transform of ``g``). The network
        simplex starts its pivots from them (POT >= 0.9.7; older POT ignores it). The value
        is the same optimum; only the time changes. Sinkhorn ignores it.

    Returns
    -------
    OTResult
        With the solver that ran (``method``) and, for Sinkhorn, the certified bound
        ``bias_bound`` on :math:`|\text{value} - W|`.
    """
    if method not in OT_METHODS:
        raise TarotInputError(f"unknown OT method {method!r}; choose one of {', '.join(OT_METHODS)}")
    n, m = source.shape[0], target.shape[0]
    if n == 0 or m == 0:
        raise TarotInputError(f"OT distance needs non-empty sets, got {n} source and {m} target points")
    if source.shape[1] != target.shape[1]:
        raise TarotInputError(f"dimension mismatch: {source.shape[1]} vs {target.shape[1]}")
    if cost is not None and np.shape(cost) != (n, m):
        raise TarotInputError(f"cost matrix has shape {np.shape(cost)}, expected ({n}, {m})")
    a_ = check_masses(a, n, "source masses")
    b_ = check_masses(b, m, "target masses")
    requested = method
    if method == "auto":
        method = choose_solver(n, m, warm_start=g_init is not None, max_exact_entries=max_exact_entries)
    if method == "exact":
        ot = _import_pot()

        c = pairwise_wfd(source, target) if cost is None else np.asarray(cost, dtype=np.float64)
        init = None if potentials_init is None else _warm_start_potentials(c, potentials_init)
        if init is not None and a is None and b is None and n * m >= ARCS_MIN_ENTRIES and _emd_arcs_supported(ot):
            on_arcs = _emd_on_arcs(ot, c, *init)
            if on_arcs is not None:
                value_, u, v, _ = on_arcs
                return OTResult(value_, "exact", u, v, 0.0, True, 0.0, value_, requested)
        warm: dict[str, Any] = {}
        if init is not None and _emd_warm_start_supported(ot):
            warm["potentials_init"] = init
        value, logd = ot.emd2(a_, b_, c, log=True, numItermax=max(100_000, 50 * n * m), **warm)
        converged = int(logd.get("result_code", 1)) == 1
        u, v = np.asarray(logd["u"]), np.asarray(logd["v"])
        lower, bound = float(value), 0.0
        if not converged:
            log.warning("exact OT did not reach optimality: %s", logd.get("warning"))
            lower = dual_lower_bound(c, a_, b_, u)
            bound = max(float(value) - lower, 0.0)
        return OTResult(float(value), "exact", u, v, 0.0, converged, bound, lower, requested)

    dtype = np.float64 if n * m <= FLOAT64_MAX_ENTRIES else np.float32
    if cost is None:
        ct = cost_matrix(source, target, dtype)
    else:
        ct = np.asarray(cost, dtype=dtype)
    cmax = float(ct.max())
    eps = reg * cmax if cmax > 0 else reg
    if not eps > 0:
        raise TarotInputError(f"Sinkhorn regularisation must be > 0, got reg={reg!r}")
    res = sinkhorn_log(ct, a_, b_, eps, g_init=g_init, max_iter=max_iter, tol=tol)
    if not res.converged:
        log.warning(
            "Sinkhorn did not converge in %d iterations (eps=%.3g, marginal error %.2g)", max_iter, eps, res.error
        )
    lower = dual_lower_bound(ct, a_, b_, res.f)
    bound = max(res.value - lower, 2.0 * res.plan_error * cmax, 0.0)
    log.debug("sinkhorn OT %.6g, exact value in [%.6g, %.6g]", res.value, lower, res.value + 2 * res.plan_error * cmax)
    return OTResult(
        res.value, "sinkhorn", res.f, res.g, eps, res.converged, bound, lower, requested, res.n_iter, res.plan_error
    )
