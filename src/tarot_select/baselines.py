r"""Baseline selectors with the same result type as TAROT.

* ``random``: a seeded uniform sample without replacement.
* ``dsdm``: DsDm through TRAK scores. For each checkpoint block :math:`X` (candidates)
  and :math:`X_T` (targets) of projected gradients,
  :math:`\tau = Q X (X^\top X + \lambda I)^{-1} X_T^\top \mathbf{1}/m`, i.e. the TRAK
  attribution averaged over targets; blocks are averaged; the top-:math:`B` are kept.
  TRAK's datamodels use gradients of the model *output* (the correct-class margin) and
  :math:`Q = \operatorname{diag}(1 - p_{y_i})` (``train_weights``); with loss gradients
  and no weights, :math:`Q = I`.
  :math:`\lambda = \text{ridge}\cdot\mathrm{tr}(X^\top X)/d`.
* ``less``: LESS scores. Per checkpoint :math:`t` (weight :math:`\eta_t`, e.g. its learning
  rate; normalised to sum to one) the cosine similarity of each (Adam-preconditioned)
  candidate gradient to each (plain) target gradient; summed over checkpoints,
  averaged within each target subtask, maximised over subtasks:
  :math:`s_i = \max_g \frac1{|T_g|}\sum_{j\in T_g}\sum_t \eta_t\cos(x_{it}, y_{jt})`.
  Without subtask labels all targets form one group. Because the mean of cosines is
  the inner product with the mean of unit target vectors, no candidates × targets
  matrix is formed.

The Adam preconditioning of LESS happens when features are made
(:class:`tarot_select.featurize.AdamPreconditioner`); these functions score features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._validate import check_pair, resolve_budget
from .errors import TarotInputError
from .result import Selection

__all__ = ["random_selection", "dsdm_scores", "less_scores", "top_budget", "select_by_scores"]

_BLOCK = 16384


def random_selection(
    n_candidates: int, budget: int | None = None, ratio: float | None = None, seed: int = 0
) -> Selection:
    """A seeded uniform random subset of ``range(n_candidates)``."""
    b = resolve_budget(n_candidates, budget, ratio)
    idx = np.random.default_rng(seed).choice(n_candidates, size=b, replace=False).astype(np.int64)
    return Selection(indices=idx, method="random", n_candidates=n_candidates, budget=b, info={"seed": seed})


def _blocks(dim: int, checkpoint_dims: Sequence[int] | None) -> list[slice]:
    if checkpoint_dims is None:
        return [slice(0, dim)]
    dims = [int(d) for d in checkpoint_dims]
    if any(d <= 0 for d in dims) or sum(dims) != dim:
        raise TarotInputError(f"checkpoint dims {dims} do not add up to the feature dimension {dim}")
    edges = np.cumsum([0] + dims)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def dsdm_scores(
    candidates: np.ndarray,
    targets: np.ndarray,
    ridge: float = 1e-4,
    checkpoint_dims: Sequence[int] | None = None,
    train_weights: np.ndarray | None = None,
) -> np.ndarray:
    r"""Mean TRAK attribution of each candidate to the targets, shape (n,) float64.

    ``train_weights`` (shape ``(n,)``, or ``(n, n_blocks)`` for one column per checkpoint
    block) is TRAK's :math:`Q`: block scores are multiplied row-wise by it.
    """
    check_pair(candidates, targets)
    n, d = candidates.shape
    scores = np.zeros(n)
    blocks = _blocks(d, checkpoint_dims)
    q = None
    if train_weights is not None:
        q = np.asarray(train_weights, dtype=np.float64)
        q = np.repeat(q[:, None], len(blocks), 1) if q.ndim == 1 else q
        if q.shape != (n, len(blocks)) or not np.isfinite(q).all():
            raise TarotInputError(
                f"train_weights must be finite of shape ({n},) or ({n}, {len(blocks)}), got {q.shape}"
            )
    for b_i, sl in enumerate(blocks):
        k = sl.stop - sl.start
        gram = np.zeros((k, k))
        for s in range(0, n, _BLOCK):
            x = np.asarray(candidates[s : s + _BLOCK, sl], dtype=np.float64)
            gram += x.T @ x
        lam = ridge * np.trace(gram) / k
        t_mean = np.asarray(targets[:, sl], dtype=np.float64).mean(0)
        v = np.linalg.solve(gram + lam * np.eye(k), t_mean)
        for s in range(0, n, _BLOCK):
            block = np.asarray(candidates[s : s + _BLOCK, sl], dtype=np.float64) @ v
            scores[s : s + _BLOCK] += block if q is None else q[s : s + _BLOCK, b_i] * block
    return scores / len(blocks)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def less_scores(
    candidates: np.ndarray,
    targets: np.ndarray,
    checkpoint_dims: Sequence[int] | None = None,
    checkpoint_weights: Sequence[float] | None = None,
    target_groups: np.ndarray | None = None,
) -> np.ndarray:
    r"""LESS score of each candidate, shape (n,) float64 (see module docstring)."""
    check_pair(candidates, targets)
    n, d = candidates.shape
    m = targets.shape[0]
    blocks = _blocks(d, checkpoint_dims)
    w = np.ones(len(blocks)) if checkpoint_weights is None else np.asarray(checkpoint_weights, dtype=np.float64)
    if w.shape != (len(blocks),) or not np.isfinite(w).all() or (w <= 0).any():
        raise TarotInputError(f"need {len(blocks)} positive checkpoint weights, got {checkpoint_weights!r}")
    w = w / w.sum()
    groups = np.zeros(m, dtype=np.int64) if target_groups is None else np.asarray(target_groups)
    if groups.shape != (m,):
        raise TarotInputError(f"target_groups must have one label per target ({m}), got shape {groups.shape}")
    labels, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels)).astype(np.float64)
    # per block: group centroids of unit target vectors, shape (G, k)
    centroids = []
    for sl in blocks:
        t_unit = _unit(np.asarray(targets[:, sl], dtype=np.float64))
        c = np.zeros((len(labels), sl.stop - sl.start))
        np.add.at(c, inverse, t_unit)
        centroids.append(c / counts[:, None])
    scores = np.empty(n)
    for s in range(0, n, _BLOCK):
        x = np.asarray(candidates[s : s + _BLOCK], dtype=np.float64)
        acc = np.zeros((x.shape[0], len(labels)))
        for wt, sl, c in zip(w, blocks, centroids):
            acc += wt * (_unit(x[:, sl]) @ c.T)
        scores[s : s + x.shape[0]] = acc.max(axis=1)
    return scores


def top_budget(scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the ``budget`` highest scores (ties to the lower index), shape (budget,)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:budget].astype(np.int64)


def select_by_scores(method: str, scores: np.ndarray, budget: int, seconds: float = 0.0) -> Selection:
    """Wrap a top-``budget`` choice by scores as a :class:`Selection`."""
    idx = top_budget(scores, budget)
    return Selection(
        indices=idx,
        method=method,
        n_candidates=len(scores),
        budget=budget,
        timings={"scores": seconds},
        info={"score_min_kept": float(scores[idx].min()), "score_max": float(scores.max())},
    )
