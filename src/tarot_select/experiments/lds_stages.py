r"""Stages of the LDS benchmark (influence estimation, TAROT Fig. 4 / Table 6) for the workflow.

Each function is one Snakemake job body of ``workflow/rules/lds.smk``; the maths lives in
:mod:`tarot_select.lds`.

``lds_masks``           :math:`M` seeded 50 % subsets of the task's ``candidates`` (the training set),
                        or a user's mask file (e.g. TRAK's published CIFAR-10 masks)
``lds_train_chunk``     train one model per subset of a chunk and record its outputs on ``targets``
``lds_gather_outputs``  join the chunks into ``outputs`` ``(M, n_target)``, or read a user's file
``lds_model_features``  one ensemble member: a model trained on the whole training set (seed
                        :math:`10^4 + e`), projected gradients of its output on train and targets,
                        and TRAK's :math:`1 - p_y` on train
``lds_evaluate``        LDS of every method at every ensemble size (first :math:`E` members), and
                        paired-bootstrap differences between methods

Seeds: the subset model :math:`s` trains with seed :math:`s`; ensemble member :math:`e`
with seed :math:`10^4 + e`, so the two families never share an initialisation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TarotInputError
from ..featurize import Checkpoint, GradientFeaturizer
from ..io import atomic_path, integrity_of, library_versions, load_npy, load_npz, save_npz, write_json_atomic
from ..lds import (
    ATTRIBUTION_METHODS,
    DIAGNOSTIC_METHODS,
    attribution_scores_many,
    default_pairs,
    lds,
    lds_difference,
    subset_masks,
)
from ..tasks import Task, TaskData, require_model_outputs
from .stages import load_data, shard_rows

__all__ = [
    "MEMBER_SEED_OFFSET",
    "lds_evaluate",
    "lds_gather_outputs",
    "lds_masks",
    "lds_model_features",
    "lds_train_chunk",
    "output_gradient_features",
    "read_lds_array",
]

log = logging.getLogger(__name__)

#: Ensemble member ``e`` trains with seed ``MEMBER_SEED_OFFSET + e`` (subset models use ``s``).
MEMBER_SEED_OFFSET = 10_000

PathLike = str | os.PathLike[str]


def _save_array(path: PathLike, array: np.ndarray, meta: Mapping[str, Any]) -> None:
    """``path`` (.npy) and its JSON sidecar, both atomically; the sidecar records the file's
    ``integrity`` (size, rows, checksum), which :func:`read_lds_array` checks."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
        record = integrity_of(tmp, rows=int(array.shape[0]) if array.ndim else None)
    sidecar = Path(path).with_suffix(".json")
    write_json_atomic(
        sidecar,
        {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            **dict(meta),
            "versions": library_versions(),
            "integrity": record,
        },
    )


def read_lds_array(path: PathLike, what: str, ndim: int = 2) -> np.ndarray:
    """Load a ``.npy`` array a user or an earlier job wrote, with a clear error if it is unusable
    (missing, truncated or changed since its sidecar recorded it, not numeric)."""
    p = Path(path)
    if not p.is_file():
        raise TarotInputError(f"{what}: file not found: {p}")
    try:
        arr, _ = load_npy(p, mmap=False, what=what)
    except TarotInputError as exc:
        raise TarotInputError(f"{what}: {exc}") from None
    if arr.ndim != ndim:
        raise TarotInputError(f"{what}: {p} must be {ndim}-D, got shape {arr.shape}")
    return arr


def lds_masks(
    task: Task,
    data_dir: PathLike,
    n_subsets: int,
    fraction: float,
    seed: int,
    out_path: PathLike,
    external: PathLike | None = None,
) -> None:
    """Write the subset masks ``(M, n_train)`` bool: drawn with :func:`subset_masks`, or read
    from ``external`` (checked to have one column per training example)."""
    n_train = len(load_data(task, data_dir).candidates)
    if external is not None:
        masks = read_lds_array(external, "lds.masks").astype(bool)
        if masks.shape[1] != n_train:
            raise TarotInputError(
                f"lds.masks: {external} has {masks.shape[1]} columns but the task has {n_train} training examples"
            )
        meta: dict[str, Any] = {"source": str(external)}
    else:
        masks = subset_masks(n_train, n_subsets, fraction, seed)
        meta = {"source": "drawn", "fraction": fraction, "seed": seed}
    _save_array(out_path, masks, {"task": task.name, "n_subsets": int(masks.shape[0]), "n_train": n_train, **meta})
    log.info("%d subset masks over %d training examples", masks.shape[0], n_train)


