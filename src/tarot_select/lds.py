r"""Linear datamodeling score (LDS) of attribution scores, and the scorers it compares.

LDS (Park et al., 2023, "TRAK"; used by TAROT, Sec. 5.1 and Fig. 4) asks how well an
attribution matrix predicts what happens when a model is retrained on random subsets of
its training set.

Protocol
--------
1. Draw :math:`M` random subsets :math:`S_1, \dots, S_M` of the :math:`n` training
   examples, each of a fixed size :math:`k = \operatorname{round}(\alpha n)`
   (:func:`subset_masks`, boolean masks of shape ``(M, n)``).
2. Train one model per subset and record its output :math:`f_j(S_s)` on every target
   example :math:`z_j` (for classifiers the correct-class margin, :func:`tarot_select.outputs.margin`):
   ``outputs`` of shape ``(M, m)``.
3. An attribution matrix :math:`\tau \in \mathbb{R}^{n\times m}` predicts
   :math:`g_j(S) = \sum_{i\in S}\tau_{ij}` (the paper's "average of attribution scores"
   differs by the constant factor :math:`1/k`, which no rank correlation sees).
4. :math:`\mathrm{LDS}_j = \rho_{\text{Spearman}}\big((g_j(S_s))_{s}, (f_j(S_s))_{s}\big)`
   and :math:`\mathrm{LDS} = \frac1{m'}\sum_j \mathrm{LDS}_j` over the :math:`m'` targets
   where it is defined (:func:`lds`).

Scorers
-------
Every scorer maps training features :math:`X` ``(n, d)`` and target features :math:`Z`
``(m, d)`` to :math:`\tau` ``(n, m)`` (:data:`ATTRIBUTION_METHODS`,
:func:`attribution_scores`); for LDS the features are (projected) gradients of the
*model output* (the margin), not of the loss (the workflow's LDS stages compute them).

``wfd``                    :math:`-\lVert \hat w(x_i) - \hat w(z_j)\rVert`, :math:`\hat w` = whiten
                           (fit on :math:`X`; ZCA by default) then unit-normalise (TAROT)
``wfd_no_whiten``          unit-normalise only (no centring, no whitening)
``wfd_no_norm``            whiten only
``wfd_no_whiten_no_norm``  :math:`-\lVert x_i - z_j\rVert`
``trak``                   :math:`\operatorname{diag}(q)\,X(X^\top X+\lambda I)^{-1}Z^\top` (TRAK)
``grad_dot``               :math:`X Z^\top` (TracIn at one checkpoint, "Grad-Dot")

Diagnostics (:data:`DIAGNOSTIC_METHODS`): not methods of the paper; they test whether TRAK's
factor :math:`q_i = 1 - p_{y_i}` (the probability that the model gets training example
:math:`i` wrong) accounts for the difference between TRAK and WFD:

``trak_no_q``              :math:`X(X^\top X+\lambda I)^{-1}Z^\top`, TRAK without :math:`\operatorname{diag}(q)`
``wfd_times_q``            :math:`q_i\,\langle \hat w(x_i), \hat w(z_j)\rangle`, the whitened cosine of
                           ``wfd`` (:math:`= 1 - \tfrac12\lVert \hat w(x_i) - \hat w(z_j)\rVert^2`)
                           times TRAK's :math:`q_i`

Ensembles over :math:`E` independently trained models average the per-model score
matrices (:func:`ensemble_scores`). Two methods are compared on the same targets by
:func:`lds_difference`, a paired bootstrap of the per-target difference of their LDS.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import torch
from scipy import linalg

from ._validate import check_pair
from .distance import pairwise_wfd
from .errors import TarotInputError
from .whiten import Whitener

__all__ = [
    "ATTRIBUTION_METHODS",
    "DIAGNOSTIC_METHODS",
    "LDSDifference",
    "LDSResult",
    "attribution_scores",
    "attribution_scores_many",
    "default_pairs",
    "ensemble_scores",
    "grad_dot_scores",
    "lds",
    "lds_difference",
    "spearman_columns",
    "subset_masks",
    "trak_scores",
    "wfd_scores",
    "whitened_cosine_scores",
]

logger = logging.getLogger(__name__)

#: Methods accepted by :func:`attribution_scores` and :func:`ensemble_scores`.
ATTRIBUTION_METHODS: Final[tuple[str, ...]] = (
    "wfd",
    "wfd_no_whiten",
    "wfd_no_norm",
    "wfd_no_whiten_no_norm",
    "trak",
    "grad_dot",
    "trak_no_q",
    "wfd_times_q",
)
#: Members of :data:`ATTRIBUTION_METHODS` that are diagnostics, not methods of the paper.
DIAGNOSTIC_METHODS: Final[tuple[str, ...]] = ("trak_no_q", "wfd_times_q")
#: ``method -> (whiten, normalize)`` for the WFD family.
_WFD_VARIANTS: Final[dict[str, tuple[bool, bool]]] = {
    "wfd": (True, True),
    "wfd_no_whiten": (False, True),
    "wfd_no_norm": (True, False),
    "wfd_no_whiten_no_norm": (False, False),
}
_WHITENINGS: Final[tuple[str, ...]] = ("zca", "cholesky")
_FIT_ON: Final[tuple[str, ...]] = ("train", "joint")
#: Factor on ``d * machine epsilon`` below which :func:`trak_scores` calls the system singular.
_MAX_RCOND_INV: Final[float] = 1e3
#: Fewest subsets for which a rank correlation across subsets is computed.
MIN_SUBSETS: Final[int] = 3


# --------------------------------------------------------------------------- subsets and outputs


def subset_masks(n_train: int, n_subsets: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    r"""Random training subsets of equal size, as boolean masks.

    Row :math:`s` marks a uniformly random subset of :math:`k = \operatorname{round}(\alpha n)`
    of the :math:`n` training examples (drawn without replacement, independently per row)
    from ``np.random.default_rng(seed)``.

    Parameters
    ----------
    n_train : int
        :math:`n`, number of training examples (>= 2).
    n_subsets : int
        :math:`M`, number of subsets (>= 1).
    fraction : float, default 0.5
        :math:`\alpha \in (0, 1)`; :math:`k` must satisfy :math:`1 \le k < n`.
    seed : int, default 0

    Returns
    -------
    np.ndarray, shape (n_subsets, n_train), bool
        Exactly :math:`k` True entries per row.
    """
    n = _positive_int(n_train, "n_train")
    n_sub = _positive_int(n_subsets, "n_subsets")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction < 1.0:
        raise TarotInputError(f"fraction must be a number in (0, 1), got {fraction!r}")
    k = round(float(fraction) * n)
    if not 1 <= k < n:
        raise TarotInputError(f"fraction={fraction} of n_train={n} gives subsets of {k}; need 1 <= size < n_train")
    rng = np.random.default_rng(_seed(seed))
    # The k smallest of n iid uniforms per row form a uniform k-subset.
    chosen = np.argpartition(rng.random((n_sub, n)), k - 1, axis=1)[:, :k]
    masks = np.zeros((n_sub, n), dtype=bool)
    np.put_along_axis(masks, chosen, True, axis=1)
    return masks


# --------------------------------------------------------------------------- LDS


@dataclass(frozen=True)
class LDSResult:
    """Result of :func:`lds`.

    Attributes
    ----------
    value : float
        Mean Spearman correlation over the valid targets (NaN if there are none).
    per_target : np.ndarray, shape (n_targets,)
        :math:`\\mathrm{LDS}_j`; NaN for excluded targets.
    std : float
        Bootstrap standard error of ``value`` (targets resampled with replacement).
    ci_low, ci_high : float
        Percentile bootstrap confidence interval of ``value`` at level ``ci``.
    ci : float
        Confidence level of ``ci_low`` / ``ci_high``.
    n_subsets : int
        :math:`M`.
    n_targets : int
        :math:`m`, all targets, excluded ones included.
    n_excluded : int
        Targets whose outputs or predictions are constant across the subsets.
    n_bootstrap : int
    """

    value: float
    per_target: np.ndarray = field(repr=False)
    std: float
    ci_low: float
    ci_high: float
    ci: float
    n_subsets: int
    n_targets: int
    n_excluded: int
    n_bootstrap: int

    @property
    def n_valid(self) -> int:
        """Targets that enter ``value``."""
        return self.n_targets - self.n_excluded

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without ``per_target``)."""
        return {
            "value": self.value,
            "std": self.std,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci": self.ci,
            "n_subsets": self.n_subsets,
            "n_targets": self.n_targets,
            "n_excluded": self.n_excluded,
            "n_bootstrap": self.n_bootstrap,
        }


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""Spearman rank correlation between matching columns of two arrays.

    Each column is ranked with :func:`scipy.stats.rankdata` (average ranks for ties), then

    .. math:: \rho_j = \frac{\sum_s (r_{sj}-\bar r_j)(q_{sj}-\bar q_j)}
                      {\sqrt{\sum_s (r_{sj}-\bar r_j)^2 \sum_s (q_{sj}-\bar q_j)^2}},

    the Pearson correlation of the ranks, as :func:`scipy.stats.spearmanr` computes it.

    Parameters
    ----------
    a, b : np.ndarray, shape (M, m)
        ``M >= 2`` observations (rows) of ``m`` variables (columns).

    Returns
    -------
    np.ndarray, shape (m,), float64
        NaN where a column of ``a`` or ``b`` is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise TarotInputError(f"need two 2-D arrays of the same shape, got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise TarotInputError(f"need at least 2 rows (observations), got {a.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise TarotInputError("spearman_columns: inputs hold NaN or Inf")
    from scipy.stats import rankdata  # scipy.stats takes ~0.7 s to import; only LDS needs it

    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    num = (ra * rb).sum(axis=0)
    den = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    out = np.full(a.shape[1], np.nan)
    ok = den > 0
    out[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return out


def lds(
    scores: np.ndarray,
    masks: np.ndarray,
    outputs: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> LDSResult:
    r"""Linear datamodeling score of an attribution matrix.

    Predictions :math:`G = S\,\tau` (``masks @ scores``, shape ``(M, m)``), i.e.
    :math:`G_{sj} = \sum_{i \in S_s} \tau_{ij}`; then
    :math:`\mathrm{LDS}_j = \rho_{\text{Spearman}}(G_{:,j}, F_{:,j})` with :math:`F` the
    recorded ``outputs`` (:func:`spearman_columns`), and
    :math:`\mathrm{LDS} = \operatorname{mean}_j \mathrm{LDS}_j`.

    Excluded targets
        A target whose outputs, or whose predictions, take a single value over all
        :math:`M` subsets has no rank correlation. It gets NaN in ``per_target``, is
        counted in ``n_excluded`` (with a warning) and is left out of the mean and of the
        bootstrap. If every target is excluded, ``value`` and the interval are NaN.

    Uncertainty
        ``n_bootstrap`` resamples of the valid targets with replacement (fixed subsets and
        models), ``std`` their standard deviation and ``[ci_low, ci_high]`` their
        percentile interval. This covers the choice of targets, not the retraining noise.

    Parameters
    ----------
    scores : np.ndarray, shape (n_train, n_target)
        Attribution :math:`\tau_{ij}` of training example :math:`i` to target :math:`j`
        (larger: more positive effect on the target's output).
    masks : np.ndarray, shape (M, n_train), bool
        Training subsets, e.g. from :func:`subset_masks`; ``M >= 3``.
    outputs : np.ndarray, shape (M, n_target)
        Output of the model trained on subset :math:`s` at target :math:`j`.
    n_bootstrap : int, default 1000
        0 skips the bootstrap (``std`` and the interval are NaN).
    seed : int, default 0
        Seed of the bootstrap.
    ci : float, default 0.95
        Level of the percentile interval, in (0, 1).

    Returns
    -------
    LDSResult
    """
    tau = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(masks)
    out = np.asarray(outputs, dtype=np.float64)
    if tau.ndim != 2 or tau.size == 0:
        raise TarotInputError(f"scores must be a non-empty 2-D array (n_train, n_target), got shape {tau.shape}")
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise TarotInputError(f"masks must be a 2-D bool array (n_subsets, n_train), got {mask.dtype} {mask.shape}")
    n_sub, n_train = mask.shape
    n_target = tau.shape[1]
    if tau.shape[0] != n_train:
        raise TarotInputError(f"scores have {tau.shape[0]} training rows but masks have {n_train} columns")
    if out.shape != (n_sub, n_target):
        raise TarotInputError(f"outputs must have shape (n_subsets, n_target) = {(n_sub, n_target)}, got {out.shape}")
    if n_sub < MIN_SUBSETS:
        raise TarotInputError(f"need at least {MIN_SUBSETS} subsets for a rank correlation, got {n_sub}")
    if not np.isfinite(tau).all():
        raise TarotInputError("scores hold NaN or Inf")
    if not np.isfinite(out).all():
        raise TarotInputError("outputs hold NaN or Inf")
    n_boot = _non_negative_int(n_bootstrap, "n_bootstrap")
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0.0 < ci < 1.0:
        raise TarotInputError(f"ci must be a number in (0, 1), got {ci!r}")

    predictions = mask.astype(np.float64) @ tau
    per_target = spearman_columns(predictions, out)
    valid = np.isfinite(per_target)
    n_excluded = int((~valid).sum())
    if n_excluded:
        logger.warning(
            "LDS: %d of %d targets have constant outputs or predictions across %d subsets; excluded",
            n_excluded,
            n_target,
            n_sub,
        )
    nan = float("nan")
    if not valid.any():
        return LDSResult(nan, per_target, nan, nan, nan, float(ci), n_sub, n_target, n_excluded, n_boot)
    values = per_target[valid]
    value = float(values.mean())
    std, lo, hi = _bootstrap(values, n_boot, _seed(seed), float(ci))
    logger.info("LDS %.4f over %d targets (%d excluded), %d subsets", value, len(values), n_excluded, n_sub)
    return LDSResult(value, per_target, std, lo, hi, float(ci), n_sub, n_target, n_excluded, n_boot)


@dataclass(frozen=True)
class LDSDifference:
    """Result of :func:`lds_difference`: LDS of method ``a`` minus LDS of method ``b``.

    Attributes
    ----------
    value : float
        :math:`\\bar\\Delta`, mean over the common targets of
        :math:`\\Delta_j = \\mathrm{LDS}^a_j - \\mathrm{LDS}^b_j` (NaN if there are none).
    std : float
        Bootstrap standard error of ``value``.
    ci_low, ci_high : float
        Percentile bootstrap interval of ``value`` at level ``ci``.
    ci : float
    n_targets : int
        Targets valid for both methods (the ones that enter ``value``).
    n_excluded : int
        Targets excluded for either method.
    n_bootstrap : int
    """

    value: float
    std: float
    ci_low: float
    ci_high: float
    ci: float
    n_targets: int
    n_excluded: int
    n_bootstrap: int

    @property
    def excludes_zero(self) -> bool:
        """True if the interval lies strictly on one side of 0 (False when it is NaN)."""
        return bool(self.ci_low > 0.0 or self.ci_high < 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "diff": self.value,
            "std": self.std,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci": self.ci,
            "n_targets": self.n_targets,
            "n_excluded": self.n_excluded,
            "n_bootstrap": self.n_bootstrap,
        }


def lds_difference(
    a: LDSResult | np.ndarray,
    b: LDSResult | np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> LDSDifference:
    r"""Paired bootstrap of the difference between two methods' LDS on the same targets.

    With per-target scores :math:`\mathrm{LDS}^a_j`, :math:`\mathrm{LDS}^b_j` (``per_target``
    of two :func:`lds` results on the same subsets, outputs and targets) and :math:`T` the
    targets valid for both,

    .. math:: \Delta_j = \mathrm{LDS}^a_j - \mathrm{LDS}^b_j,\qquad
              \bar\Delta = \frac1{|T|}\sum_{j\in T}\Delta_j .

    Each bootstrap resample draws :math:`|T|` indices of :math:`T` with replacement and
    uses *the same* indices for both methods, i.e. it resamples :math:`\Delta_j`; the
    spread therefore leaves out the target-to-target variation the two methods share
    (a hard target is hard for both), which separate per-method intervals include. The
    resamples are those of :func:`lds` with the same ``seed`` (same generator, same draw
    order), so when both methods have the same valid targets every resample of
    :math:`\bar\Delta` is exactly the difference of the two methods' resampled LDS.
    :math:`\bar\Delta` equals ``a.value - b.value`` whenever the two exclude the same
    targets. A method against itself gives exactly 0 with a zero-width interval.

    Parameters
    ----------
    a, b : LDSResult or np.ndarray, shape (n_target,)
        Results of :func:`lds`, or their ``per_target`` arrays (NaN = excluded target).
    n_bootstrap : int, default 1000
        0 skips the bootstrap (``std`` and the interval are NaN).
    seed : int, default 0
    ci : float, default 0.95
        Level of the percentile interval, in (0, 1).

    Returns
    -------
    LDSDifference
    """
    pa = np.asarray(a.per_target if isinstance(a, LDSResult) else a, dtype=np.float64)
    pb = np.asarray(b.per_target if isinstance(b, LDSResult) else b, dtype=np.float64)
    if pa.ndim != 1 or pa.shape != pb.shape or pa.size == 0:
        raise TarotInputError(f"need two per-target arrays of the same length, got shapes {pa.shape} and {pb.shape}")
    n_boot = _non_negative_int(n_bootstrap, "n_bootstrap")
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0.0 < ci < 1.0:
        raise TarotInputError(f"ci must be a number in (0, 1), got {ci!r}")
    common = np.isfinite(pa) & np.isfinite(pb)
    n_common = int(common.sum())
    nan = float("nan")
    if n_common == 0:
        return LDSDifference(nan, nan, nan, nan, float(ci), 0, pa.size, n_boot)
    delta = pa[common] - pb[common]
    std, lo, hi = _bootstrap(delta, n_boot, _seed(seed), float(ci))
    return LDSDifference(float(delta.mean()), std, lo, hi, float(ci), n_common, pa.size - n_common, n_boot)


def default_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Method pairs ``(a, b)`` whose difference ``LDS(a) - LDS(b)`` the LDS report shows.

    Of those present in ``methods``, in this order: ``("wfd", m)`` for every other method
    ``m`` (so WFD − TRAK among them), then ``("trak", "trak_no_q")`` (what TRAK's
    :math:`1 - p_y` adds) and ``("wfd_times_q", "trak")`` (whether WFD with TRAK's factor
    closes the gap).
    """
    present = list(dict.fromkeys(methods))
    pairs: list[tuple[str, str]] = []
    if "wfd" in present:
        pairs += [("wfd", m) for m in present if m != "wfd"]
    for a, b in (("trak", "trak_no_q"), ("wfd_times_q", "trak")):
        if a in present and b in present:
            pairs.append((a, b))
    return pairs


# --------------------------------------------------------------------------- scorers


def wfd_scores(
    train_features: np.ndarray,
    target_features: np.ndarray,
    *,
    whiten: bool = True,
    normalize: bool = True,
    whitening: str = "zca",
    fit_on: str = "train",
    eps: float = 1e-5,
) -> np.ndarray:
    r"""Negative (whitened) feature distance, TAROT's WFD as an attribution.

    .. math:: \tau_{ij} = -\lVert \hat w(x_i) - \hat w(z_j)\rVert,\qquad
              \hat w(x) = \frac{W^\top(x-\mu)}{\lVert W^\top(x-\mu)\rVert}

    with :math:`\mu`, :math:`W` from :class:`~tarot_select.whiten.Whitener` (relative
    ridge ``eps``). Smaller distance means more influence, hence the minus sign.

    Cholesky and ZCA whitening differ by an orthogonal rotation of the whitened
    coordinates, so with the same fit they give the same distances up to rounding.

    Parameters
    ----------
    train_features : np.ndarray, shape (n, d)
    target_features : np.ndarray, shape (m, d)
        Gradients of the model output (for LDS) in the same coordinates.
    whiten : bool, default True
        False: no centring and no whitening (the "w/o whitening" ablation).
    normalize : bool, default True
        False: skip the unit normalisation (the "w/o normalisation" ablation).
    whitening : {"zca", "cholesky"}, default "zca"
        ZCA as in TAROT's LDS experiments.
    fit_on : {"train", "joint"}, default "train"
        Estimate :math:`\mu, \Sigma` on the training features only, or on train ∪ targets
        (as TAROT's selection pipeline does).
    eps : float, default 1e-5
        Relative ridge :math:`\lambda = \varepsilon\,\operatorname{tr}\Sigma_0 / d`.

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    x, z = _whitened(train_features, target_features, whiten, normalize, whitening, fit_on, eps)
    return -pairwise_wfd(x, z)


def whitened_cosine_scores(
    train_features: np.ndarray,
    target_features: np.ndarray,
    train_weights: np.ndarray | None = None,
    *,
    whitening: str = "zca",
    fit_on: str = "train",
    eps: float = 1e-5,
) -> np.ndarray:
    r"""Whitened cosine times TRAK's :math:`q`: the diagnostic ``wfd_times_q``.

    .. math:: \tau_{ij} = q_i\,\langle \hat w(x_i), \hat w(z_j)\rangle
              = q_i\Big(1 - \tfrac12\lVert \hat w(x_i) - \hat w(z_j)\rVert^2\Big),
              \qquad q_i = 1 - p_{y_i}(x_i),

    with :math:`\hat w` the whitened, unit-normalised features of ``wfd``
    (:func:`wfd_scores`, same ``whitening``, ``fit_on`` and ``eps``). The cosine is an
    affine, decreasing function of the squared WFD, so without :math:`q` it ranks the
    training examples of each target exactly as ``wfd`` does; it is used instead of
    :math:`-\lVert\cdot\rVert` because the latter is never positive, and multiplying a
    non-positive score by :math:`q_i \in [0, 1]` would move well-fitted examples
    (:math:`q_i \approx 0`) *up* to the top score 0 rather than shrink their influence as
    TRAK's :math:`\operatorname{diag}(q)` does. Not a method of the paper: it tests whether
    :math:`q` alone explains TRAK's lead over WFD.

    Parameters
    ----------
    train_features : np.ndarray, shape (n, d)
    target_features : np.ndarray, shape (m, d)
    train_weights : np.ndarray, shape (n,), optional
        :math:`q`; finite. None means :math:`q = 1` (the plain whitened cosine).
    whitening, fit_on, eps
        As in :func:`wfd_scores`.

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    x, z = _whitened(train_features, target_features, True, True, whitening, fit_on, eps)
    q = _train_weights(train_weights, x.shape[0])
    scores = x @ z.T
    if q is not None:
        scores *= q[:, None]
    return scores


def _whitened(
    train_features: np.ndarray,
    target_features: np.ndarray,
    whiten: bool,
    normalize: bool,
    whitening: str,
    fit_on: str,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Train and target features through one :class:`Whitener` (float64)."""
    check_pair(train_features, target_features)
    if whitening not in _WHITENINGS:
        raise TarotInputError(f"unknown whitening {whitening!r}; choose one of {', '.join(_WHITENINGS)}")
    if fit_on not in _FIT_ON:
        raise TarotInputError(f"fit_on must be one of {', '.join(_FIT_ON)}, got {fit_on!r}")
    w = Whitener(method=whitening if whiten else "none", normalize=normalize, eps=eps, compute_dtype=np.float64)
    if fit_on == "train":
        w.fit(train_features)
    else:
        w.fit(train_features, target_features)
    return w.transform(train_features), w.transform(target_features)


def trak_scores(
    train_features: np.ndarray,
    target_features: np.ndarray,
    train_weights: np.ndarray | None = None,
    *,
    ridge: float = 1e-4,
) -> np.ndarray:
    r"""TRAK attribution for one model.

    .. math:: \tau = Q\, X (X^\top X + \lambda I)^{-1} Z^\top,\qquad
              Q = \operatorname{diag}(q),\quad
              \lambda = \text{ridge}\cdot\operatorname{tr}(X^\top X)/d ,

    where the rows of :math:`X` and :math:`Z` are (projected) gradients of the *model
    output* (for classifiers the margin, :func:`tarot_select.outputs.margin`), not of the loss, and
    :math:`q_i = 1 - p_{y_i}(x_i)`, the probability the model does *not* give the correct
    class of training example :math:`i` (TRAK's out-to-loss term,
    :math:`-\partial L/\partial f`). ``train_weights=None`` means :math:`q = 1`.

    Parameters
    ----------
    train_features : np.ndarray, shape (n, d)
    target_features : np.ndarray, shape (m, d)
    train_weights : np.ndarray, shape (n,), optional
        :math:`q`; finite.
    ridge : float, default 1e-4
        Relative ridge (>= 0); 0 needs :math:`X^\top X` to be invertible.

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    check_pair(train_features, target_features)
    x = np.asarray(train_features, dtype=np.float64)
    z = np.asarray(target_features, dtype=np.float64)
    n, d = x.shape
    q = _train_weights(train_weights, n)
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not math.isfinite(ridge) or ridge < 0:
        raise TarotInputError(f"ridge must be a finite number >= 0, got {ridge!r}")
    gram = x.T @ x
    lam = float(ridge) * float(np.trace(gram)) / d
    singular = TarotInputError(
        f"X^T X + lambda I is singular (n={n}, d={d}, lambda={lam:.3g}); use ridge > 0 or fewer dimensions"
    )
    try:
        factor = linalg.cho_factor(gram + lam * np.eye(d), lower=True)
    except linalg.LinAlgError:
        raise singular from None
    # cond(M) ~ (max / min diagonal of its Cholesky factor)^2; beyond ~1e12 the solve is noise.
    pivots = np.abs(np.diag(factor[0]))
    if pivots.min() ** 2 <= _MAX_RCOND_INV * d * np.finfo(np.float64).eps * pivots.max() ** 2:
        raise singular
    scores = x @ linalg.cho_solve(factor, z.T)
    if q is not None:
        scores *= q[:, None]
    return scores


def grad_dot_scores(train_features: np.ndarray, target_features: np.ndarray) -> np.ndarray:
    r"""Gradient inner products :math:`\tau = X Z^\top` (TracIn at one checkpoint, "Grad-Dot").

    Parameters
    ----------
    train_features : np.ndarray, shape (n, d)
    target_features : np.ndarray, shape (m, d)

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    check_pair(train_features, target_features)
    return np.asarray(train_features, dtype=np.float64) @ np.asarray(target_features, dtype=np.float64).T


def attribution_scores(
    method: str,
    train_features: np.ndarray,
    target_features: np.ndarray,
    train_weights: np.ndarray | None = None,
    *,
    whitening: str = "zca",
    fit_on: str = "train",
    eps: float = 1e-5,
    ridge: float = 1e-4,
) -> np.ndarray:
    """Attribution matrix of one model by ``method`` (see the module docstring).

    ``trak_no_q`` is :func:`trak_scores` without weights; ``wfd_times_q`` is
    :func:`whitened_cosine_scores` with them (both diagnostics, :data:`DIAGNOSTIC_METHODS`).

    Parameters
    ----------
    method : str
        One of :data:`ATTRIBUTION_METHODS`.
    train_features : np.ndarray, shape (n, d)
    target_features : np.ndarray, shape (m, d)
    train_weights : np.ndarray, shape (n,), optional
        TRAK's :math:`q_i = 1 - p_{y_i}`; only ``trak`` and ``wfd_times_q`` use it (None
        means :math:`q = 1`), the other methods ignore it.
    whitening, fit_on, eps
        Passed to :func:`wfd_scores` (``wfd`` and ``wfd_no_norm``) and
        :func:`whitened_cosine_scores` (``wfd_times_q``).
    ridge
        Passed to :func:`trak_scores` (``trak`` and ``trak_no_q``).

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    if method in _WFD_VARIANTS:
        whiten, normalize = _WFD_VARIANTS[method]
        return wfd_scores(
            train_features,
            target_features,
            whiten=whiten,
            normalize=normalize,
            whitening=whitening,
            fit_on=fit_on,
            eps=eps,
        )
    if method == "trak":
        return trak_scores(train_features, target_features, train_weights, ridge=ridge)
    if method == "trak_no_q":
        return trak_scores(train_features, target_features, None, ridge=ridge)
    if method == "wfd_times_q":
        return whitened_cosine_scores(
            train_features, target_features, train_weights, whitening=whitening, fit_on=fit_on, eps=eps
        )
    if method == "grad_dot":
        return grad_dot_scores(train_features, target_features)
    raise TarotInputError(f"unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}")


#: Methods whose features go through the fitted whitening (shared by :func:`attribution_scores_many`).
_WHITENED: Final[tuple[str, ...]] = ("wfd", "wfd_no_norm", "wfd_times_q")


def attribution_scores_many(
    methods: Sequence[str],
    train_features: np.ndarray,
    target_features: np.ndarray,
    train_weights: np.ndarray | None = None,
    *,
    whitening: str = "zca",
    fit_on: str = "train",
    eps: float = 1e-5,
    ridge: float = 1e-4,
) -> dict[str, np.ndarray]:
    r"""Attribution matrices of several methods on one model, sharing the expensive steps.

    The same matrices as ``{m: attribution_scores(m, ...) for m in methods}`` (equal up to
    rounding: last-bit differences, about 10⁻¹⁶), but the whitening of ``wfd``, ``wfd_no_norm`` and
    ``wfd_times_q`` is fitted once (one eigendecomposition or Cholesky factorisation of
    the :math:`d \times d` covariance instead of one per method), and ``trak`` is
    :math:`\operatorname{diag}(q)` times ``trak_no_q``'s matrix, solved once.

    Parameters
    ----------
    methods : sequence of str
        Members of :data:`ATTRIBUTION_METHODS` (duplicates are computed once).
    train_features, target_features, train_weights, whitening, fit_on, eps, ridge
        As in :func:`attribution_scores`.

    Returns
    -------
    dict of str to np.ndarray, shape (n, m), float64
        One entry per distinct method, in the order given; no two entries share memory.
    """
    wanted = list(dict.fromkeys(methods))
    unknown = [m for m in wanted if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise TarotInputError(f"unknown attribution method(s) {unknown}; choose from {', '.join(ATTRIBUTION_METHODS)}")
    out: dict[str, np.ndarray] = {}
    if any(m in _WHITENED for m in wanted):
        xw, zw = _whitened(train_features, target_features, True, False, whitening, fit_on, eps)
        if "wfd_no_norm" in wanted:
            out["wfd_no_norm"] = -pairwise_wfd(xw, zw)
        if "wfd" in wanted or "wfd_times_q" in wanted:
            xn, zn = _unit_rows(xw), _unit_rows(zw)
            if "wfd" in wanted:
                out["wfd"] = -pairwise_wfd(xn, zn)
            if "wfd_times_q" in wanted:
                q = _train_weights(train_weights, xn.shape[0])
                cosine = xn @ zn.T
                if q is not None:
                    cosine *= q[:, None]
                out["wfd_times_q"] = cosine
    if "trak" in wanted or "trak_no_q" in wanted:
        plain = trak_scores(train_features, target_features, None, ridge=ridge)
        if "trak" in wanted:
            q = _train_weights(train_weights, plain.shape[0])
            out["trak"] = plain.copy() if q is None else plain * q[:, None]
        if "trak_no_q" in wanted:
            out["trak_no_q"] = plain
    for method in wanted:
        if method not in out:
            out[method] = attribution_scores(
                method,
                train_features,
                target_features,
                train_weights,
                whitening=whitening,
                fit_on=fit_on,
                eps=eps,
                ridge=ridge,
            )
    return {m: out[m] for m in wanted}


def ensemble_scores(
    method: str,
    feature_sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    **kwargs: Any,
) -> np.ndarray:
    r"""Mean attribution matrix over an ensemble of independently trained models.

    .. math:: \tau = \frac1E \sum_{e=1}^{E} \tau^{(e)},\qquad
              \tau^{(e)} = \texttt{attribution\_scores}(\text{method}, X_e, Z_e, q_e)

    For TRAK this averages whole per-model score matrices; the TRAK paper averages the
    feature term and :math:`Q` separately, which differs only through :math:`Q`.

    Parameters
    ----------
    method : str
        One of :data:`ATTRIBUTION_METHODS`.
    feature_sets : sequence of (train_features, target_features, train_weights)
        One entry per model: arrays of shape ``(n, d_e)``, ``(m, d_e)`` and ``(n,)`` or None.
    **kwargs
        Keyword options of :func:`attribution_scores`.

    Returns
    -------
    np.ndarray, shape (n, m), float64
    """
    if isinstance(feature_sets, (str, bytes)) or not isinstance(feature_sets, Sequence) or not feature_sets:
        raise TarotInputError("feature_sets must be a non-empty sequence of (train, target, weights) triples")
    total = np.zeros(0)
    for e, entry in enumerate(feature_sets):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise TarotInputError(f"feature_sets[{e}] must be a (train, target, weights) triple")
        scores = attribution_scores(method, entry[0], entry[1], entry[2], **kwargs)
        if e == 0:
            total = scores
        elif scores.shape != total.shape:
            raise TarotInputError(f"feature_sets[{e}] gives scores of shape {scores.shape}, expected {total.shape}")
        else:
            total += scores
    return total / len(feature_sets)


# --------------------------------------------------------------------------- helpers


def _bootstrap(values: np.ndarray, n_boot: int, seed: int, ci: float) -> tuple[float, float, float]:
    """``(std, ci_low, ci_high)`` of the mean of ``values`` over ``n_boot`` resamples with
    replacement (NaN for ``n_boot = 0``); fixed draw order, shared by :func:`lds` and
    :func:`lds_difference`."""
    nan = float("nan")
    if n_boot == 0:
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # bounded memory for many targets
        stop = min(start + 256, n_boot)
        boot[start:stop] = values[rng.integers(0, len(values), size=(stop - start, len(values)))].mean(axis=1)
    std = float(boot.std(ddof=1)) if n_boot > 1 else 0.0
    lo, hi = (float(q) for q in np.quantile(boot, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0]))
    return std, lo, hi


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise TarotInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise TarotInputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TarotInputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, float64 (torch; the same formula as :meth:`Whitener.transform`, not
    the same operations, so the two agree to rounding)."""
    t = torch.from_numpy(np.array(a, dtype=np.float64))
    t.div_(torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float64).tiny))
    return t.numpy()


def _train_weights(weights: np.ndarray | None, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    q = np.asarray(weights, dtype=np.float64)
    if q.shape != (n,):
        raise TarotInputError(f"train_weights must have shape ({n},), got {q.shape}")
    if not np.isfinite(q).all():
        raise TarotInputError("train_weights hold NaN or Inf")
    return q
