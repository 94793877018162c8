"""The t-SNE figure: each method's selection against the target set (paper Fig. 6).

scikit-learn and matplotlib are imported only inside the functions; the figure helpers
(:func:`~.figures._new_figure`, :func:`~.figures._save_png`, the method colours) are
those of :mod:`~.figures`.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._validate import check_features
from ...errors import TarotInputError
from ...io import load_features
from ...result import read_selection
from .figures import _method_colours, _new_figure, _save_png
from .runs import PathLike

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["plot_tsne", "plot_tsne_files"]

logger = logging.getLogger(__name__)

_MIN_TSNE_POINTS = 5
_PCA_DIMS = 50
_TSNE_THREADED_MIN = 1000


def plot_tsne(
    target: np.ndarray,
    selections: Mapping[str, np.ndarray],
    candidates: np.ndarray,
    path: PathLike,
    seed: int = 0,
    max_points: int = 2000,
    title: str | None = None,
) -> Path:
    """t-SNE panels of each method's selection against the target set (paper Fig. 6).

    One 2-D embedding is computed on the union of the target rows and every candidate
    selected by any method (PCA to 50 dimensions first when the features are wider;
    ``sklearn.manifold.TSNE`` with ``perplexity = min(30, (N - 1) / 3)``, PCA init,
    ``random_state=seed``). When the union exceeds ``max_points`` it is subsampled
    without replacement with ``numpy.random.default_rng(seed)``, targets and selected
    candidates in proportion to their counts. Each panel (grid, shared axes) shows one
    method's selected points (its colour) over the target points (black ``x``).

    Parameters
    ----------
    target : np.ndarray, shape (n_target, d)
        Target features (floating, finite).
    selections : mapping of str to np.ndarray
        Method name -> 1-D integer indices into ``candidates`` (duplicates are ignored).
    candidates : np.ndarray, shape (n_candidates, d)
        Candidate-pool features (floating, finite).
    path : path-like
        Destination PNG (written atomically).
    seed : int
        Seed of the subsampling, the PCA and the t-SNE.
    max_points : int
        Most points in the embedding (targets plus selected candidates), at least 5.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On non-2-D, non-floating or non-finite features, a dimension mismatch, an empty
        selections mapping, non-integer or out-of-range indices, a bad ``max_points`` or
        ``seed``, or fewer than 5 points to embed. Nothing is written then.
    """
    check_features(target, "target")
    check_features(candidates, "candidates")
    if target.shape[1] != candidates.shape[1]:
        raise TarotInputError(
            f"dimension mismatch: target has {target.shape[1]} dims, candidates have {candidates.shape[1]}"
        )
    sel = _check_selections(selections, candidates.shape[0])
    seed = _check_int(seed, "seed", minimum=0)
    max_points = _check_int(max_points, "max_points", minimum=_MIN_TSNE_POINTS)
    union = np.unique(np.concatenate(list(sel.values())))
    tgt_keep, cand_keep = _subsample(target.shape[0], union, max_points, seed)
    if len(tgt_keep) + len(cand_keep) < _MIN_TSNE_POINTS:
        raise TarotInputError(
            f"plot_tsne: {len(tgt_keep) + len(cand_keep)} points to embed, need at least {_MIN_TSNE_POINTS}"
        )
    points = np.concatenate([np.asarray(target[tgt_keep]), np.asarray(candidates[cand_keep])]).astype(np.float64)
    emb = _tsne_embed(points, seed)
    fig = _tsne_figure(emb[: len(tgt_keep)], emb[len(tgt_keep) :], cand_keep, sel, title)
    return _save_png(fig, path)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise TarotInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_selections(selections: Mapping[str, np.ndarray], n_candidates: int) -> dict[str, np.ndarray]:
    """Check method -> indices; return sorted unique int64 indices per method."""
    if not isinstance(selections, Mapping) or len(selections) == 0:
        raise TarotInputError("selections must be a non-empty mapping of method name -> candidate indices")
    out: dict[str, np.ndarray] = {}
    for name, idx in selections.items():
        if not isinstance(name, str) or not name:
            raise TarotInputError(f"selections: method names must be non-empty strings, got {name!r}")
        arr = np.asarray(idx)
        if arr.size == 0:
            logger.warning("selection %r is empty; its panel shows the targets only", name)
            out[name] = np.empty(0, dtype=np.int64)
            continue
        if arr.ndim != 1 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TarotInputError(
                f"selections[{name!r}]: expected 1-D integer indices, got dtype {arr.dtype} shape {arr.shape}"
                " (use np.flatnonzero for a boolean mask)"
            )
        if arr.min() < 0 or arr.max() >= n_candidates:
            raise TarotInputError(
                f"selections[{name!r}]: indices must lie in [0, {n_candidates}), got {arr.min()}..{arr.max()}"
            )
        out[name] = np.unique(arr.astype(np.int64))
    return out


def _subsample(n_target: int, union: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Target row indices and candidate indices to embed (all of them if they fit)."""
    n_union = len(union)
    total = n_target + n_union
    if total <= max_points:
        return np.arange(n_target), union
    rng = np.random.default_rng(seed)
    n_t = round(max_points * n_target / total)
    n_t = min(n_target, max(1 if n_target else 0, n_t))
    n_c = min(n_union, max_points - n_t)
    if n_c == 0 and n_union:
        n_c, n_t = 1, n_t - 1
    tgt = np.sort(rng.choice(n_target, size=n_t, replace=False))
    cand = np.sort(rng.choice(union, size=n_c, replace=False))
    logger.info("t-SNE: subsampled %d targets and %d selected candidates of %d points", n_t, n_c, total)
    return tgt, cand


