r"""Weights for a selected set: OT-potential repeat counts and exact OT-optimal masses.

Potential weighting (paper Sec. 4.4)
    Solve OT between the selection :math:`S` (uniform masses) and the target and take
    the dual potentials :math:`f_i` of the selected points. A low potential means more
    mass on :math:`s_i` lowers the OT distance (see :mod:`tarot_select.select`), so the
    value of a point is :math:`v_i = \max_k f_k - f_i \ge 0` (invariant to the additive
    constant of the duals). With repetition factor :math:`R \ge 1`, every sample keeps
    one copy and the remaining :math:`R|S| - |S|` copies are shared in proportion to
    :math:`v_i` by largest remainder:

    .. math:: c_i = 1 + \lfloor q_i \rfloor + [\text{remainder}],\qquad
              q_i = (R-1)|S|\,\frac{v_i}{\sum_k v_k},\qquad \sum_i c_i = R|S|.

    No count is ever zero or negative. (The released code lets negative potentials
    become negative counts, silently dropping samples; we do not.)

OT-optimal weights
    For a fixed support :math:`S`, :math:`\min_{w\in\Delta} W(\sum_i w_i\delta_{s_i}, T)`
    is reached by sending each target's mass to its nearest selected point:
    :math:`w_i = \sum_{j:\ \mathrm{nn}_S(t_j)=i} b_j`. Then
    :math:`W = \sum_j b_j \min_i C(s_i, t_j)`, a lower bound for every :math:`w`. Points
    that are nobody's nearest get weight 0: legitimate for masses, so use
    :func:`apportion` with ``minimum=1`` if integer repeats are needed.
"""

from __future__ import annotations

import numpy as np

from ._validate import check_masses, check_pair
from .distance import OTMethod, ot_distance
from .errors import TarotInputError
from .knn import nearest_neighbors

__all__ = ["apportion", "optimal_weights", "potential_counts", "uniform_counts"]


def apportion(values: np.ndarray, total: int, minimum: int = 1) -> np.ndarray:
    r"""Integer counts :math:`c_i \ge` ``minimum`` with :math:`\sum c_i` = ``total``,
    the part above the minimum proportional to ``values`` (largest remainder, ties to the
    lower index; uniform if all values are zero).

    Parameters
    ----------
    values : np.ndarray, shape (s,)
        Non-negative shares.
    total : int
        Sum of the counts, at least ``minimum * s``.
    minimum : int
        Smallest count of every sample.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    s = v.shape[0]
    if s == 0:
        raise TarotInputError("cannot apportion counts over an empty selection")
    if not np.isfinite(v).all() or (v < 0).any():
        raise TarotInputError("apportion values must be finite and non-negative")
    if total < minimum * s:
        raise TarotInputError(f"total {total} is below the minimum {minimum} x {s} samples")
    extra = total - minimum * s
    if v.sum() <= 0:
        v = np.ones(s)
    quota = extra * v / v.sum()
    base = np.floor(quota).astype(np.int64)
    left = int(extra - base.sum())
    if left > 0:
        order = np.lexsort((np.arange(s), -(quota - base)))
        base[order[:left]] += 1
    return base + minimum


def uniform_counts(n: int, repeat: float) -> np.ndarray:
    r"""Uniform repeat counts: every sample :math:`\lfloor R \rfloor` or :math:`\lceil R \rceil`
    times, :math:`\operatorname{round}(R n)` in all.

    The compute-matched counterpart of :func:`potential_counts`: a method trained on these
    counts takes as many steps as one trained on potential counts with the same ``repeat``
    (the paper's "uniform repetition to match the same size"). The extra copies of a
    fractional ``R`` go to evenly spaced rows.

    Parameters
    ----------
    n : int
        Selected samples (>= 1).
    repeat : float
        :math:`R \ge 1`.

    Returns
    -------
    np.ndarray, shape (n,), int64, summing to ``round(repeat * n)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise TarotInputError(f"n must be a positive integer, got {n!r}")
    if not np.isfinite(repeat) or repeat < 1:
        raise TarotInputError(f"repeat must be a finite number >= 1, got {repeat!r}")
    base = int(np.floor(repeat))
    counts = np.full(int(n), base, dtype=np.int64)
    extra = int(round(repeat * n)) - base * int(n)
    if extra > 0:
        counts[np.linspace(0, n, extra, endpoint=False).astype(np.int64)] += 1
    return counts


def potential_counts(
    selected: np.ndarray,
    targets: np.ndarray,
    repeat: float = 1.0,
    *,
    ot_method: OTMethod = "auto",
    reg: float = 0.01,
) -> np.ndarray:
    r"""OT-potential repeat counts for the selected points (see module docstring).

    Parameters
    ----------
    selected : np.ndarray, shape (s, d)
        Features of the selected samples (whitened, as for selection).
    targets : np.ndarray, shape (m, d)
    repeat : float
        Repetition factor :math:`R \ge 1`; counts sum to ``round(R * s)``.
    ot_method, reg
        ``auto``/``sinkhorn``: Sinkhorn potentials at :math:`\varepsilon = \text{reg}\cdot
        C_{\max}`, unique (the exact duals of uniform masses are degenerate, see
        :mod:`tarot_select.select`); ``exact``: the network-simplex duals.

    Returns
    -------
    np.ndarray, shape (s,), int64
        Counts, all :math:`\ge 1`, non-increasing in the potential.
    """
    check_pair(selected, targets)
    if not (np.isfinite(repeat) and repeat >= 1.0):
        raise TarotInputError(f"repetition factor must be >= 1 so every sample keeps a copy, got {repeat!r}")
    s = selected.shape[0]
    # unique (entropic) potentials unless the exact duals are asked for (tarot_select.select)
    method: OTMethod = "exact" if ot_method == "exact" else "sinkhorn"
    f = ot_distance(selected, targets, method=method, reg=reg).potential_source
    return apportion(f.max() - f, int(round(repeat * s)), minimum=1)


def optimal_weights(selected: np.ndarray, targets: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    r"""Masses on the selected points that minimise the OT distance to the target.

    Parameters
    ----------
    selected : np.ndarray, shape (s, d)
    targets : np.ndarray, shape (m, d)
    b : np.ndarray, shape (m,), optional
        Target masses (uniform by default).

    Returns
    -------
    np.ndarray, shape (s,), float64
        :math:`w_i` = target mass whose nearest selected point is :math:`s_i`; sums to 1.
    """
    check_pair(selected, targets)
    b_ = check_masses(b, targets.shape[0], "target masses")
    nn = nearest_neighbors(selected, targets, k=1).indices[:, 0]
    return np.bincount(nn, weights=b_, minlength=selected.shape[0])
