r"""OT-based selection: fixed-size selection and OT-distance minimisation (OTM).

Both grow a selection from the nearest candidates of the targets, rank by rank:
round :math:`r` adds the :math:`r`-th nearest candidate (WFD) of every target. This
exploits the sparsity of the OT plan, whose mass sits on targets' near neighbours.

Fixed-size selection (budget :math:`B`)
    Whole rounds are added while the union fits in :math:`B`. When the next round
    :math:`N` would overflow, the OT problem between :math:`S\cup N` (uniform masses) and
    the target is solved and the remaining :math:`B-|S|` slots go to the points of
    :math:`N` with the **smallest** dual potential :math:`f_i` (ties: lower candidate
    index first).

    Why smallest: with :math:`W(a) = \max_{f_i+g_j\le C_{ij}}\langle a,f\rangle+\langle b,g\rangle`,
    :math:`\partial W/\partial a_i = f_i` (up to the constant fixed by
    :math:`\sum_i a_i = 1`). Moving mass onto a point with a low potential lowers the OT
    distance; a high potential marks a point that is expensive to transport from. The
    paper's released code keeps the *largest* potentials (GeomLoss uses the same sign
    convention), which raises the distance; we follow the maths and test the direction.

    Which potentials: the entropic ones (Sinkhorn, :math:`\varepsilon = \text{reg}\cdot
    C_{\max}`), as in the paper. :math:`W` is piecewise linear in :math:`a`; where the
    optimal basis is degenerate (the rule with uniform masses: a plan supported on fewer
    than :math:`|S\cup N| + m - 1` pairs) it has no gradient, its subdifferential is the
    whole face of optimal duals, and :math:`f_i` of a point whose transport component is
    detached from the others' may lie anywhere in an interval. The network simplex
    returns one point of it, set by its pivoting rule, the order of the points and its
    final centring, and may tie points it cannot tell apart (then the candidate index
    decides): exact duals rank the fill arbitrarily. The entropic
    :math:`W_\varepsilon(a) = \max_{f,g}\langle a,f\rangle+\langle b,g\rangle-\varepsilon
    \sum_{ij}a_ib_je^{(f_i+g_j-C_{ij})/\varepsilon}` is smooth with the unique gradient
    :math:`\partial W_\varepsilon/\partial a_i = f_i` (envelope theorem; the penalty's
    derivative vanishes because the rows of :math:`P` sum to :math:`a`), and
    :math:`W_\varepsilon \to W` with its potentials tending to one point inside the
    optimal face as :math:`\varepsilon\to 0` (Cominetti & San Martín 1994): the fill ranks
    by a first-order model of the distance that does not depend on the candidates'
    order. ε-scaling reaches :math:`\varepsilon` through the solutions at larger
    :math:`\varepsilon`, which fix the directions the exact dual leaves free. ``ot_method=
    "exact"`` keeps the network-simplex duals (the former fill) as an ablation.

    Pools of pretraining size: the fill's OT has :math:`|S\cup N|\cdot m` entries (10¹⁰ for
    10 % of 10 M candidates and 10⁴ targets, a 40 GB cost matrix). Above
    :data:`FILL_MAX_ENTRIES` it keeps every point of :math:`N` and a seeded uniform sample of
    :math:`S`, each sampled point carrying the mass of :math:`|S|/\text{sample}` points
    (:math:`a_i = |S|/(|S\cup N|\cdot\text{sample})`; the round's points keep
    :math:`1/|S\cup N|`). The objective is then an unbiased Monte-Carlo estimate of the full
    problem's semi-dual :math:`\langle b, g\rangle + \sum_i a_i f_i(g)` (:math:`f_i(g)` the
    soft c-transform), so the target potentials :math:`g` and with them the round's
    :math:`f_i = \text{softmin}_j(C_{ij} - g_j)` estimate the full fill's. An approximation
    for large problems only (``info["fill"]["sampled"]``); below the bound the fill is exact
    as described above.

    Sensitivity (``benchmarks/bench_ot_solvers.py --fill``, ``benchmarks/README.md``;
    means over 4 seeds at 5 / 10 / 20 %): Jaccard between the exact-dual and the
    ``reg = 0.01`` fills 0.84 / 0.93 / 0.96 on clustered d = 32 features (1,500 × 300)
    and 0.72 / 0.81 / 0.95 on digits-like d = 256 ones (1,400 × 100); between
    ``reg = 0.01`` and ``0.003`` 0.89 / 0.95 / 0.98 and 0.74 / 0.84 / 0.96. The exact
    duals behave like small ε (Jaccard 0.93–0.98 with ``reg = 0.003``). Exact OT of the
    5 % selections: digits-like 1.2897 (exact duals) vs 1.2867 (``reg = 0.01``);
    clustered 0.9951 vs 0.9988, and 0.9598 with ``reg = 0.05``: the best ε depends on
    the spread of the costs.

OTM
    The target is split into :math:`K` folds (seeded). For each fold, the selection
    grows from the nearest neighbours of that fold's targets, and after each round the
    OT distance to the *other* folds' targets is measured. Growth stops as soon as the
    distance rises (``patience`` consecutive non-improving rounds) and the selection at
    the **minimum** is kept (the released code keeps the one after it). The union over
    folds is the selection; its size over the pool is the chosen ratio. All rounds use one
    solver (``auto``: :func:`~tarot_select.distance.choose_solver` for
    :data:`OTM_ROUNDS` rounds per fold of a held-out × held-out problem with a warm start:
    exact while all of them are predicted to take at most
    :data:`~tarot_select.distance.EXACT_AFFORDABLE_SECONDS`, or less than Sinkhorn, else
    Sinkhorn warm-started from the previous round's target potentials), and one
    nearest-neighbour search over all targets serves every fold.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ._validate import check_pair, resolve_budget
from .distance import OTMethod, choose_solver, ot_distance, pairwise_wfd
from .errors import TarotInputError
from .io import take_rows
from .knn import Neighbors, nearest_neighbors
from .result import Selection

__all__ = ["NeighborRanks", "select_fixed_size", "select_otm"]

log = logging.getLogger(__name__)

#: Rounds per fold that OTM's solver choice expects (its cost model counts all of them).
OTM_ROUNDS = 10

#: Largest fill problem, (selection + round) × targets entries, solved whole (2³⁰: its float32
#: cost matrix takes 4 GiB); beyond it the selection is sampled (module docstring).
FILL_MAX_ENTRIES = 1 << 30

#: Seed of the fill's sample of the selection (the same inputs always give the same indices).
FILL_SAMPLE_SEED = 0

#: Score entries (targets × candidate rows) per block of a selection's own neighbour search
#: (:class:`NeighborRanks`): 8 MiB of float32. OTM's forked workers each extend their lists
#: when a fold passes the whitening pass's ranks; with the whitening pass's 64 MiB blocks the
#: search peaked at 65 MiB traced on the benchmark's 50 k × 1 k pool, with these at 20 MiB.
#: Same lists whatever the block size, at the same speed there (0.43 s against 0.44–0.51 s,
#: one thread).
SEARCH_BLOCK_ENTRIES = 1 << 21


class NeighborRanks:
    """Nearest-neighbour ranks of each target, extended on demand.

    Starts from precomputed ``neighbors`` (e.g. written by the whitening stage) or
    computes the first ``k`` ranks with a streamed exact search and, when a rank beyond
    them is asked for, recomputes with ``growth`` times more (capped at the pool size),
    so the total cost stays within a small factor of knowing the final ``k`` up front.
    """

    def __init__(
        self,
        candidates: np.ndarray,
        targets: np.ndarray,
        k: int,
        growth: int = 4,
        block_rows: int = 8192,
        progress: bool = False,
        neighbors: Neighbors | None = None,
    ) -> None:
        self.candidates = candidates
        self.targets = targets
        self.n = candidates.shape[0]
        self.growth = growth
        self.block_rows = block_rows
        self.progress = progress
        self.searches = 0
        if neighbors is not None:
            self.neighbors = neighbors.check(self.n, targets.shape[0])
        else:
            self._compute(max(1, min(k, self.n)))

    def _compute(self, k: int) -> None:
        m = self.targets.shape[0]
        log.debug("computing %d nearest candidates for %d targets", k, m)
        self.searches += 1
        rows = max(256, min(self.block_rows, SEARCH_BLOCK_ENTRIES // max(1, m)))
        self.neighbors = nearest_neighbors(self.candidates, self.targets, k, block_rows=rows, progress=self.progress)

    def column(self, rank: int) -> np.ndarray:
        """Candidate indices at ``rank`` (0 = nearest) for every target, shape (m,)."""
        if not 0 <= rank < self.n:
            raise IndexError(f"rank {rank} outside [0, {self.n})")
        if rank >= self.neighbors.k:
            self._compute(min(self.n, max(rank + 1, self.neighbors.k * self.growth)))
        return self.neighbors.indices[:, rank]


def _new_in_round(column: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Unique candidates of a rank column not chosen yet (sorted)."""
    return np.unique(column[~chosen[column]])