def _tsne_embed(points: np.ndarray, seed: int) -> np.ndarray:
    """Seeded 2-D Barnes-Hut t-SNE (after PCA to 50 dims for wider features).

    Below :data:`_TSNE_THREADED_MIN` points the OpenMP thread synchronisation of each of
    the 1000 gradient steps costs more than the work (seconds for 40 points on a busy
    machine), so the native thread pools are limited to one thread there.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n, d = points.shape
    if d > _PCA_DIMS and n > _PCA_DIMS:
        points = PCA(n_components=_PCA_DIMS, random_state=seed).fit_transform(points)
    perplexity = min(30.0, (n - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=1 if n < _TSNE_THREADED_MIN else None):
        return tsne.fit_transform(points)


def _tsne_figure(
    tgt_xy: np.ndarray,
    cand_xy: np.ndarray,
    cand_idx: np.ndarray,
    selections: Mapping[str, np.ndarray],
    title: str | None,
) -> Figure:
    """Grid of panels, one per method, sharing the embedding's axes."""
    names = list(selections)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure((3.8 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    colours = _method_colours(names)
    for ax, name in zip(axes, names):
        shown = np.isin(cand_idx, selections[name])
        ax.scatter(tgt_xy[:, 0], tgt_xy[:, 1], marker="x", s=14, linewidths=0.8, c="black", alpha=0.7, label="target")
        ax.scatter(
            cand_xy[shown, 0],
            cand_xy[shown, 1],
            marker="o",
            s=9,
            c=[colours[name]],
            alpha=0.55,
            linewidths=0,
            label="selected",
            zorder=3,
        )
        n_sel = len(selections[name])
        extra = f", {int(shown.sum())} shown" if int(shown.sum()) != n_sel else ""
        ax.set_title(f"{name} ({n_sel} selected{extra})", fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small", loc="best", markerscale=1.5)
    if title:
        fig.suptitle(title)
    return fig


def plot_tsne_files(
    candidates: PathLike,
    targets: PathLike,
    selection_csvs: Sequence[PathLike],
    out_png: PathLike,
    *,
    seed: int,
    max_points: int,
    title: str,
) -> Path:
    """:func:`plot_tsne` from the workflow's files: feature ``.npy`` files and selection CSVs
    (one panel per CSV, labelled by its file stem; OTM as ``otm``)."""
    selections = {}
    for csv in selection_csvs:
        indices, _, meta = read_selection(csv)
        selections[meta["method"] if meta["method"] == "otm" else Path(csv).stem] = indices
    return plot_tsne(
        load_features(targets).array,
        selections,
        load_features(candidates).array,
        out_png,
        seed=seed,
        max_points=max_points,
        title=title,
    )
