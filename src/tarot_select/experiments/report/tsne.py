"""The t-SNE figure: each method's selection in the candidate pool, against the targets (paper Fig. 6).

The embedding is of the *un-whitened* projected gradients: the rows of
``features/{candidates,targets}.npy`` with their checkpoint blocks combined as TAROT
combines them before whitening (:func:`~tarot_select.featurize.combine_checkpoints`).
Whitened, unit-normalised features are isotropic by construction, so their t-SNE is one
round cloud whatever was selected; the raw gradients keep the structure the figure is
about (on the digits task, one cluster per class, sources apart inside it).

scikit-learn and matplotlib are imported only inside the functions; the figure helpers
(:func:`~.figures._new_figure`, :func:`~.figures._save_png`, the method colours) are
those of :mod:`~.figures`.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._validate import as_array, check_features
from ...errors import TarotInputError
from ...featurize import combine_checkpoints
from ...io import FeatureSet, load_features
from ...result import read_selection
from .figures import _method_colours, _new_figure, _save_png
from .runs import PathLike

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["candidate_sources", "plot_task_tsne", "plot_tsne", "plot_tsne_files", "target_coverage", "tsne_features"]

logger = logging.getLogger(__name__)

_MIN_TSNE_POINTS = 5
_PCA_DIMS = 50
_TSNE_THREADED_MIN = 1000
#: Most panels per row of the figure.
_COLUMNS = 4
#: Colour of the candidates a panel's method did not select.
_POOL_GREY = "0.82"
#: Nearest pool candidates per target whose selection makes the target covered (:func:`target_coverage`).
COVERAGE_K = 5


def plot_tsne(
    target: np.ndarray,
    selections: Mapping[str, np.ndarray],
    candidates: np.ndarray,
    path: PathLike,
    seed: int = 0,
    max_points: int = 2000,
    title: str | None = None,
    *,
    sources: Sequence[str] | np.ndarray | None = None,
    rows_to_features: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """t-SNE panels of each method's selection in the pool, against the target set (paper Fig. 6).

    One 2-D embedding is computed on the target rows and the candidate pool (PCA to 50
    dimensions first when the features are wider; ``sklearn.manifold.TSNE`` with
    ``perplexity = min(30, (N - 1) / 3)``, PCA init, ``random_state=seed``). When targets
    and pool exceed ``max_points``, every target and every candidate some method selected
    is kept first (if even they exceed it, a seeded sample of them in proportion to their
    counts) and the rest is a seeded sample of the unselected candidates. The first panel
    shows the embedded pool coloured by source; then one panel per method shows the
    candidates it selected (coloured by source, or in the method's colour without
    ``sources``) over the unselected pool (light grey), with the targets as black ``x``
    in every panel. A panel's title gives the method, its selection size, the share of
    the targets it covers (:func:`target_coverage`, among the points embedded) and, with
    ``sources``, the two sources it took most from.

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
        Most points in the embedding (targets plus candidates), at least 5.
    title : str, optional
        Figure title.
    sources : sequence of str, shape (n_candidates,), optional
        The source (sub-dataset) of every candidate.
    rows_to_features : callable, optional
        Applied to the target rows and to the candidate rows embedded, after the
        subsampling (so that of a memory-mapped pool only those rows are read), e.g. to
        combine stored checkpoint blocks; by default the rows as they are.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On non-2-D, non-floating or non-finite features, a dimension mismatch, an empty
        selections mapping, non-integer or out-of-range indices, ``sources`` of the wrong
        length, a bad ``max_points`` or ``seed``, or fewer than 5 points to embed. Nothing
        is written then.
    """
    check_features(target, "target")
    check_features(candidates, "candidates")
    if target.shape[1] != candidates.shape[1]:
        raise TarotInputError(
            f"dimension mismatch: target has {target.shape[1]} dims, candidates have {candidates.shape[1]}"
        )
    n_candidates = candidates.shape[0]
    sel = _check_selections(selections, n_candidates)
    labels = _check_sources(sources, n_candidates)
    seed = _check_int(seed, "seed", minimum=0)
    max_points = _check_int(max_points, "max_points", minimum=_MIN_TSNE_POINTS)
    union = np.unique(np.concatenate(list(sel.values())))
    tgt_keep, cand_keep = _subsample(target.shape[0], n_candidates, union, max_points, seed)
    if len(tgt_keep) + len(cand_keep) < _MIN_TSNE_POINTS:
        raise TarotInputError(
            f"plot_tsne: {len(tgt_keep) + len(cand_keep)} points to embed, need at least {_MIN_TSNE_POINTS}"
        )
    as_features = rows_to_features if rows_to_features is not None else np.asarray
    points = np.concatenate(
        [as_features(np.asarray(target[tgt_keep])), as_features(np.asarray(candidates[cand_keep]))]
    ).astype(np.float64)
    emb = _tsne_embed(points, seed)
    cand_sources = None if labels is None else labels[cand_keep]
    covered = target_coverage(points[: len(tgt_keep)], points[len(tgt_keep) :], cand_keep, sel)
    fig = _tsne_figure(emb[: len(tgt_keep)], emb[len(tgt_keep) :], cand_keep, sel, cand_sources, covered, title)
    return _save_png(fig, path)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise TarotInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_sources(sources: Sequence[str] | np.ndarray | None, n_candidates: int) -> np.ndarray | None:
    """Source labels as a 1-D string array of one label per candidate (None stays None)."""
    if sources is None:
        return None
    arr = as_array(sources, "sources")
    if arr.ndim != 1 or arr.shape[0] != n_candidates:
        raise TarotInputError(f"sources: expected one label per candidate ({n_candidates}), got shape {arr.shape}")
    return arr.astype(str)


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


def _subsample(
    n_target: int, n_candidates: int, union: np.ndarray, max_points: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Target row indices and candidate indices to embed: everything if it fits, else the
    targets and the selected candidates first, the unselected pool filling what is left."""
    total = n_target + n_candidates
    if total <= max_points:
        return np.arange(n_target), np.arange(n_candidates)
    rng = np.random.default_rng(seed)
    n_union = len(union)
    if n_target + n_union <= max_points:
        rest = np.setdiff1d(np.arange(n_candidates), union, assume_unique=True)
        fill = rng.choice(rest, size=max_points - n_target - n_union, replace=False)
        logger.info("t-SNE: %d targets, %d selected and %d other candidates of %d", n_target, n_union, len(fill), total)
        return np.arange(n_target), np.sort(np.concatenate([union, fill]))
    n_t = round(max_points * n_target / (n_target + n_union))
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