def lds_train_chunk(
    task: Task,
    data_dir: PathLike,
    masks_path: PathLike,
    chunk: int,
    n_chunks: int,
    out_path: PathLike,
    progress: bool = True,
) -> None:
    """Train a model on each subset of chunk ``chunk`` (contiguous rows of the masks) and
    write its outputs on ``targets``: array ``(rows, n_target)`` float64."""
    require_model_outputs(task)
    data = load_data(task, data_dir)
    masks = read_lds_array(masks_path, "masks").astype(bool)
    lo, hi = shard_rows(masks.shape[0], chunk, n_chunks)
    rows = []
    t0 = time.perf_counter()
    for s in tqdm(range(lo, hi), desc=f"subset models {chunk + 1}/{n_chunks}", disable=not progress):
        state = task.train_downstream(data, "candidates", np.flatnonzero(masks[s]), None, seed=s)
        rows.append(task.outputs(data, state, "targets"))
    out = np.stack(rows) if rows else np.zeros((0, len(data.targets)))
    _save_array(out_path, out, {"task": task.name, "rows": [lo, hi], "chunk": chunk, "n_chunks": n_chunks})
    log.info("trained %d subset models in %.1f s", hi - lo, time.perf_counter() - t0)


def lds_gather_outputs(
    chunk_paths: Sequence[PathLike],
    masks_path: PathLike,
    out_path: PathLike,
    external: PathLike | None = None,
) -> None:
    """Join the chunks' outputs in order (or read ``external``) into ``(M, n_target)``."""
    n_subsets = read_lds_array(masks_path, "masks").shape[0]
    if external is not None:
        out = read_lds_array(external, "lds.outputs").astype(np.float64)
        source: str = str(external)
    else:
        out = np.concatenate([read_lds_array(p, "outputs chunk") for p in chunk_paths])
        source = "trained"
    if out.shape[0] != n_subsets:
        raise TarotInputError(f"outputs have {out.shape[0]} rows but there are {n_subsets} subset masks")
    if not np.isfinite(out).all():
        raise TarotInputError("outputs hold NaN or Inf (a subset model diverged?)")
    _save_array(out_path, out, {"n_subsets": n_subsets, "source": source})


def lds_model_features(
    task: Task,
    data_dir: PathLike,
    member: int,
    features: Mapping[str, Any],
    out_path: PathLike,
) -> None:
    """Ensemble member ``member``: train on every training example, then write ``.npz`` with
    ``train`` ``(n, d)`` and ``targets`` ``(m, d)`` projected output gradients, ``weights``
    ``(n,)`` = TRAK's :math:`1 - p_y`, and the member's metrics (JSON in ``meta``)."""
    require_model_outputs(task)
    data = load_data(task, data_dir)
    n = len(data.candidates)
    t0 = time.perf_counter()
    state = task.train_downstream(data, "candidates", np.arange(n), None, seed=MEMBER_SEED_OFFSET + member)
    t_train = time.perf_counter() - t0
    kw = {
        "proj_dim": int(features["proj_dim"]),
        "seed": int(features.get("seed", 0)) + member,
        "proj_kind": features.get("proj_kind", "rademacher"),
        "batch_size": int(features.get("batch_size", 256)),
        "device": task.context.device,
    }
    train = output_gradient_features(task, data, state, "candidates", **kw)
    targets = output_gradient_features(task, data, state, "targets", **kw)
    weights = task.train_weights(data, state, "candidates")
    metrics = task.evaluate(data, state)
    meta = {
        "task": task.name,
        "member": member,
        "train_seed": MEMBER_SEED_OFFSET + member,
        "projector": {k: v for k, v in kw.items() if k != "device"},
        "metrics": metrics,
        "seconds": {"train": t_train, "features": time.perf_counter() - t0 - t_train},
        "versions": library_versions(),
    }
    save_npz(
        out_path, {"train": train, "targets": targets, "weights": weights, "meta": np.array(json.dumps(meta))}, meta
    )
    log.info("member %d: %s, features %s in %.1f s", member, metrics, train.shape, time.perf_counter() - t0)