def _fill_problem(
    order: list[np.ndarray], new: np.ndarray, m: int, max_entries: int
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """The fill's source points (the selection, then the round ``new``), their masses
    (``None``: uniform) and whether the selection was sampled to fit ``max_entries``."""
    chosen = np.concatenate(order) if order else np.empty(0, dtype=np.int64)
    total = len(chosen) + len(new)
    keep = max(0, max_entries // max(1, m) - len(new))
    if total * m <= max_entries or keep >= len(chosen):
        return np.concatenate((chosen, new)), None, False
    keep = max(keep, min(len(chosen), m))  # a sample no smaller than the target set
    sample = np.sort(np.random.default_rng(FILL_SAMPLE_SEED).choice(len(chosen), keep, replace=False))
    mass = np.concatenate((np.full(keep, len(chosen) / (total * keep)), np.full(len(new), 1.0 / total)))
    log.info(
        "fill: %d selected + %d round points x %d targets; solved with a sample of %d selected",
        len(chosen),
        len(new),
        m,
        keep,
    )
    return np.concatenate((chosen[sample], new)), mass, True


def select_fixed_size(
    candidates: np.ndarray,
    targets: np.ndarray,
    budget: int | None = None,
    ratio: float | None = None,
    *,
    ot_method: OTMethod = "auto",
    reg: float = 0.01,
    block_rows: int = 8192,
    progress: bool = False,
    neighbors: Neighbors | None = None,
    fill_max_entries: int = FILL_MAX_ENTRIES,
    check: bool = True,
) -> Selection:
    r"""TAROT fixed-size selection of exactly ``budget`` unique candidates.

    Parameters
    ----------
    candidates : np.ndarray, shape (n, d)
        Whitened, normalised candidate features.
    targets : np.ndarray, shape (m, d)
        Whitened, normalised target features (same whitening).
    budget, ratio
        Exactly one: the number of samples, or the fraction of the pool.
    ot_method : {"auto", "exact", "sinkhorn"}
        Potentials that rank the fill step: ``auto`` and ``sinkhorn`` use the entropic
        potentials (unique, see the module docstring); ``exact`` the network-simplex
        duals (not unique on degenerate problems: the fill may then depend on the
        candidates' order; an ablation).
    reg : float
        Sinkhorn's regularisation relative to the largest cost
        (:func:`~tarot_select.distance.ot_distance`).
    block_rows : int
        Candidate rows per block of the neighbour search.
    progress : bool
        A progress bar over the neighbour search.
    neighbors : Neighbors, optional
        Precomputed nearest candidates of the targets (same features); ranks beyond
        them are searched when needed. The selection is the same with or without.
    fill_max_entries : int
        Largest fill problem (points × targets) solved whole; beyond it the fill samples
        the selection so that the problem has about this many entries (module docstring).
    check : bool
        Scan both arrays for NaN/Inf first (False: the caller has, as :func:`~tarot_select.api.select`
        does; a scan reads the whole pool, 12 s for a 41 GB memory map).

    Returns
    -------
    Selection
        ``info`` holds ``full_rounds`` (ranks added whole) and, if the last round was
        cut, ``fill`` (its size, how many were kept, the potential range, and under
        ``ot`` the fill's OT solve: solver, value, ``bias_bound``, ... from
        :meth:`~tarot_select.distance.OTResult.summary`). The same inputs always give
        the same indices.
    """
    if check:
        check_pair(candidates, targets)
    n, m = candidates.shape[0], targets.shape[0]
    budget = resolve_budget(n, budget, ratio)
    t0 = time.perf_counter()
    ranks = NeighborRanks(
        candidates,
        targets,
        k=2 * math.ceil(budget / m) + 1,
        block_rows=block_rows,
        progress=progress,
        neighbors=neighbors,
    )
    t_knn = time.perf_counter() - t0
    chosen = np.zeros(n, dtype=bool)
    order: list[np.ndarray] = []
    count = 0
    rank = 0
    info: dict = {}
    t_fill = 0.0
    while count < budget:
        new = _new_in_round(ranks.column(rank), chosen)
        if count + len(new) <= budget:
            chosen[new] = True
            order.append(new)
            count += len(new)
            rank += 1
            continue
        need = budget - count
        t1 = time.perf_counter()
        # unique (entropic) potentials unless the exact duals are asked for (ablation)
        solver: OTMethod = "exact" if ot_method == "exact" else "sinkhorn"
        source, mass, sampled = _fill_problem(order, new, m, fill_max_entries)
        res = ot_distance(take_rows(candidates, source), targets, a=mass, method=solver, reg=reg)
        f_new = res.potential_source[len(source) - len(new) :]
        keep = np.lexsort((new, f_new))[:need]  # smallest potential first, ties to the lower index
        picked = new[keep]
        chosen[picked] = True
        order.append(picked)
        count += need
        t_fill = time.perf_counter() - t1
        info["fill"] = {
            "rank": rank,
            "round_size": len(new),
            "kept": int(need),
            "solver": res.method,
            "potential_kept_max": float(f_new[keep].max()),
            "potential_round_min": float(f_new.min()),
            "potential_round_max": float(f_new.max()),
            "ot": res.summary(),
        }
        if sampled:  # the selection before this fill, and how much of it the fill's OT saw
            info["fill"]["sampled"] = {
                "selection": count - need,
                "kept": len(source) - len(new),
                "seed": FILL_SAMPLE_SEED,
            }
    info["full_rounds"] = rank
    info["neighbor_searches"] = ranks.searches
    indices = np.concatenate(order).astype(np.int64)
    return Selection(
        indices=indices,
        method="tarot",
        n_candidates=n,
        budget=budget,
        timings={"knn": t_knn, "fill": t_fill, "total": time.perf_counter() - t0},
        info=info,
    )


def target_folds(m: int, n_folds: int, seed: int) -> list[np.ndarray]:
    """Split ``range(m)`` into ``n_folds`` seeded folds of (near) equal size."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise TarotInputError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_folds > m:
        raise TarotInputError(f"n_folds ({n_folds}) cannot exceed the number of targets ({m})")
    perm = np.random.default_rng(seed).permutation(m)
    return [np.sort(f) for f in np.array_split(perm, n_folds)]


@dataclass(frozen=True)
class _OtmState:
    """What every OTM fold reads (shared with forked workers, never copied)."""

    candidates: np.ndarray
    targets: np.ndarray
    ranks: NeighborRanks
    limit: int
    solver: OTMethod
    reg: float
    patience: int


def _grow_rows(buf: np.ndarray, used: int, need: int) -> np.ndarray:
    """``buf`` with room for ``need`` rows, its first ``used`` rows kept (capacity doubles)."""
    if need <= buf.shape[0]:
        return buf
    out = np.empty((max(need, 2 * buf.shape[0]), buf.shape[1]), dtype=buf.dtype)
    out[:used] = buf[:used]
    return out


def _otm_fold(state: _OtmState, fold: np.ndarray) -> tuple[np.ndarray, dict]:
    """One fold of OTM: grow from the fold's neighbours, measure against the other folds'
    targets after every round, stop after ``patience`` rounds without a new minimum.

    Exact rounds compute only the new points' cost rows (the selection only grows; the
    rows live in one buffer grown geometrically).
    Each round's OT starts from the previous round's potentials: Sinkhorn from its target
    potentials, the exact solver (POT >= 0.9.7) from both (the new rows at the c-transform),
    which also pick the few arcs it solves on before certifying the optimum on every pair
    (:mod:`tarot_select.distance`). An exact round's value is the same optimum either way;
    on the benchmark's 50 k pool the dense warm start halved the network simplex's time, and
    the sparse arcs took it from 15.4 s to 10.8 s on one process (now four folds take 2.5 s
    on sparse arcs against 6.7 s dense, one thread).

    Returns the kept candidates (the selection at the minimum) and the fold's record.
    """
    candidates, targets, ranks = state.candidates, state.targets, state.ranks
    n, m = candidates.shape[0], targets.shape[0]
    rest = np.setdiff1d(np.arange(m), fold)
    held_out = np.asarray(targets[rest])
    chosen = np.zeros(n, dtype=bool)
    order: list[np.ndarray] = []
    rows: list[np.ndarray] = []  # features of the selection, read once per round's new points
    exact = state.solver == "exact"
    cost = np.empty((0, held_out.shape[0]))  # exact rounds: the selection's cost rows (grown, never recomputed)
    size = 0
    trace: list[float] = []
    best, best_size, best_rank, since = math.inf, 0, -1, 0
    g_prev = None  # held-out potentials of the previous round: Sinkhorn's warm start
    fg_prev = None  # both exact potentials of the previous round: the network simplex's warm start
    bias = 0.0  # largest error bound of the trace's distances
    for rank in range(state.limit):
        new = _new_in_round(ranks.column(rank)[fold], chosen)
        if len(new) == 0:
            continue
        chosen[new] = True
        order.append(new)
        rows.append(take_rows(candidates, new))
        if exact:
            cost = _grow_rows(cost, size, size + len(new))
            cost[size : size + len(new)] = pairwise_wfd(rows[-1], held_out)
        size += len(new)
        res = ot_distance(
            np.concatenate(rows),
            held_out,
            method=state.solver,
            reg=state.reg,
            cost=cost[:size] if exact else None,
            g_init=g_prev,
            potentials_init=fg_prev,
        )
        g_prev = res.potential_target if res.method == "sinkhorn" else None
        # the selection only grows (new rows last): its rows keep their potentials
        fg_prev = (res.potential_source, res.potential_target) if res.method == "exact" else None
        dist = res.value
        bias = max(bias, res.bias_bound)
        trace.append(dist)
        if dist < best:
            best, best_size, best_rank, since = dist, size, rank, 0
        else:
            since += 1
            if since >= state.patience:
                break
    kept = np.concatenate(order)[:best_size]
    info = {"trace": trace, "best_rank": best_rank, "best_distance": best, "kept": int(best_size), "bias_bound": bias}
    return kept, info


_FORKED_STATE: _OtmState | None = None


def _otm_fold_in_worker(fold: np.ndarray) -> tuple[np.ndarray, dict]:
    if _FORKED_STATE is None:  # pragma: no cover - the parent sets it before forking
        raise RuntimeError("OTM worker started without the parent's state")
    return _otm_fold(_FORKED_STATE, fold)


def _blas_threads() -> int:
    """Threads of this process's largest BLAS / OpenMP pool (1 when none is loaded)."""
    from threadpoolctl import threadpool_info

    return max([int(p.get("num_threads") or 1) for p in threadpool_info()] + [1])


def _init_fold_worker(threads: int, import_pot: bool) -> None:
    """Set up a forked OTM worker: cap every BLAS / OpenMP pool at ``threads`` and, for exact
    rounds, import POT without its optional heavy imports (the worker only solves OT; see
    :func:`tarot_select.distance._import_pot`)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    if import_pot:
        from .distance import _import_pot

        try:
            _import_pot(minimal=True)
        except ImportError:  # pragma: no cover - POT is a dependency; a fold then reports it
            log.debug("POT could not be imported in an OTM worker", exc_info=True)


def _otm_folds_in_processes(state: _OtmState, folds: list[np.ndarray], workers: int) -> list[tuple[np.ndarray, dict]]:
    """The folds on ``workers`` forked processes, in fold order.

    The features (memory maps or arrays) and the neighbour lists reach the workers by
    ``fork``, not by pickling; each worker runs its folds exactly as the sequential loop
    does, so the selection is the same. Without ``fork`` (not Linux/macOS) the folds run here.

    Each worker's BLAS pools are capped at the parent's threads over ``workers`` (at least
    one): a fold alternates a small BLAS product (the new points' cost rows) with the network
    simplex (one thread), and a worker's idle BLAS threads spin after every product, taking
    the other workers' cores. Uncapped, two workers on two cores ran the benchmark's 50 k
    pool in 14.5 s against 15.4 s for one; capped, in 8.6 s.

    For exact rounds each worker imports POT once, before its first fold, without the
    packages POT imports only for functions a fold never calls (scikit-learn, networkx,
    GeomLoss): 73 MiB and half a second less per worker. The parent's POT, if it has one, is
    the workers' (``fork``), untouched.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    global _FORKED_STATE
    if "fork" not in mp.get_all_start_methods():
        return [_otm_fold(state, fold) for fold in folds]
    per_worker = max(1, _blas_threads() // workers)
    _FORKED_STATE = state
    try:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("fork"),
            initializer=_init_fold_worker,
            initargs=(per_worker, state.solver == "exact"),
        ) as pool:
            return list(pool.map(_otm_fold_in_worker, folds))
    finally:
        _FORKED_STATE = None


def select_otm(
    candidates: np.ndarray,
    targets: np.ndarray,
    *,
    n_folds: int = 10,
    seed: int = 0,
    patience: int = 1,
    max_rank: int | None = None,
    ot_method: OTMethod = "auto",
    reg: float = 0.01,
    block_rows: int = 8192,
    progress: bool = False,
    neighbors: Neighbors | None = None,
    workers: int = 1,
    check: bool = True,
) -> Selection:
    r"""OT-distance minimisation with K-fold cross-validation on the target.

    Parameters
    ----------
    candidates : np.ndarray, shape (n, d)
    targets : np.ndarray, shape (m, d)
    n_folds : int
        :math:`K`; fold :math:`k` drives the selection, the other folds measure it.
    seed : int
        Seeds the fold split.
    patience : int
        Rounds without a new minimum before a fold stops (1: stop at the first rise).
    max_rank : int, optional
        Upper bound on neighbour ranks per fold (default: the pool size).
    ot_method : {"auto", "exact", "sinkhorn"}
        The one solver of every round of every fold (so that a trace compares like with
        like); ``auto`` asks :func:`~tarot_select.distance.choose_solver` about
        :data:`OTM_ROUNDS` warm-started rounds per fold of a held-out-sized selection.
    reg : float
        Sinkhorn's regularisation relative to the largest cost.
    block_rows : int
        Candidate rows per block of the neighbour search.
    progress : bool
        A progress bar over the folds (in-process folds only) and the neighbour search.
    neighbors : Neighbors, optional
        Precomputed nearest candidates of all targets, as for :func:`select_fixed_size`.
    workers : int
        Folds run on this many forked processes at once (1: in this process). The folds
        are independent, so the selection is the same; only the time changes.
    check : bool
        As for :func:`select_fixed_size`.

    Returns
    -------
    Selection
        ``chosen_ratio`` is the union's share of the pool; ``info["solver"]`` is the OT
        solver of every trace; ``info["folds"]`` lists, per fold, the OT trace, the best
        rank, the size kept and ``bias_bound``, the largest bound on
        :math:`|\text{distance} - W|` over the trace (0 for exact).
    """
    if check:
        check_pair(candidates, targets)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise TarotInputError(f"patience must be an integer >= 1, got {patience!r}")
    n, m = candidates.shape[0], targets.shape[0]
    folds = target_folds(m, n_folds, seed)
    limit = n if max_rank is None else max(1, min(int(max_rank), n))
    t0 = time.perf_counter()
    union = np.zeros(n, dtype=bool)
    fold_info = []
    trace_all: list[float] = []
    # One solver for every round, so that the trace compares like with like: "auto" asks
    # the cost model about OTM_ROUNDS rounds per fold of a selection as large as the
    # held-out set, warm-started.
    held_max = m - min(len(f) for f in folds)
    solver: OTMethod = ot_method
    if solver == "auto":
        solver = choose_solver(held_max, held_max, warm_start=True, solves=n_folds * OTM_ROUNDS)
    # One neighbour search for all targets serves every fold (a fold's ranks are columns of it).
    ranks = NeighborRanks(
        candidates, targets, k=min(limit, 16), block_rows=block_rows, progress=progress, neighbors=neighbors
    )
    t_knn = time.perf_counter() - t0
    state = _OtmState(candidates, targets, ranks, limit, solver, reg, patience)
    workers = max(1, min(int(workers), len(folds)))
    if workers == 1:
        results = [_otm_fold(state, fold) for fold in tqdm(folds, desc="OTM folds", disable=not progress)]
    else:
        results = _otm_folds_in_processes(state, folds, workers)
    for kept, info in results:
        union[kept] = True
        trace_all.extend(info["trace"])
        fold_info.append(info)
    indices = np.flatnonzero(union).astype(np.int64)
    return Selection(
        indices=indices,
        method="otm",
        n_candidates=n,
        budget=None,
        ot_trace=tuple(trace_all),
        chosen_ratio=len(indices) / n,
        timings={"knn": t_knn, "total": time.perf_counter() - t0},
        info={
            "n_folds": n_folds,
            "seed": seed,
            "patience": patience,
            "solver": solver,
            "neighbor_searches": ranks.searches,
            "folds": fold_info,
        },
    )