def target_coverage(
    target: np.ndarray,
    pool: np.ndarray,
    pool_idx: np.ndarray,
    selections: Mapping[str, np.ndarray],
    k: int = COVERAGE_K,
) -> dict[str, float]:
    """Share of the targets each selection covers: a target is covered when one of its ``k``
    nearest pool candidates (Euclidean, in the features embedded) is selected.

    A random selection of a fraction ``r`` of the pool covers about ``1 - (1 - r)^k`` of the
    targets; a selection at the targets' centre only, or of a few of their modes, less.

    Parameters
    ----------
    target : np.ndarray, shape (n_target, d)
    pool : np.ndarray, shape (n_pool, d)
        The candidates embedded (all of the pool, or the subsample).
    pool_idx : np.ndarray, shape (n_pool,)
        Their candidate indices.
    selections : mapping of str to np.ndarray
        Method -> selected candidate indices.
    k : int
        Neighbours per target (at most ``n_pool``).

    Returns
    -------
    dict of str to float
        Method -> covered share of the targets, in [0, 1] (NaN without targets or pool).
    """
    if len(target) == 0 or len(pool) == 0:
        return {name: math.nan for name in selections}
    k = max(1, min(int(k), len(pool)))
    sq_pool = np.einsum("ij,ij->i", pool, pool)
    nearest = np.empty((len(target), k), dtype=np.int64)
    for start in range(0, len(target), 1024):
        block = target[start : start + 1024]
        dist = sq_pool[None, :] - 2.0 * block @ pool.T  # + |t|^2, the same for every candidate
        nearest[start : start + len(block)] = np.argpartition(dist, k - 1, axis=1)[:, :k]
    neighbours = pool_idx[nearest]
    return {name: float(np.isin(neighbours, idx).any(axis=1).mean()) for name, idx in selections.items()}


