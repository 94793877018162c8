"""Figures: the metric against the selected ratio (paper Figs. 5/7) and the shared figure helpers.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot
global state) and saved atomically as PNG; matplotlib is imported only inside the
functions. The metric is drawn as its spec says (:mod:`~.runs`): values × ``scale``, the
y axis labelled ``"<label> (<unit>)"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...errors import TarotInputError
from ...io import atomic_path
from .runs import SPEC_ATTR, PathLike, collect_runs
from .summary import DDOF, METHOD_ORDER, REFERENCE_METHODS, _summarize

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["format_ratio", "otm_label", "plot_metric_vs_ratio", "plot_task_metric_vs_ratio", "ratio_ticks"]

logger = logging.getLogger(__name__)

_PNG_DPI = 120
_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: Horizontal step between neighbouring curves (log units; on a linear axis, a share of the
#: smallest ratio gap), so that their error bars at one ratio stay apart.
_DODGE = 0.025


def _new_figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure (rendered by the Agg canvas on save)."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=_PNG_DPI, layout="constrained")


def _save_png(fig: Figure, path: PathLike) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_PNG_DPI)
    logger.info("wrote figure %s", path)
    return Path(path)


def _method_colours(methods: Sequence[str]) -> dict[str, Any]:
    """Stable colours: known methods by their place in METHOD_ORDER, others after them."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors)
    others = sorted(m for m in set(methods) if m not in METHOD_ORDER)
    slot = {m: i for i, m in enumerate([*METHOD_ORDER, *others])}
    return {m: palette[slot[m] % len(palette)] for m in methods}


def _axis_label(spec: Mapping[str, Any]) -> str:
    """``"<label> (<unit>)"``; ``"<label> (×<scale>)"`` for a scaled unitless metric; else the label."""
    label, unit, scale = str(spec["label"]), str(spec["unit"]), float(spec["scale"])
    if unit:
        return f"{label} ({unit})"
    return f"{label} (×{scale:g})" if scale != 1.0 else label


def plot_metric_vs_ratio(
    runs: pd.DataFrame,
    path: PathLike,
    title: str | None = None,
    *,
    value_column: str = "metric",
    spec: Mapping[str, Any] | None = None,
    log_x: bool | None = None,
) -> Path:
    """Plot the metric against the selected ratio, one curve per method (paper Figs. 5/7).

    Methods other than ``otm``, ``full`` and ``target_only`` are lines with markers and
    std error bars at their mean ratio per label; ``otm`` is a star at its (mean) chosen
    ratio, with horizontal error bars when the ratio varies over seeds and its rounded
    ratio written beside it (:func:`otm_label`, e.g. ``"OTM 43.9 %"``; never an x tick:
    the ticks are the fixed ratios, :func:`ratio_ticks`); ``full`` and ``target_only`` are
    dashed horizontal lines with a light ±std band. Values are shown × the spec's
    ``scale``; the y axis reads ``"<label> (<unit>)"``; the legend sits right of the axes.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    path : path-like
        Destination PNG (written atomically, 120 dpi).
    title : str, optional
        Figure title.
    value_column : str
        Column to plot.
    spec : mapping, optional
        Metric spec of ``value_column``; by default ``runs.attrs["metric_spec"]``.
    log_x : bool, optional
        Log-scaled x axis; by default log when the ratios span a factor of 8 or more.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed runs table or a missing or malformed spec; no file is written.
    """
    long, _, df, spec = _summarize(runs, value_column, spec)
    factor = float(spec["scale"])
    colours = _method_colours(list(long["method"]))
    fig = _new_figure((7.8, 4.4))
    ax = fig.add_subplot()
    plotted = long.loc[~long["method"].isin(("full", "target_only")), "ratio"].to_numpy(dtype=float) * 100.0
    log_x = _use_log_x(plotted) if log_x is None else bool(log_x)
    xs = _draw_curves(ax, long, colours, factor, log_x)
    stars = _draw_otm(ax, long, df, colours, factor)
    _draw_references(ax, long, colours, factor)
    _style_ratio_axes(ax, ratio_ticks(xs), log_x)
    ax.set_ylabel(_axis_label(spec))
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # beside the axes, so that it hides no curve
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    # OTM's chosen ratio is a rounded note beside its star, never a tick: a tick at e.g.
    # 43.857 % printed "43.857150%" into the 50 % tick's label.
    _annotate_otm(ax, stars)
    return _save_png(fig, path)


