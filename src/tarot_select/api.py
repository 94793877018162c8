"""One entry point for every selection method: :func:`select`.

It validates the input before any work, whitens candidates ∪ targets jointly (for
TAROT/OTM and for the evaluation of every method), runs the method, optionally
weights the result and measures its OT distance to the target, all in one
:class:`~tarot_select.result.Selection`.

Influence Distillation (``infdist``, :mod:`tarot_select.infdist`) takes other inputs:
candidate *embeddings*, landmark gradient features and target gradient features; it is
weighted and evaluated only on precomputed WFD features (``wfd_features``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ._validate import as_array, check_groups, check_int, check_pair, check_real, resolve_budget
from .baselines import dsdm_scores, less_scores, random_selection, select_by_scores
from .distance import OT_METHODS, OTMethod, ot_distance
from .errors import TarotInputError
from .infdist import InfdistOptions
from .infdist import _check_inputs as _check_infdist_inputs
from .infdist import _distill as _infdist
from .io import take_rows
from .knn import Neighbors
from .result import Selection
from .select import select_fixed_size, select_otm
from .weight import optimal_weights, potential_counts
from .whiten import WHITEN_METHODS, Whitener, WhitenMethod

__all__ = ["METHODS", "WEIGHTINGS", "select"]

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("tarot", "otm", "random", "dsdm", "less", "infdist")
WEIGHTINGS: tuple[str, ...] = ("potential", "optimal")

#: Largest selection × targets OT problem ``evaluate`` solves (2³⁰ entries, a 4 GiB float32
#: cost matrix); the selection itself has no such bound.
EVALUATE_MAX_ENTRIES = 1 << 30


def select(
    method: str,
    candidates: np.ndarray,
    targets: np.ndarray,
    *,
    budget: int | None = None,
    ratio: float | None = None,
    whiten: WhitenMethod = "cholesky",
    normalize: bool = True,
    eps: float = 1e-5,
    seed: int = 0,
    weighting: Literal["potential", "optimal"] | None = None,
    repeat: float = 1.0,
    n_folds: int = 10,
    patience: int = 1,
    ot_method: OTMethod = "auto",
    reg: float = 0.01,
    target_groups: np.ndarray | None = None,
    checkpoint_dims: Sequence[int] | None = None,
    checkpoint_weights: Sequence[float] | None = None,
    dsdm_ridge: float = 1e-4,
    train_weights: np.ndarray | None = None,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    infdist: InfdistOptions | None = None,
    wfd_features: tuple[np.ndarray, np.ndarray] | None = None,
    neighbors: Neighbors | None = None,
    evaluate: bool = True,
    progress: bool = False,
    workers: int = 1,
) -> Selection:
    """Select from ``candidates`` the data that best serves ``targets``.

    Parameters
    ----------
    method : {"tarot", "otm", "random", "dsdm", "less", "infdist"}
        ``tarot`` is fixed-size OT selection, ``otm`` chooses its own size, ``infdist``
        is Influence Distillation (:func:`~tarot_select.infdist.influence_distillation`).
    candidates : np.ndarray, shape (n, d)
        Projected gradient features of the pool (may be memory-mapped). For ``infdist``:
        the pool's embeddings, shape (n, e).
    targets : np.ndarray, shape (m, d)
        Features of the target set, same projection (for ``infdist``: the projection of
        the landmark features).
    budget, ratio
        Exactly one for every method but ``otm`` (which takes neither).
    whiten, normalize, eps
        WFD settings (:class:`~tarot_select.whiten.Whitener`); used by ``tarot``/``otm``
        and for the OT distance reported for every method.
    seed : int
        Seeds ``random`` and the OTM folds.
    weighting : {"potential", "optimal"}, optional
        Add weights to the selection (:mod:`tarot_select.weight`).
    repeat : float
        Repetition factor R ≥ 1 of potential weighting (the counts sum to round(R·s)
        for s selected samples).
    n_folds : int
        ``otm`` only: folds of the target set (at least 2).
    patience : int
        ``otm`` only: rounds without a new minimum before a fold stops (1: the first rise).
    ot_method : {"auto", "exact", "sinkhorn"}
        OT solver of the selection (fill, OTM rounds), the weighting and the evaluation;
        ``auto`` asks :func:`~tarot_select.distance.choose_solver`.
    reg : float
        Sinkhorn's regularisation relative to the largest cost.
    target_groups : np.ndarray, shape (m,), optional
        Subtask label per target (``less``).
    checkpoint_dims, checkpoint_weights
        Feature blocks per checkpoint (``dsdm`` and ``less``) and their weights (``less``;
        DsDm averages its blocks equally); for ``infdist`` those of the landmark and
        target features.
    dsdm_ridge : float
        ``dsdm`` only: ridge of TRAK's kernel, relative to its mean diagonal
        (:func:`~tarot_select.baselines.dsdm_scores`).
    train_weights : np.ndarray, shape (n,) or (n, n_checkpoints), optional
        ``dsdm`` with TRAK's out-to-loss factor :math:`q_i = 1 - p_{y_i}` (per checkpoint),
        for candidates/targets that are model-*output* (margin) gradients.
    landmarks : (np.ndarray, np.ndarray), optional
        ``infdist`` only, and required there: the landmarks' pool indices, shape (l,),
        and their gradient features, shape (l, d) (same projection as ``targets``).
    infdist : InfdistOptions, optional
        ``infdist`` settings (kernel, bandwidth, damping, strategy, seed); if None,
        ``InfdistOptions(seed=seed)``.
    wfd_features : (np.ndarray, np.ndarray), optional
        Precomputed WFD features (whitened, normalised) of candidates and targets, e.g.
        from the workflow's whitening stage. When given, ``whiten``/``normalize``/``eps``
        are not used and these drive ``tarot``/``otm``, weighting and evaluation, while
        ``candidates``/``targets`` still feed ``dsdm`` and ``less``. For ``infdist``
        these alone allow weighting and the OT distance (without them the selection is
        not evaluated, ``ot_distance`` stays None, and weighting is refused).
    neighbors : Neighbors, optional
        Nearest WFD candidates of every target, precomputed on the same WFD features
        (the workflow's whitening stage writes them); ``tarot``/``otm`` then skip their
        own search unless they need deeper ranks. Results do not change.
    evaluate : bool
        Compute the OT distance of the selection to the target (whitened space); skipped,
        with a warning and ``info["ot"]["skipped"]``, when the selection × targets problem
        exceeds :data:`EVALUATE_MAX_ENTRIES` (pools of pretraining size).
    progress : bool
        Progress bars (tqdm) on the long steps.
    workers : int
        ``otm`` only: folds run on this many forked processes at once (same selection).

    Returns
    -------
    Selection
    """
    if method not in METHODS:
        raise TarotInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    candidates = as_array(candidates, "candidates")
    targets = as_array(targets, "targets")
    eps = check_real(eps, "eps", 0.0)
    reg = check_real(reg, "reg", 0.0, low_open=True)
    repeat = check_real(repeat, "repeat (the repetition factor)", 1.0)
    dsdm_ridge = check_real(dsdm_ridge, "dsdm_ridge", 0.0)
    seed = check_int(seed, "seed", 0)
    workers = check_int(workers, "workers", 1)
    n_folds = check_int(n_folds, "n_folds", 2)
    patience = check_int(patience, "patience", 1)
    for flag, name in ((normalize, "normalize"), (evaluate, "evaluate"), (progress, "progress")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TarotInputError(f"{name} must be True or False, got {flag!r}")
    if checkpoint_dims is not None:
        checkpoint_dims = [check_int(d, "checkpoint_dims entry", 1) for d in checkpoint_dims]
    if checkpoint_weights is not None:
        checkpoint_weights = [check_real(w, "checkpoint_weights entry", 0.0, low_open=True) for w in checkpoint_weights]
    if target_groups is not None:
        target_groups = check_groups(target_groups, targets.shape[0] if targets.ndim else -1)
    if wfd_features is not None:
        if not isinstance(wfd_features, (tuple, list)) or len(wfd_features) != 2:
            raise TarotInputError("wfd_features must be a pair (candidate features, target features)")
        wfd_features = (as_array(wfd_features[0], "WFD candidates"), as_array(wfd_features[1], "WFD targets"))
    if neighbors is not None and not isinstance(neighbors, Neighbors):
        raise TarotInputError(f"neighbors must be a Neighbors object, got {type(neighbors).__name__}")
    if whiten not in WHITEN_METHODS:
        raise TarotInputError(f"unknown whitening {whiten!r}; choose one of {', '.join(WHITEN_METHODS)}")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise TarotInputError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if ot_method not in OT_METHODS:
        raise TarotInputError(f"unknown OT method {ot_method!r}; choose one of {', '.join(OT_METHODS)}")
    inf_inputs = None
    if method == "infdist":
        if landmarks is None:
            raise TarotInputError(
                "infdist needs landmarks=(indices, features): the landmarks' pool indices and gradient features"
            )
        if not isinstance(landmarks, (tuple, list)) or len(landmarks) != 2:
            raise TarotInputError("landmarks must be a pair (landmark indices, landmark features)")
        if weighting is not None and wfd_features is None:
            raise TarotInputError(f"weighting {weighting!r} an infdist selection needs wfd_features (WFD features)")
        if infdist is None:
            infdist = InfdistOptions(seed=seed)
        # the embeddings do not pair with the targets; landmark features do (checked here)
        inf_inputs = _check_infdist_inputs(
            candidates,
            landmarks[0],
            landmarks[1],
            targets,
            budget,
            infdist,
            checkpoint_dims,
            checkpoint_weights,
            ratio=ratio,
        )
        budget = inf_inputs.budget
    elif wfd_features is not None and method in ("tarot", "otm"):
        # only the WFD features are read (and checked below); the raw ones must just fit
        if candidates.ndim != 2 or targets.ndim != 2 or candidates.shape[1] != targets.shape[1]:
            raise TarotInputError(f"candidates {candidates.shape} and targets {targets.shape} do not pair up")
    else:
        check_pair(candidates, targets)
    n = candidates.shape[0]
    if method == "otm":
        if budget is not None or ratio is not None:
            raise TarotInputError("otm chooses its own size: give neither budget nor ratio")
    elif method != "infdist":
        budget = resolve_budget(n, budget, ratio)
    if method == "infdist" and wfd_features is None:
        evaluate = False  # no WFD space to measure in (and no whitening of embeddings)

    timings: dict[str, float] = {}
    needs_wfd = method in ("tarot", "otm") or evaluate or weighting is not None
    cand_w = targ_w = None
    whitener = Whitener(whiten, normalize=normalize, eps=eps)
    if wfd_features is not None:
        cand_w, targ_w = wfd_features
        if cand_w.shape[0] != n or targ_w.shape[0] != targets.shape[0]:
            raise TarotInputError(
                f"WFD features have {cand_w.shape[0]} candidates and {targ_w.shape[0]} targets; "
                f"expected {n} and {targets.shape[0]}"
            )
        check_pair(cand_w, targ_w)
    elif needs_wfd:
        t0 = time.perf_counter()
        cand_w, targ_w = whitener.fit_transform(candidates, targets)
        timings["whiten"] = time.perf_counter() - t0

    # precomputed WFD features were scanned for NaN/Inf above; whitened ones are scanned again
    # (a float32 whitening can overflow), once, by the selection
    recheck = wfd_features is None
    t0 = time.perf_counter()
    if method == "tarot":
        sel = select_fixed_size(
            cand_w, targ_w, budget, ot_method=ot_method, reg=reg, progress=progress, neighbors=neighbors, check=recheck
        )
    elif method == "otm":
        sel = select_otm(
            cand_w,
            targ_w,
            n_folds=n_folds,
            seed=seed,
            patience=patience,
            ot_method=ot_method,
            reg=reg,
            progress=progress,
            neighbors=neighbors,
            workers=workers,
            check=recheck,
        )
    elif method == "random":
        sel = random_selection(n, budget, seed=seed)
    elif method == "dsdm":
        scores = dsdm_scores(
            candidates, targets, ridge=dsdm_ridge, checkpoint_dims=checkpoint_dims, train_weights=train_weights
        )
        sel = select_by_scores("dsdm", scores, budget)
    elif method == "infdist":
        sel = _infdist(inf_inputs)
    else:  # less
        scores = less_scores(
            candidates,
            targets,
            checkpoint_dims=checkpoint_dims,
            checkpoint_weights=checkpoint_weights,
            target_groups=target_groups,
        )
        sel = select_by_scores("less", scores, budget)
    timings["select"] = time.perf_counter() - t0

    weights = None
    if weighting is not None:
        t0 = time.perf_counter()
        chosen = take_rows(cand_w, sel.indices)
        if weighting == "potential":
            weights = potential_counts(chosen, targ_w, repeat=repeat, ot_method=ot_method, reg=reg)
        else:
            weights = optimal_weights(chosen, targ_w)
        timings["weight"] = time.perf_counter() - t0

    dist = None
    skipped = None
    if evaluate and sel.size * targ_w.shape[0] > EVALUATE_MAX_ENTRIES:
        skipped = (
            f"{sel.size} selected x {targ_w.shape[0]} targets is above the {EVALUATE_MAX_ENTRIES} entries "
            "an evaluation solves (EVALUATE_MAX_ENTRIES)"
        )
        log.warning("OT distance not measured: %s", skipped)
        evaluate = False
    if evaluate:
        t0 = time.perf_counter()
        evaluation = ot_distance(take_rows(cand_w, sel.indices), targ_w, method=ot_method, reg=reg)
        dist = evaluation.value
        timings["evaluate"] = time.perf_counter() - t0

    info = dict(sel.info)
    if skipped is not None:
        info["ot"] = {"skipped": skipped}
    if evaluate:
        info["ot"] = evaluation.summary()  # the solver that measured ot_distance, and its error bound
    info["whitening"] = "precomputed" if wfd_features is not None else (whitener.metadata() if needs_wfd else None)
    info["params"] = {"seed": seed, "ot_method": ot_method, "reg": reg, "repeat": repeat}
    log.info("%s selected %d of %d candidates", method, sel.size, n)
    return sel.with_updates(
        weights=weights,
        weighting=weighting,
        ot_distance=dist,
        timings={**timings, **{f"{method}.{k}": v for k, v in sel.timings.items()}},
        info=info,
    )