def _source_colours(sources: np.ndarray) -> dict[str, Any]:
    """One colour per source, in order of first appearance in the pool."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(sources.tolist()))
    palette = list(colormaps["tab10" if len(names) <= 10 else "tab20"].colors)
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _top_sources(labels: np.ndarray, k: int = 2) -> str:
    """``"rotated 46 %, noisy 38 %"``: the ``k`` most frequent labels and their shares."""
    if labels.size == 0:
        return "nothing selected"
    names, counts = np.unique(labels, return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], str(names[i])))[:k]
    return ", ".join(f"{names[i]} {100.0 * counts[i] / labels.size:.0f} %" for i in order)


def _draw_targets(ax: Axes, tgt_xy: np.ndarray) -> None:
    ax.scatter(tgt_xy[:, 0], tgt_xy[:, 1], marker="x", s=16, linewidths=0.9, c="black", alpha=0.85, zorder=4)


def _tsne_figure(
    tgt_xy: np.ndarray,
    cand_xy: np.ndarray,
    cand_idx: np.ndarray,
    selections: Mapping[str, np.ndarray],
    cand_sources: np.ndarray | None,
    covered: Mapping[str, float],
    title: str | None,
) -> Figure:
    """The pool panel, then one panel per method, sharing the embedding's axes, and a legend."""
    from matplotlib.lines import Line2D

    names = list(selections)
    n_panels = len(names) + 1
    ncols = min(_COLUMNS, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = _new_figure((3.4 * ncols, 3.5 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    method_colours = _method_colours(names)
    src_colours = _source_colours(cand_sources) if cand_sources is not None else {}

    def colours_of(mask: np.ndarray, fallback: Any) -> Any:
        if cand_sources is None:
            return [fallback]
        return [src_colours[s] for s in cand_sources[mask]]

    pool_ax = axes[0]
    everyone = np.ones(len(cand_idx), dtype=bool)
    pool_ax.scatter(
        cand_xy[:, 0], cand_xy[:, 1], s=5, c=colours_of(everyone, "0.45"), alpha=0.6, linewidths=0, zorder=2
    )
    _draw_targets(pool_ax, tgt_xy)
    pool_ax.set_title(f"pool ({len(cand_idx)} candidates) and targets", fontsize="medium")
    for ax, name in zip(axes[1:], names):
        chosen = np.isin(cand_idx, selections[name])
        ax.scatter(cand_xy[~chosen, 0], cand_xy[~chosen, 1], s=4, c=_POOL_GREY, linewidths=0, zorder=1)
        ax.scatter(
            cand_xy[chosen, 0],
            cand_xy[chosen, 1],
            s=13,
            c=colours_of(chosen, method_colours[name]),
            edgecolors="0.15",
            linewidths=0.3,
            zorder=3,
        )
        _draw_targets(ax, tgt_xy)
        n_sel = len(selections[name])
        shown = int(chosen.sum())
        head = f"{name}: {n_sel} selected" + (f", {shown} shown" if shown != n_sel else "")
        if math.isfinite(covered[name]):
            head += f"\ncovers {100.0 * covered[name]:.0f} % of targets"
        if cand_sources is not None:
            head += "\n" + _top_sources(cand_sources[chosen])
        ax.set_title(head, fontsize="medium")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], marker="x", linestyle="none", color="black", markersize=6, label="target"),
        Line2D([], [], marker="o", linestyle="none", color=_POOL_GREY, markersize=5, label="not selected"),
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="none", color=c, markeredgecolor="0.15", markersize=6, label=s)
        for s, c in src_colours.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 9), fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def tsne_features(path: PathLike) -> FeatureSet:
    """An un-whitened gradient feature file (memory-mapped), as the t-SNE figure embeds it.

    Parameters
    ----------
    path : path-like
        A gradient feature file (``features/<split>.npy``) with its sidecar.

    Returns
    -------
    FeatureSet
        The stored rows (one block per checkpoint) and their sidecar.

    Raises
    ------
    TarotInputError
        If the file is missing or damaged, or holds whitened features (a
        ``features/wfd_*.npy`` file: isotropic by construction, nothing to see in a t-SNE).
    """
    feats: FeatureSet = load_features(path)
    if "whitening" in feats.meta:
        raise TarotInputError(
            f"{path}: holds whitened features; the t-SNE figure embeds the un-whitened gradients "
            "(features/candidates.npy, features/targets.npy)"
        )
    return feats