def plot_task_metric_vs_ratio(records: Sequence[PathLike], path: PathLike, task: str) -> Path:
    """The ``figure_metric_vs_ratio`` rule: collect a task's run records and plot them.

    Parameters
    ----------
    records : sequence of path-like
        The task's run records (see :func:`~.runs.collect_runs`); their metric spec sets
        the scale and the axis label.
    path : path-like
        Destination PNG.
    task : str
        Task name, for the title ``"<task>: <metric label>"``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On bad records; no file is written.
    """
    runs = collect_runs(records)
    return plot_metric_vs_ratio(runs, path, title=f"{task}: {runs.attrs[SPEC_ATTR]['label']}")


def _use_log_x(xs: np.ndarray) -> bool:
    """Log-scaled ratio axis when the plotted ratios (percent) span a factor of 8 or more."""
    finite = xs[np.isfinite(xs)]
    return bool(finite.size) and float(finite.min()) > 0 and float(finite.max() / finite.min()) >= 8.0


def _draw_curves(ax: Axes, long: pd.DataFrame, colours: Mapping[str, Any], factor: float, log_x: bool) -> list[float]:
    """Lines with markers and error bars for the non-reference methods; returns their x (%).

    With several curves, each is drawn a little apart horizontally (:data:`_DODGE` of a
    log unit, or of the smallest ratio gap on a linear axis), so that error bars at one
    ratio do not hide each other; the ticks stay at the exact ratios."""
    xs: list[float] = []
    candidates = long[~long["method"].isin(REFERENCE_METHODS)]
    curves = candidates[candidates["ratio"].notna()]
    for method in sorted(set(candidates["method"]) - set(curves["method"])):
        logger.warning("method %r has no finite ratio; left out of the plot", method)
    if curves.empty:
        return xs
    exact = np.unique(curves["ratio"].to_numpy(dtype=float) * 100.0)
    gap = float(np.diff(exact).min()) if len(exact) > 1 else 1.0
    groups = list(curves.groupby("method", sort=False))
    for i, (method, grp) in enumerate(groups):
        grp = grp.sort_values("ratio")
        x = grp["ratio"].to_numpy() * 100.0
        shift = (i - (len(groups) - 1) / 2.0) * _DODGE
        shown = x * math.exp(shift) if log_x else x + shift * gap
        y = grp["mean"].to_numpy() * factor
        err = np.nan_to_num(grp["std"].to_numpy() * factor, nan=0.0)
        ax.errorbar(
            shown,
            y,
            yerr=err,
            color=colours[method],
            marker=_MARKERS[i % len(_MARKERS)],
            markersize=5,
            linewidth=1.5,
            capsize=3,
            label=str(method),
        )
        xs.extend(x.tolist())
    return xs


#: Horizontal shift, in points, of each OTM star when both are drawn: ``otm`` and
#: ``otm_weighted`` select the same candidates (only the training weights differ), so they sit
#: at the same ratio and, often, near the same value; unshifted, the filled star hid the open one.
OTM_DODGE_POINTS = {"otm": -7.0, "otm_weighted": 7.0}


def draw_otm_star(
    ax: Axes, method: str, methods: Sequence[str], x: float, y: float, yerr: float, xerr: float = 0.0, **style: Any
) -> None:
    """One OTM star (``method``: ``otm`` or ``otm_weighted``) with its error bars at ``(x, y)``.

    When both ``otm`` and ``otm_weighted`` are among ``methods`` the star is shifted sideways
    by :data:`OTM_DODGE_POINTS` (display points, so the same on a linear or a log axis). A
    shifted artist is not in the axes' data limits, so the point and its error bars are added
    to them here: the star always stays in view.
    """
    from matplotlib.transforms import offset_copy

    transform = ax.transData
    if {"otm", "otm_weighted"} <= set(methods):
        transform = offset_copy(ax.transData, fig=ax.get_figure(), x=OTM_DODGE_POINTS[method], units="points")
    ax.errorbar([x], [y], yerr=[yerr], xerr=[xerr], marker="*", linestyle="none", transform=transform, **style)
    ax.update_datalim([(x - xerr, y - yerr), (x + xerr, y + yerr)])
    ax.autoscale_view()


