r"""Whitened feature distance and the optimal-transport distance built on it.

WFD between whitened, unit-normalised features is the Euclidean distance

.. math:: c(x, y) = \lVert x - y\rVert = \sqrt{\max(0,\ \lVert x\rVert^2 + \lVert y\rVert^2 - 2x^\top y)},

which for unit vectors is :math:`\sqrt{\max(0, 2 - 2x^\top y)}`. The general form also
serves the "w/o norm" ablation.

The OT distance between a source set :math:`S` (masses :math:`a`) and a target set
:math:`T` (masses :math:`b`, uniform by default) is

.. math:: W(a, b) = \min_{P \in U(a,b)} \langle P, C\rangle
          = \max_{f_i + g_j \le C_{ij}} \langle a, f\rangle + \langle b, g\rangle ,

solved with POT: the exact network simplex (``ot.emd2``) when :math:`|S|\,|T|` is small,
log-domain Sinkhorn (``ot.sinkhorn(..., method="sinkhorn_log")`` on torch tensors) when
it is large. The dual potentials :math:`f` (on :math:`S`) and :math:`g` (on :math:`T`)
follow POT's convention above: :math:`f_i` is the marginal cost of putting more mass on
:math:`s_i`, so a *lower* potential marks a point whose mass lowers the OT distance.
For Sinkhorn, :math:`f = \varepsilon\log u`, :math:`g = \varepsilon\log v` and the value
reported is the transport cost :math:`\langle P_\varepsilon, C\rangle` of the entropic plan.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ._validate import check_masses
from .errors import TarotInputError

__all__ = ["OTResult", "pairwise_wfd", "wfd", "ot_distance", "OT_METHODS"]

log = logging.getLogger(__name__)

OTMethod = Literal["auto", "exact", "sinkhorn"]
OT_METHODS: tuple[str, ...] = ("auto", "exact", "sinkhorn")
#: ``auto`` uses the exact solver up to this many cost-matrix entries (≈2 s on 2 cores).
MAX_EXACT_ENTRIES = 4_000_000


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
    tol: float = 1e-7,
    cost: np.ndarray | None = None,
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
    cost : np.ndarray, shape (n, m), optional
        A precomputed cost matrix (then ``source``/``target`` only give the sizes).

    Returns
    -------
    OTResult
    """
    import ot  # POT takes ~1 s to import; training-only jobs never need it

    if method not in OT_METHODS:
        raise TarotInputError(f"unknown OT method {method!r}; choose one of {', '.join(OT_METHODS)}")
    n, m = source.shape[0], target.shape[0]
    if n == 0 or m == 0:
        raise TarotInputError(f"OT distance needs non-empty sets, got {n} source and {m} target points")
    if source.shape[1] != target.shape[1]:
        raise TarotInputError(f"dimension mismatch: {source.shape[1]} vs {target.shape[1]}")
    a_ = check_masses(a, n, "source masses")
    b_ = check_masses(b, m, "target masses")
    c = pairwise_wfd(source, target) if cost is None else np.asarray(cost, dtype=np.float64)
    if method == "auto":
        method = "exact" if n * m <= max_exact_entries else "sinkhorn"
    if method == "exact":
        value, logd = ot.emd2(a_, b_, c, log=True, numItermax=max(100_000, 50 * n * m))
        converged = int(logd.get("result_code", 1)) == 1
        if not converged:
            log.warning("exact OT did not reach optimality: %s", logd.get("warning"))
        return OTResult(float(value), "exact", np.asarray(logd["u"]), np.asarray(logd["v"]), 0.0, converged)

    cmax = float(c.max())
    eps = reg * cmax if cmax > 0 else reg
    if eps <= 0:
        raise TarotInputError(f"Sinkhorn regularisation must be > 0, got reg={reg!r}")
    ct = torch.from_numpy(c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, logd = ot.sinkhorn(
            torch.from_numpy(a_),
            torch.from_numpy(b_),
            ct,
            eps,
            method="sinkhorn_log",
            numItermax=max_iter,
            stopThr=tol,
            log=True,
        )
    converged = not any("converge" in str(w.message) for w in caught)
    if not converged:
        log.warning("Sinkhorn did not converge in %d iterations (eps=%.3g)", max_iter, eps)
    value = float((plan * ct).sum())
    f = (eps * logd["log_u"]).numpy()
    g = (eps * logd["log_v"]).numpy()
    return OTResult(value, "sinkhorn", f, g, eps, converged)