def plot_tsne_files(
    candidates: PathLike,
    targets: PathLike,
    selection_csvs: Sequence[PathLike],
    out_png: PathLike,
    *,
    seed: int,
    max_points: int,
    title: str,
    combine: str = "sum",
    sources: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """:func:`plot_tsne` from the workflow's files: the un-whitened gradient feature files
    (:func:`tsne_features`; the rows embedded have their checkpoint blocks combined as
    ``combine`` says, the feature TAROT whitens, before whitening:
    :func:`~tarot_select.featurize.combine_checkpoints`) and selection CSVs (one panel per
    CSV, labelled by its file stem; OTM as ``otm``), with the candidates' ``sources`` if
    given.

    Raises
    ------
    TarotInputError
        If a file is missing or damaged, holds whitened features, or the two feature files
        disagree on their checkpoint blocks; nothing is written then.
    """
    cand, targ = tsne_features(candidates), tsne_features(targets)
    blocks = (cand.checkpoint_dims, cand.checkpoint_weights)
    if (targ.checkpoint_dims, targ.checkpoint_weights) != blocks:
        raise TarotInputError(
            f"{targets} and {candidates}: different checkpoint blocks ({targ.checkpoint_dims} vs "
            f"{cand.checkpoint_dims}); rerun dump_gradients"
        )
    combine_checkpoints(np.asarray(targ.array[:1]), *blocks, combine)  # a bad mode or layout fails here

    def combined(rows: np.ndarray) -> np.ndarray:
        return combine_checkpoints(rows, *blocks, combine)

    selections = {}
    for csv in selection_csvs:
        indices, _, meta = read_selection(csv)
        selections[meta["method"] if meta["method"] == "otm" else Path(csv).stem] = indices
    return plot_tsne(
        targ.array,
        selections,
        cand.array,
        out_png,
        seed=seed,
        max_points=max_points,
        title=title,
        sources=sources,
        rows_to_features=combined,
    )


def candidate_sources(job: Mapping[str, Any], data_dir: PathLike) -> np.ndarray:
    """The source of every candidate of a job's task, from its prepared data.

    Parameters
    ----------
    job : mapping
        The job's ``params.job`` (:func:`~tarot_select.experiments.stages.job_task`).
    data_dir : path-like
        The prepared data of the task's pool.

    Returns
    -------
    np.ndarray, shape (n_candidates,), str
    """
    from .. import stages  # torch: only when a figure needs the task's data

    task = stages.job_task(job)
    return np.asarray(stages.load_data(task, data_dir).sources).astype(str)


def plot_task_tsne(
    candidates: PathLike,
    targets: PathLike,
    selection_csvs: Sequence[PathLike],
    out_png: PathLike,
    *,
    data_dir: PathLike,
    job: Mapping[str, Any],
    combine: str,
    seed: int,
    max_points: int,
    title: str,
) -> Path:
    """The ``figure_tsne`` rule: :func:`plot_tsne_files` with the candidates coloured by their
    source (:func:`candidate_sources`)."""
    return plot_tsne_files(
        candidates,
        targets,
        selection_csvs,
        out_png,
        seed=seed,
        max_points=max_points,
        title=title,
        combine=combine,
        sources=candidate_sources(job, data_dir),
    )
