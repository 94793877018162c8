r"""Influence Distillation (``infdist``, arXiv 2505.19051): landmark influence propagated by kernel regression.

The method scores every candidate :math:`i` of a pool of :math:`n` for every target
:math:`j` of :math:`m`, without computing the gradient features of the whole pool:

1. **Embeddings.** Every candidate has a cheap embedding :math:`e_i \in \mathbb R^{E}`
   (made elsewhere: Jacobian-vector products of the first transformer blocks along a
   few random tangents, projected). This module takes them as an ``(n, E)`` array.
2. **Landmarks.** A seeded uniform subset :math:`L` of the pool, :math:`|L| = l`
   (:func:`choose_landmarks`), whose exact gradient features :math:`g_i` are computed
   by the featurizer, in the same projection as the target features :math:`y_j`.
3. **Landmark influence** (first order, :func:`landmark_influence`). With checkpoint
   feature blocks :math:`t` and weights :math:`\eta_t` normalised to sum to one,

   .. math:: p_{ij} = \sum_t \eta_t \langle \hat g_{i,t}, \hat y_{j,t} \rangle,
             \qquad \hat v = v / \lVert v \rVert .

4. **Propagation** (:func:`propagate`), kernel ridge regression from the landmark
   embeddings to their influence. With the kernel :math:`k` (RBF
   :math:`k(a, b) = \exp(-\lVert a - b \rVert^2 / 2\sigma^2)`, :math:`\sigma` the median
   pairwise distance of at most 1000 seeded landmarks, :func:`median_bandwidth`; or
   linear :math:`k(a, b) = a^\top b`) and damping :math:`\lambda`,

   .. math:: \alpha = \bigl(K_{LL} + \lambda \,\overline{\operatorname{diag} K_{LL}}\, I\bigr)^{-1} P_L,
             \qquad S = K_{EL}\, \alpha \in \mathbb R^{n \times m},

   where :math:`K_{LL} = k(e_L, e_L)` and :math:`K_{EL} = k(e, e_L)`.
5. **Selection** (:func:`round_robin` or top-k). ``top_k`` keeps the budget highest
   mean scores :math:`\bar s_i = \frac1m \sum_j S_{ij}`; ``round_robin`` goes round the
   targets, in a fresh seeded random order each round, and lets each target take its
   highest-scoring candidate not yet selected until the budget is filled.

Only the **first-order** variant is implemented. The paper derives second-order,
Gradient-Descent- and Adam-optimal sample weights in its body, which is not available
here (only its abstract is, in ``shared/papers``); its public code implements only the
first-order, unweighted variant, and so do we. Adam-awareness comes from the landmark
features: the featurizer makes them Adam-preconditioned, as for LESS
(:class:`tarot_select.gradients.AdamPreconditioner`), while targets are plain gradients.

Our round-robin is exact (the same picks as scanning every target's full ranking at
every pick, ties to the lowest index) but costs one partial sort per target
(:math:`O(n + \text{budget} \log \text{budget})`) plus :math:`O(\text{budget})` short
vectorised scans, i.e. :math:`O(\text{budget} \cdot \log)` per pick, instead of the
reference's scan of all targets at each pick.

The module needs only numpy arrays (embeddings may be memory-mapped); it knows nothing
of models or tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.linalg
from scipy.spatial.distance import pdist

from ._validate import as_array, check_features, check_int, check_real, resolve_budget
from .baselines import _blocks, _unit, top_budget
from .errors import TarotInputError
from .io import release_rows, take_rows
from .result import Selection

__all__ = [
    "KERNELS",
    "STRATEGIES",
    "InfdistOptions",
    "Propagation",
    "choose_landmarks",
    "influence_distillation",
    "landmark_influence",
    "median_bandwidth",
    "propagate",
    "rbf_kernel",
    "round_robin",
]

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("round_robin", "top_k")
KERNELS: tuple[str, ...] = ("rbf", "linear")

_MIN_BANDWIDTH = 1e-6
_PREFIX_BYTES = 256 << 20  # memory for the round-robin rankings


def choose_landmarks(n_candidates: int, n_landmarks: int, seed: int = 0) -> np.ndarray:
    """A seeded uniform sample of landmark indices, without replacement.

    Parameters
    ----------
    n_candidates : int
        Pool size :math:`n`.
    n_landmarks : int
        Number of landmarks :math:`l`, ``1 <= l <= n``.
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    np.ndarray, shape (l,), int64
        Sorted, distinct indices in ``[0, n)``.
    """
    n = check_int(n_candidates, "n_candidates", 1)
    k = check_int(n_landmarks, "n_landmarks", 1)
    seed = check_int(seed, "seed", 0)
    if k > n:
        raise TarotInputError(f"{k} landmarks requested from a pool of {n} candidates; ask for at most {n}")
    idx = np.random.default_rng(seed).choice(n, size=k, replace=False)
    return np.sort(idx).astype(np.int64)


def _block_weights(
    dim: int, checkpoint_dims: Sequence[int] | None, checkpoint_weights: Sequence[float] | None
) -> tuple[list[slice], np.ndarray]:
    """Checkpoint feature blocks and their weights normalised to sum to one."""
    blocks = _blocks(dim, checkpoint_dims)
    if checkpoint_weights is None:
        w = np.ones(len(blocks))
    else:
        try:
            w = np.asarray(checkpoint_weights, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            w = np.full(1, np.nan)
    if w.shape != (len(blocks),) or not np.isfinite(w).all() or (w <= 0).any():
        raise TarotInputError(f"need {len(blocks)} positive checkpoint weights, got {checkpoint_weights!r}")
    return blocks, w / w.sum()


def _check_feature_pair(landmark_features: object, target_features: object) -> tuple[np.ndarray, np.ndarray]:
    g = check_features(landmark_features, "landmark features")
    y = check_features(target_features, "targets")
    if g.shape[1] != y.shape[1]:
        raise TarotInputError(
            f"dimension mismatch: landmark features have {g.shape[1]} dims, targets have {y.shape[1]}; "
            "both must be gradient features of the same featurizer"
        )
    return g, y


def _influence(g: np.ndarray, y: np.ndarray, blocks: list[slice], w: np.ndarray) -> np.ndarray:  # checked inputs
    out = np.zeros((g.shape[0], y.shape[0]))
    for wt, sl in zip(w, blocks):
        gu = _unit(np.asarray(g[:, sl], dtype=np.float64))
        yu = _unit(np.asarray(y[:, sl], dtype=np.float64))
        out += wt * (gu @ yu.T)
    return out


def landmark_influence(
    landmark_features: np.ndarray,
    target_features: np.ndarray,
    checkpoint_dims: Sequence[int] | None = None,
    checkpoint_weights: Sequence[float] | None = None,
) -> np.ndarray:
    r"""First-order influence of each landmark on each target.

    .. math:: p_{ij} = \sum_t \eta_t \langle \hat g_{i,t}, \hat y_{j,t} \rangle,
              \qquad \eta_t = w_t / \textstyle\sum_s w_s,

    the weighted sum over checkpoint blocks :math:`t` of cosine similarities (as in
    :func:`~tarot_select.baselines.less_scores`, without the mean over targets).

    Parameters
    ----------
    landmark_features : np.ndarray, shape (l, d)
        Gradient features :math:`g` of the landmarks (Adam-preconditioned).
    target_features : np.ndarray, shape (m, d)
        Gradient features :math:`y` of the targets.
    checkpoint_dims : sequence of int, optional
        Widths of the checkpoint blocks (summing to ``d``); one block if None.
    checkpoint_weights : sequence of float, optional
        Positive weight per block (e.g. its learning rate); equal if None.

    Returns
    -------
    np.ndarray, shape (l, m), float64
    """
    g, y = _check_feature_pair(landmark_features, target_features)
    blocks, w = _block_weights(g.shape[1], checkpoint_dims, checkpoint_weights)
    return _influence(g, y, blocks, w)


def median_bandwidth(x: np.ndarray, max_samples: int = 1000, seed: int = 0) -> float:
    r"""Median pairwise Euclidean distance of the rows of ``x``: the RBF bandwidth heuristic.

    Parameters
    ----------
    x : np.ndarray, shape (l, e)
    max_samples : int
        At most this many rows are used, drawn uniformly without replacement with
        ``np.random.default_rng(seed)`` when ``l > max_samples``.
    seed : int

    Returns
    -------
    float
        :math:`\operatorname{median}_{i<j} \lVert x_i - x_j \rVert`, at least ``1e-6``;
        ``1.0`` when there are fewer than two rows (no pair to measure).
    """
    arr = check_features(x, "embeddings")
    max_samples = check_int(max_samples, "max_samples", 2)
    seed = check_int(seed, "seed", 0)
    n = arr.shape[0]
    if n < 2:
        return 1.0
    if n > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        sample = take_rows(arr, rows, dtype=np.float64)
    else:
        sample = np.asarray(arr, dtype=np.float64)
    return max(float(np.median(pdist(sample))), _MIN_BANDWIDTH)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2`` by the norm expansion, clipped at zero, shape (n, m)."""
    d = a @ b.T
    d *= -2.0
    d += np.einsum("ij,ij->i", a, a)[:, None]
    d += np.einsum("ij,ij->i", b, b)[None, :]
    return np.maximum(d, 0.0, out=d)


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    r"""Gaussian kernel matrix :math:`K_{ij} = \exp(-\lVert a_i - b_j \rVert^2 / (2\sigma^2))`.

    Squared distances come from :math:`\lVert a\rVert^2 + \lVert b\rVert^2 - 2 a^\top b`
    (no ``(n, m, e)`` tensor), clipped at zero against rounding.

    Parameters
    ----------
    a : np.ndarray, shape (n, e)
    b : np.ndarray, shape (m, e)
    bandwidth : float
        :math:`\sigma > 0`.

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    sigma = check_real(bandwidth, "bandwidth", 0.0, low_open=True)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise TarotInputError(f"rbf_kernel needs two 2-D arrays of equal width, got shapes {a.shape} and {b.shape}")
    k = _sq_dists(a, b)
    k *= -1.0 / (2.0 * sigma * sigma)
    return np.exp(k, out=k)


def _kernel(kind: str, a: np.ndarray, b: np.ndarray, bandwidth: float | None) -> np.ndarray:
    if kind == "linear":
        return a @ b.T
    k = _sq_dists(a, b)
    k *= -1.0 / (2.0 * bandwidth * bandwidth)
    return np.exp(k, out=k)


@dataclass(frozen=True)
class Propagation:
    r"""Kernel-ridge propagation of landmark influence to the whole pool (:func:`propagate`).

    Attributes
    ----------
    scores : np.ndarray, shape (n, m), float32
        :math:`S = K_{EL}\alpha`, one column per target.
    kernel : str
        ``rbf`` or ``linear``.
    bandwidth : float or None
        :math:`\sigma` of the RBF kernel (the median heuristic's value if it was not
        given); None for the linear kernel.
    damping : float
        :math:`\lambda`, relative to the mean diagonal of :math:`K_{LL}`.
    coefficients : np.ndarray, shape (l, m), float64
        :math:`\alpha`.
    solver : str
        ``cholesky``, or ``lstsq`` when the damped kernel matrix was singular.
    """

    scores: np.ndarray
    kernel: str
    bandwidth: float | None
    damping: float
    coefficients: np.ndarray
    solver: str = "cholesky"


def _check_kernel(kernel: object, bandwidth: object) -> float | None:
    if kernel not in KERNELS:
        raise TarotInputError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if bandwidth is None:
        return None
    if kernel == "linear":
        raise TarotInputError("the linear kernel has no bandwidth; drop the bandwidth or use the rbf kernel")
    return check_real(bandwidth, "bandwidth", 0.0, low_open=True)


def _solve(gram: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, str]:
    """``gram^{-1} rhs`` by Cholesky, or least squares if ``gram`` is (numerically) singular."""
    try:
        factor = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
        alpha = scipy.linalg.cho_solve(factor, rhs, check_finite=False)
        if np.isfinite(alpha).all():
            return alpha, "cholesky"
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        pass
    log.warning(
        "infdist: the damped landmark kernel matrix (%d x %d) is singular; solving by least squares "
        "(raise the damping to avoid this)",
        gram.shape[0],
        gram.shape[1],
    )
    alpha = scipy.linalg.lstsq(gram, rhs, check_finite=False)[0]
    return alpha, "lstsq"


def propagate(
    landmark_embeddings: np.ndarray,
    landmark_scores: np.ndarray,
    embeddings: np.ndarray,
    *,
    kernel: str = "rbf",
    bandwidth: float | None = None,
    damping: float = 1e-2,
    seed: int = 0,
    block_rows: int = 8192,
) -> Propagation:
    r"""Kernel ridge regression from landmark embeddings to landmark scores, applied to the pool.

    .. math:: \alpha = \bigl(K_{LL} + \lambda\,\overline{\operatorname{diag}K_{LL}}\,I\bigr)^{-1} P_L,
              \qquad S = K_{EL}\,\alpha .

    Parameters
    ----------
    landmark_embeddings : np.ndarray, shape (l, e)
    landmark_scores : np.ndarray, shape (l,) or (l, m)
        :math:`P_L`, e.g. :func:`landmark_influence`; a 1-D array is one target.
    embeddings : np.ndarray, shape (n, e)
        Embeddings of the pool (may be memory-mapped; read in blocks of ``block_rows``).
    kernel : {"rbf", "linear"}
    bandwidth : float, optional
        RBF :math:`\sigma`; the median pairwise landmark distance
        (:func:`median_bandwidth` with ``seed``) if None. Not allowed for ``linear``.
    damping : float
        :math:`\lambda \ge 0`. With 0 and a singular :math:`K_{LL}` the system is solved
        by least squares (a warning is logged).
    seed : int
        Seeds the landmark sample of the median heuristic.
    block_rows : int
        Rows of ``embeddings`` per kernel block.

    Returns
    -------
    Propagation
        ``scores`` of shape (n, m), or (n, 1) for 1-D ``landmark_scores``.
    """
    bw = _check_kernel(kernel, bandwidth)
    lam = check_real(damping, "damping", 0.0)
    seed = check_int(seed, "seed", 0)
    block_rows = check_int(block_rows, "block_rows", 1)
    le = check_features(landmark_embeddings, "landmark embeddings")
    emb = check_features(embeddings, "embeddings")
    if le.shape[1] != emb.shape[1]:
        raise TarotInputError(
            f"dimension mismatch: landmark embeddings have {le.shape[1]} dims, embeddings have {emb.shape[1]}"
        )
    p = as_array(landmark_scores, "landmark scores")
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] != le.shape[0] or p.shape[1] == 0:
        raise TarotInputError(
            f"landmark scores must have shape ({le.shape[0]},) or ({le.shape[0]}, m), got {np.shape(landmark_scores)}"
        )
    if p.dtype.kind not in "biuf" or not np.isfinite(p).all():
        raise TarotInputError("landmark scores must be finite real numbers")
    return _propagate(le, p.astype(np.float64), emb, kernel, bw, lam, seed, block_rows)


def _propagate(
    le: np.ndarray,
    p: np.ndarray,
    emb: np.ndarray,
    kernel: str,
    bandwidth: float | None,
    damping: float,
    seed: int,
    block_rows: int,
) -> Propagation:  # checked inputs
    landmarks = np.asarray(le, dtype=np.float64)
    if kernel == "rbf" and bandwidth is None:
        bandwidth = median_bandwidth(landmarks, seed=seed)
    gram = _kernel(kernel, landmarks, landmarks, bandwidth)
    scale = float(np.mean(np.diag(gram)))
    gram[np.diag_indices_from(gram)] += damping * scale
    alpha, solver = _solve(gram, p)
    n = emb.shape[0]
    scores = np.empty((n, p.shape[1]), dtype=np.float32)
    for s in range(0, n, block_rows):
        x = np.asarray(emb[s : s + block_rows], dtype=np.float64)
        scores[s : s + len(x)] = _kernel(kernel, x, landmarks, bandwidth) @ alpha
        release_rows(emb, s, s + len(x))  # after use: float64 rows are a view
    return Propagation(
        scores=scores,
        kernel=kernel,
        bandwidth=None if kernel == "linear" else float(bandwidth),
        damping=damping,
        coefficients=alpha,
        solver=solver,
    )


def _ranking_prefix(col: np.ndarray, depth: int) -> np.ndarray:
    """The first ``>= depth`` candidates of the ranking by (score descending, index ascending).

    Every candidate tied with the ``depth``-th score is included, so the prefix is exact.
    """
    n = col.shape[0]
    itype = np.int32 if n < 2**31 else np.int64
    if depth >= n:
        return np.argsort(-col, kind="stable").astype(itype)
    thr = np.partition(col, n - depth)[n - depth]
    cand = np.flatnonzero(col >= thr)
    return cand[np.argsort(-col[cand], kind="stable")].astype(itype)


def round_robin(scores: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """Round-robin selection over targets.

    Each round draws a permutation of the targets (``rng.permutation(m)`` of one
    ``np.random.default_rng(seed)``, a fresh one per round); in that order every target
    takes its highest-scoring candidate not yet selected (ties to the lowest index),
    until ``budget`` candidates are selected (the last round may stop part-way).

    Each target keeps a prefix of its ranking (a partial sort, at most ``budget`` deep,
    since its next pick is always among its top ``count + 1``; extended lazily when the
    prefixes of all targets would not fit in 256 MiB) and a pointer past the candidates
    it has seen taken, so the cost is about one partial sort per target plus short
    vectorised scans, not ``O(budget * n * m)``.

    Parameters
    ----------
    scores : np.ndarray, shape (n, m)
        Score of candidate ``i`` for target ``j``.
    budget : int
        ``1 <= budget <= n``.
    seed : int

    Returns
    -------
    np.ndarray, shape (budget,), int64
        Distinct candidate indices in the order they were picked.
    """
    s = as_array(scores, "scores")
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise TarotInputError(f"scores must be a non-empty 2-D array (candidates x targets), got shape {s.shape}")
    if s.dtype.kind not in "biuf" or not np.isfinite(s).all():
        raise TarotInputError("scores must be finite real numbers")
    budget = resolve_budget(s.shape[0], budget, None)
    seed = check_int(seed, "seed", 0)
    return _round_robin(s, budget, seed)


def _round_robin(s: np.ndarray, budget: int, seed: int) -> np.ndarray:  # checked inputs
    n, m = s.shape
    rng = np.random.default_rng(seed)
    taken = np.zeros(n, dtype=bool)
    out = np.empty(budget, dtype=np.int64)
    pointer = np.zeros(m, dtype=np.int64)
    prefix: list[np.ndarray] = []
    # A target's next pick is within its top count + 1 <= budget, so a prefix of depth
    # min(n, budget) never runs out. Start there if all of them fit in _PREFIX_BYTES,
    # else as deep as fits (at least 64) and deepen a target's prefix 4-fold when it is used up.
    full = min(n, budget)
    depth0 = min(full, max(64, _PREFIX_BYTES // (4 * m)))
    chunk = max(1, (1 << 22) // n)  # targets per contiguous copy (4 Mi scores)
    for j0 in range(0, m, chunk):
        block = np.ascontiguousarray(s[:, j0 : j0 + chunk].T)
        prefix.extend(_ranking_prefix(col, depth0) for col in block)
    count = 0
    while count < budget:
        for j in rng.permutation(m):
            pre = prefix[j]
            ptr = int(pointer[j])
            window = 16
            while True:
                if ptr >= len(pre):  # prefix used up: deepen it (the old one is its start)
                    deeper = _ranking_prefix(np.asarray(s[:, j]), min(full, 4 * len(pre)))
                    if len(deeper) <= len(pre):  # cannot happen: only count < budget are taken
                        raise RuntimeError(f"round_robin: ranking of target {j} exhausted at depth {len(pre)}")
                    pre = prefix[j] = deeper
                seg = pre[ptr : ptr + window]
                free = ~taken[seg]
                if free.any():
                    k = int(np.argmax(free))
                    pick = int(seg[k])
                    ptr += k + 1
                    break
                ptr += len(seg)
                window *= 2
            pointer[j] = ptr
            taken[pick] = True
            out[count] = pick
            count += 1
            if count == budget:
                break
    return out


@dataclass(frozen=True)
class InfdistOptions:
    r"""Settings of :func:`influence_distillation`.

    Attributes
    ----------
    kernel : {"rbf", "linear"}
        Propagation kernel.
    bandwidth : float, optional
        RBF :math:`\sigma > 0`; the median pairwise landmark distance if None. Must be
        None for the linear kernel.
    damping : float
        Ridge :math:`\lambda \ge 0` relative to the mean diagonal of :math:`K_{LL}`
        (public default ``1e-2``).
    strategy : {"round_robin", "top_k"}
        How candidates are picked from the propagated scores.
    seed : int
        Seeds the bandwidth sample and the round-robin orders.
    """

    kernel: str = "rbf"
    bandwidth: float | None = None
    damping: float = 1e-2
    strategy: str = "round_robin"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_kernel(self.kernel, self.bandwidth)
        check_real(self.damping, "damping", 0.0)
        if self.strategy not in STRATEGIES:
            raise TarotInputError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        check_int(self.seed, "seed", 0)


class _Inputs(NamedTuple):
    """Checked inputs of :func:`influence_distillation`."""

    embeddings: np.ndarray
    landmark_indices: np.ndarray
    landmark_features: np.ndarray
    targets: np.ndarray
    budget: int
    options: InfdistOptions
    blocks: list[slice]
    block_weights: np.ndarray


def _check_inputs(
    embeddings: object,
    landmark_indices: object,
    landmark_features: object,
    target_features: object,
    budget: object,
    options: InfdistOptions | None,
    checkpoint_dims: Sequence[int] | None,
    checkpoint_weights: Sequence[float] | None,
    ratio: float | None = None,
) -> _Inputs:
    """Every check of :func:`influence_distillation`, before any work (raises TarotInputError).

    ``budget`` and ``ratio`` are resolved as in :func:`~tarot_select._validate.resolve_budget`.
    """
    if options is None:
        options = InfdistOptions()
    elif not isinstance(options, InfdistOptions):
        raise TarotInputError(f"infdist options must be an InfdistOptions, got {type(options).__name__}")
    emb = check_features(embeddings, "embeddings")
    n = emb.shape[0]
    idx = as_array(landmark_indices, "landmark indices")
    if idx.ndim != 1 or idx.shape[0] == 0:
        raise TarotInputError(f"landmark indices must be a non-empty 1-D array, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TarotInputError(f"landmark indices must be integers, got dtype {idx.dtype}")
    if idx.shape[0] > n:
        raise TarotInputError(f"{idx.shape[0]} landmarks but only {n} candidates; use at most {n} landmarks")
    if idx.min() < 0 or idx.max() >= n:
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise TarotInputError(f"landmark index {bad} is outside the pool [0, {n})")
    idx = idx.astype(np.int64)
    if len(np.unique(idx)) != len(idx):
        raise TarotInputError("landmark indices hold duplicates; each landmark must be a distinct candidate")
    g, y = _check_feature_pair(landmark_features, target_features)
    if g.shape[0] != idx.shape[0]:
        raise TarotInputError(
            f"landmark features have {g.shape[0]} rows but there are {idx.shape[0]} landmark indices; "
            "give one feature row per landmark, in the order of the indices"
        )
    b = resolve_budget(n, budget, ratio)
    blocks, w = _block_weights(g.shape[1], checkpoint_dims, checkpoint_weights)
    return _Inputs(emb, idx, g, y, b, options, blocks, w)


def _distill(inp: _Inputs) -> Selection:  # checked inputs
    opt = inp.options
    t0 = time.perf_counter()
    p = _influence(inp.landmark_features, inp.targets, inp.blocks, inp.block_weights)
    t1 = time.perf_counter()
    le = take_rows(inp.embeddings, inp.landmark_indices, dtype=np.float64)
    prop = _propagate(le, p, inp.embeddings, opt.kernel, opt.bandwidth, float(opt.damping), int(opt.seed), 8192)
    t2 = time.perf_counter()
    mean = prop.scores.mean(axis=1, dtype=np.float64)
    if opt.strategy == "round_robin":
        idx = _round_robin(prop.scores, inp.budget, int(opt.seed))
    else:
        idx = top_budget(mean, inp.budget)
    t3 = time.perf_counter()
    log.info(
        "infdist: %d landmarks, %d targets, %s kernel (bandwidth %s), %s: selected %d of %d",
        len(inp.landmark_indices),
        inp.targets.shape[0],
        prop.kernel,
        prop.bandwidth,
        opt.strategy,
        len(idx),
        len(mean),
    )
    return Selection(
        indices=idx,
        method="infdist",
        n_candidates=len(mean),
        budget=inp.budget,
        timings={"influence": t1 - t0, "propagate": t2 - t1, "select": t3 - t2},
        info={
            "n_landmarks": len(inp.landmark_indices),
            "n_targets": int(inp.targets.shape[0]),
            "kernel": prop.kernel,
            "bandwidth": prop.bandwidth,
            "damping": prop.damping,
            "solver": prop.solver,
            "strategy": opt.strategy,
            "seed": int(opt.seed),
            "embedding_dim": int(inp.embeddings.shape[1]),
            "score_min_kept": float(mean[idx].min()),
            "score_mean_kept": float(mean[idx].mean()),
            "score_max": float(mean.max()),
        },
    )


def influence_distillation(
    embeddings: np.ndarray,
    landmark_indices: np.ndarray,
    landmark_features: np.ndarray,
    target_features: np.ndarray,
    budget: int,
    options: InfdistOptions | None = None,
    *,
    checkpoint_dims: Sequence[int] | None = None,
    checkpoint_weights: Sequence[float] | None = None,
) -> Selection:
    r"""Select ``budget`` candidates by Influence Distillation (first order; see the module docstring).

    Parameters
    ----------
    embeddings : np.ndarray, shape (n, e)
        Cheap embeddings of the whole pool (may be memory-mapped).
    landmark_indices : np.ndarray, shape (l,), int
        Distinct pool indices of the landmarks (e.g. :func:`choose_landmarks`).
    landmark_features : np.ndarray, shape (l, d)
        Gradient features of the landmarks, row ``k`` for ``landmark_indices[k]``.
    target_features : np.ndarray, shape (m, d)
        Gradient features of the targets.
    budget : int
        ``1 <= budget <= n``.
    options : InfdistOptions, optional
        Kernel, bandwidth, damping, strategy and seed (defaults if None).
    checkpoint_dims, checkpoint_weights
        Checkpoint blocks of the gradient features and their weights
        (:func:`landmark_influence`).

    Returns
    -------
    Selection
        ``method="infdist"``; ``indices`` in the order picked (``round_robin``) or by
        descending mean propagated score :math:`\bar s_i` (``top_k``). ``info`` holds the
        settings (``n_landmarks``, ``kernel``, ``bandwidth`` as used, ``damping``,
        ``strategy``, ``embedding_dim``, ``solver``) and a summary of :math:`\bar s`
        (``score_min_kept``, ``score_mean_kept``, ``score_max``); ``timings`` the seconds
        of ``influence``, ``propagate`` and ``select``.

    Raises
    ------
    TarotInputError
        Before any work, for inputs that do not fit (see the checks in the source).
    """
    inp = _check_inputs(
        embeddings,
        landmark_indices,
        landmark_features,
        target_features,
        budget,
        options,
        checkpoint_dims,
        checkpoint_weights,
    )
    return _distill(inp)