def output_gradient_features(
    task: Task,
    data: TaskData,
    state: Mapping[str, torch.Tensor],
    split: str,
    proj_dim: int | None = 512,
    seed: int = 0,
    *,
    proj_kind: str = "rademacher",
    batch_size: int = 256,
    params: Sequence[str] | None = None,
    mode: str = "vmap",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    r"""Projected per-sample gradients of the model *output* of one trained model.

    For every example :math:`z` of ``split``,
    :math:`\phi(z) = P\,\nabla_\theta f(\theta; z)` with :math:`f` = ``task.output_fn``
    (the margin for classifiers), :math:`\theta` = ``state`` loaded into
    ``task.downstream_model()`` and :math:`P` the projector of kind ``proj_kind``
    (seeded by ``seed``, so the same ``seed`` gives the same :math:`P` for train and
    targets). One checkpoint of weight 1, through
    :class:`~tarot_select.featurize.GradientFeaturizer`.

    Parameters
    ----------
    task : Task
        Must implement ``downstream_model`` and ``output_fn``.
    data : TaskData
    state : mapping of str to torch.Tensor
        Weights of a trained downstream model (as returned by ``task.train_downstream``).
    split : str
        One of ``candidates``, ``targets``, ``evaluation``.
    proj_dim : int or None, default 512
        Projection dimension; ignored (may be None) for ``proj_kind="none"``.
    seed : int, default 0
        Seed of the projector.
    proj_kind : str, default "rademacher"
        See :func:`~tarot_select.project.make_projector`.
    batch_size : int, default 256
    params : sequence of str, optional
        Parameter name patterns to differentiate (default: all).
    mode : {"vmap", "loop"}, default "vmap"
    device : str or torch.device, default "cpu"
    progress : bool, default False

    Returns
    -------
    np.ndarray, shape (n_split, proj_dim) (``(n_split, n_params)`` for ``proj_kind="none"``), float32
    """
    model = require_model_outputs(task).downstream_model()
    featurizer = GradientFeaturizer(
        model,
        task.output_fn,
        proj_dim=None if proj_kind == "none" else proj_dim,
        proj_kind=proj_kind,
        seed=seed,
        params=params,
        mode=mode,
        device=device,
    )
    dataset = data.split(split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise TarotInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = batch_size
    return featurizer.featurize(
        task.gradient_batches(dataset, batch),
        [Checkpoint(state_dict=dict(state), weight=1.0, name=f"{split} output gradients")],
        n_samples=len(dataset),  # type: ignore[arg-type]
        progress=progress,
    )


def _member(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``train``, ``targets`` and ``weights`` of an ensemble member file (:func:`lds_model_features`),
    checked against its sidecar."""
    z = load_npz(path, keys=("train", "targets", "weights"))
    return z["train"], z["targets"], z["weights"]


def lds_evaluate(
    masks_path: PathLike,
    outputs_path: PathLike,
    member_paths: Sequence[PathLike],
    methods: Sequence[str],
    ensembles: Sequence[int],
    out_path: PathLike,
    *,
    whitening: str = "zca",
    ridge: float = 1e-4,
    eps: float = 1e-5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    pairs: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """LDS of each method for each ensemble size :math:`E` (the first :math:`E` members), and
    paired differences between methods.

    ``pairs``: ``(a, b)`` method pairs whose difference ``LDS(a) - LDS(b)`` is bootstrapped
    over the targets with the same resampled targets for both
    (:func:`~tarot_select.lds.lds_difference`, seed ``seed``); None:
    :func:`~tarot_select.lds.default_pairs` of ``methods`` (every method against ``wfd``,
    TRAK against TRAK without :math:`q`, WFD × q against TRAK).

    Writes ``out_path`` (JSON): ``{"records": [{method, ensemble, diagnostic, lds, std,
    ci_low, ci_high, n_targets, n_excluded, n_subsets, seconds}, ...], "differences": [{a, b,
    ensemble, diff, std, ci_low, ci_high, ci, n_targets, n_excluded, n_bootstrap}, ...],
    "scoring_seconds", ...}`` (``diagnostic``: the method is one of
    :data:`~tarot_select.lds.DIAGNOSTIC_METHODS`, not a method of the paper; ``seconds``: the
    LDS and its bootstrap; ``scoring_seconds``: all score matrices) and returns the records.

    The members are read one at a time and scored by
    :func:`~tarot_select.lds.attribution_scores_many` (one whitening and one TRAK solve per
    member for all methods); the ensemble of size :math:`E` is the mean of the first
    :math:`E` members' matrices, as :func:`~tarot_select.lds.ensemble_scores` computes it.
    """
    bad = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if bad:
        raise TarotInputError(f"lds.methods: unknown {bad}; choose from {', '.join(ATTRIBUTION_METHODS)}")
    if not ensembles or max(ensembles) > len(member_paths) or min(ensembles) < 1:
        raise TarotInputError(f"lds.ensembles {list(ensembles)} needs 1..{len(member_paths)} members")
    pair_list = default_pairs(methods) if pairs is None else [tuple(p) for p in pairs]
    for pair in pair_list:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(methods):
            raise TarotInputError(f"lds pairs: {list(pair)} must name two different methods of {list(methods)}")
    masks = read_lds_array(masks_path, "masks").astype(bool)
    outputs = read_lds_array(outputs_path, "outputs")
    sizes = sorted({int(e) for e in ensembles})
    methods = list(dict.fromkeys(methods))
    results = {}
    seconds: dict[tuple[str, int], float] = {}
    sums: dict[str, np.ndarray] = {}
    scoring = 0.0
    # Members one at a time: running sums of their score matrices give every ensemble mean
    # (the same sums, in the same order, as ensemble_scores) without holding all members.
    for k, path in enumerate(member_paths[: sizes[-1]], start=1):
        t0 = time.perf_counter()
        per_model = attribution_scores_many(methods, *_member(path), whitening=whitening, ridge=ridge, eps=eps)
        for method, scores in per_model.items():
            if k == 1:
                sums[method] = np.array(scores, dtype=np.float64, copy=True)
            else:
                sums[method] += scores
        scoring += time.perf_counter() - t0
        if k not in sizes:
            continue
        for method in methods:
            t0 = time.perf_counter()
            res = results[method, k] = lds(sums[method] / k, masks, outputs, n_bootstrap=n_bootstrap, seed=seed)
            seconds[method, k] = time.perf_counter() - t0
            log.info("%s E=%d: LDS %.4f [%.4f, %.4f]", method, k, res.value, res.ci_low, res.ci_high)
    records = []
    for method in methods:
        for e in sizes:
            res = results[method, e]
            records.append(
                {
                    "method": method,
                    "ensemble": e,
                    "diagnostic": method in DIAGNOSTIC_METHODS,
                    "lds": res.value,
                    "std": res.std,
                    "ci_low": res.ci_low,
                    "ci_high": res.ci_high,
                    "n_targets": res.n_targets,
                    "n_excluded": res.n_excluded,
                    "n_subsets": res.n_subsets,
                    "seconds": seconds[method, e],
                }
            )
    differences = []
    for a, b in pair_list:
        for e in sizes:
            diff = lds_difference(results[a, e], results[b, e], n_bootstrap=n_bootstrap, seed=seed)
            differences.append({"a": a, "b": b, "ensemble": int(e), **diff.to_dict()})
            log.info("%s - %s E=%d: %+.4f [%+.4f, %+.4f]", a, b, e, diff.value, diff.ci_low, diff.ci_high)
    write_json_atomic(
        out_path,
        {
            "records": records,
            "differences": differences,
            "whitening": whitening,
            "ridge": ridge,
            "eps": eps,
            "n_bootstrap": n_bootstrap,
            "scoring_seconds": scoring,
            "members": [str(p) for p in member_paths[: max(ensembles)]],
            "versions": library_versions(),
        },
    )
    return records