def _draw_otm(
    ax: Axes, long: pd.DataFrame, df: pd.DataFrame, colours: Mapping[str, Any], factor: float
) -> list[tuple[float, float, str]]:
    """A star per OTM label at its mean chosen ratio (``otm``; ``otm_weighted``, trained on
    OT-potential repeat counts, an open star; side by side when both are drawn); returns
    ``(x %, y, note)`` per star."""
    stars: list[tuple[float, float, str]] = []
    drawn = [m for m in ("otm", "otm_weighted") if ((long["method"] == m) & long["ratio"].notna()).any()]
    for method, face in (("otm", None), ("otm_weighted", "none")):
        rows = long[(long["method"] == method) & long["ratio"].notna()]
        for _, row in rows.iterrows():
            ratios = df.loc[(df["method"] == method) & (df["ratio_label"] == row["ratio_label"]), "ratio"]
            x = float(row["ratio"]) * 100.0
            xerr = float(ratios.std(ddof=DDOF)) * 100.0 if len(ratios) > 1 else 0.0
            y = float(row["mean"]) * factor
            yerr = float(np.nan_to_num(row["std"] * factor, nan=0.0))
            draw_otm_star(
                ax,
                method,
                drawn,
                x,
                y,
                yerr,
                float(np.nan_to_num(xerr)),
                color=colours[method],
                markersize=15,
                markerfacecolor=face,
                capsize=3,
                label=f"{method} ({format_ratio(x / 100.0)})",
                zorder=5,
            )
            stars.append((x, y, method))
    return _merge_notes(stars)


def _merge_notes(stars: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """``(x %, y, note)`` per OTM note from ``(x %, y, method)`` per star: one note for stars at
    the same rounded ratio (``otm`` and ``otm_weighted`` select the same candidates), e.g.
    ``"OTM, OTM weighted 65.6 %"`` at their mean value; two notes there would be written over
    each other."""
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for x, y, method in stars:
        groups.setdefault(format_ratio(x / 100.0), []).append((x, y, method))
    return [
        (
            members[0][0],
            float(np.mean([y for _, y, _ in members])),
            f"{', '.join(_otm_name(m) for _, _, m in members)} {ratio}",
        )
        for ratio, members in groups.items()
    ]


def format_ratio(fraction: float) -> str:
    """A pool fraction as a rounded percentage with one decimal: ``0.43857`` -> ``"43.9 %"``.

    Parameters
    ----------
    fraction : float
        Fraction of the pool, finite.

    Returns
    -------
    str
        ``"<percent, one decimal> %"``.

    Raises
    ------
    TarotInputError
        If ``fraction`` is not a finite number.
    """
    value = float(fraction)
    if not math.isfinite(value):
        raise TarotInputError(f"a selected ratio must be a finite number, got {fraction!r}")
    return f"{value * 100.0:.1f} %"


def otm_label(method: str, fraction: float) -> str:
    """The note beside an OTM star: ``"OTM 43.9 %"`` (``otm_weighted``: ``"OTM weighted 43.9 %"``).

    Parameters
    ----------
    method : str
        ``"otm"`` or another OTM variant (``"otm_<variant>"`` reads ``"OTM <variant>"``).
    fraction : float
        The ratio OTM chose (mean over seeds), a fraction of the pool.

    Returns
    -------
    str
        The method in capitals and its rounded ratio (:func:`format_ratio`).
    """
    return f"{_otm_name(method)} {format_ratio(fraction)}"


def _otm_name(method: str) -> str:
    """``"otm"`` -> ``"OTM"``, ``"otm_<variant>"`` -> ``"OTM <variant>"`` (underscores as spaces)."""
    return "OTM" + (" " + method[len("otm_") :].replace("_", " ") if method.startswith("otm_") else "")


def ratio_ticks(curve_ratios: Sequence[float], max_ticks: int = 12) -> list[float]:
    """The x ticks (percent) of the ratio axis: the distinct fixed ratios of the curves.

    OTM's chosen ratio is never a tick (its star carries a rounded note instead), so a
    ratio close to a fixed one cannot print a label into its neighbour's. More than
    ``max_ticks`` distinct ratios, or none: no fixed ticks (``[]``, matplotlib's locator).

    Parameters
    ----------
    curve_ratios : sequence of float
        Ratios (in percent) of the points of the fixed-ratio curves.
    max_ticks : int
        Most ticks to set.

    Returns
    -------
    list of float
        Sorted distinct ratios (rounded to 1e-6 percent), or ``[]``.
    """
    ticks = sorted({round(float(x), 6) for x in curve_ratios if math.isfinite(float(x))})
    return ticks if len(ticks) <= max_ticks else []


#: Where an OTM note may go, in order of preference: (dx, dy) in points from the star and the
#: text's horizontal alignment; mirrored left-right for a star in the left half of the axes.
_NOTE_SPOTS: tuple[tuple[float, float, str], ...] = (
    (-10, 0, "right"),
    (-6, 12, "right"),
    (-6, -13, "right"),
    (0, 14, "center"),
    (0, -15, "center"),
    (10, 0, "left"),
    (6, 12, "left"),
    (6, -13, "left"),
    # farther out, for a pair of stars side by side (OTM_DODGE_POINTS) and their error bars
    (-20, 0, "right"),
    (-6, 24, "right"),
    (-6, -25, "right"),
    (0, 24, "center"),
    (0, -25, "center"),
    (20, 0, "left"),
    (6, 24, "left"),
    (6, -25, "left"),
    (-32, 0, "right"),
    (32, 0, "left"),
)
#: Half a star's size in points: a note's box is kept this far from every plotted point, so
#: that it covers no marker (a box that only missed the star's centre hid half of it).
_MARKER_RADIUS_POINTS = 8.0


def _annotate_otm(ax: Axes, stars: Sequence[tuple[float, float, str]]) -> None:
    """Write each OTM star's note beside it, where it hides no curve, marker or other note.

    The figure is laid out first (the note does not take part in the layout); each note then
    takes the first spot of :data:`_NOTE_SPOTS` inside the axes whose box (a little enlarged)
    no plotted line or point crosses; if none is free, the first spot inside the axes."""
    if not stars:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.get_figure()
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    lines, points = _obstacles(ax)
    radius = _MARKER_RADIUS_POINTS * fig.dpi / 72.0
    taken: list[Any] = []

    def write(note: str, x: float, y: float, dx: float, dy: float, ha: str) -> Any:
        text = ax.annotate(
            note,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va="center",
            fontsize="small",
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            zorder=6,
        )
        text.set_in_layout(False)
        return text

    for x, y, note in stars:
        left_half = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))[0] < 0.5
        flip = {"right": "left", "left": "right", "center": "center"}
        spots = [(-dx, dy, flip[ha]) for dx, dy, ha in _NOTE_SPOTS] if left_half else list(_NOTE_SPOTS)
        # rank of a spot: 0 free; 1 crosses a line but covers no marker or note; 2 inside the
        # axes; 3 outside. The first spot of the best rank wins.
        best: tuple[int, Any] | None = None
        for dx, dy, ha in spots:
            text = write(note, x, y, dx, dy, ha)
            box = text.get_window_extent(renderer).expanded(1.06, 1.3)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            clear = inside and not any(box.overlaps(t) for t in taken)
            clear = clear and not (len(points) and box.padded(radius).count_contains(points))
            crossed = any(path.intersects_bbox(box, filled=False) for path in lines)
            rank = 0 if clear and not crossed else 1 if clear else 2 if inside else 3
            if best is None or rank < best[0]:
                if best is not None:
                    best[1].remove()
                best = (rank, text)
            else:
                text.remove()
            if rank == 0:
                break
        if best is not None:
            taken.append(best[1].get_window_extent(renderer))


def _obstacles(ax: Axes) -> tuple[list[Any], np.ndarray]:
    """What a note must not cover, in display coordinates: the drawn lines (curves, reference
    lines, error bars) as paths, and every plotted point and marker."""
    from matplotlib.collections import LineCollection

    lines, points = [], []
    for line in ax.get_lines():
        path = line.get_transform().transform_path(line.get_path())
        if line.get_linestyle() not in ("None", "none", " ", ""):
            lines.append(path)
        if line.get_marker() not in (None, "None", "none", " ", ""):
            points.append(path.vertices)
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            lines += [coll.get_transform().transform_path(p) for p in coll.get_paths()]
    pts = np.concatenate(points) if points else np.empty((0, 2))
    return lines, pts[np.isfinite(pts).all(axis=1)]


def _draw_references(ax: Axes, long: pd.DataFrame, colours: Mapping[str, Any], factor: float) -> None:
    """Dashed horizontal lines (and ±std bands) for ``full`` and ``target_only``."""
    styles = {"full": "--", "target_only": "-."}
    for method, style in styles.items():
        for _, row in long[long["method"] == method].iterrows():
            y = float(row["mean"]) * factor
            label = method if row["ratio_label"] in (method, "target", "full") else f"{method} ({row['ratio_label']})"
            ax.axhline(y, color=colours[method], linestyle=style, linewidth=1.3, label=f"{label} ({y:.3g})")
            std = float(row["std"]) * factor
            if math.isfinite(std) and std > 0:
                ax.axhspan(y - std, y + std, color=colours[method], alpha=0.1, linewidth=0)


def _style_ratio_axes(ax: Axes, ticks: Sequence[float], log_x: bool) -> None:
    """Percent x axis with ``ticks`` (:func:`ratio_ticks`; none: matplotlib's), log-scaled
    when ``log_x``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ticks:
        ax.set_xticks(list(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}%"))
    ax.set_xlabel("selected ratio of the pool (%)")
    ax.grid(True, alpha=0.3)
