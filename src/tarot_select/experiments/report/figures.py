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

from ...io import atomic_path
from .runs import SPEC_ATTR, PathLike, collect_runs
from .summary import DDOF, METHOD_ORDER, REFERENCE_METHODS, _summarize

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_metric_vs_ratio", "plot_task_metric_vs_ratio"]

logger = logging.getLogger(__name__)

_PNG_DPI = 120
_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


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
    ratio, with horizontal error bars when the ratio varies over seeds; ``full`` and
    ``target_only`` are dashed horizontal lines with a light ±std band. Values are shown
    × the spec's ``scale``; the y axis reads ``"<label> (<unit>)"``.

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
    fig = _new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    xs = _draw_curves(ax, long, colours, factor)
    # OTM's chosen ratio is in its legend label, not a tick: a tick at e.g. 42.93 % ran into
    # the 50 % tick's label.
    otm_xs = _draw_otm(ax, long, df, colours, factor, value_column)
    _draw_references(ax, long, colours, factor)
    _style_ratio_axes(ax, xs or otm_xs, log_x)
    ax.set_ylabel(_axis_label(spec))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="best")
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


def _draw_curves(ax: Axes, long: pd.DataFrame, colours: Mapping[str, Any], factor: float) -> list[float]:
    """Lines with markers and error bars for the non-reference methods; returns their x (%)."""
    xs: list[float] = []
    curves = long[~long["method"].isin(REFERENCE_METHODS)]
    for i, (method, grp) in enumerate(curves.groupby("method", sort=False)):
        grp = grp[grp["ratio"].notna()].sort_values("ratio")
        if grp.empty:
            logger.warning("method %r has no finite ratio; left out of the plot", method)
            continue
        x = grp["ratio"].to_numpy() * 100.0
        y = grp["mean"].to_numpy() * factor
        err = np.nan_to_num(grp["std"].to_numpy() * factor, nan=0.0)
        ax.errorbar(
            x,
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


def _draw_otm(
    ax: Axes, long: pd.DataFrame, df: pd.DataFrame, colours: Mapping[str, Any], factor: float, value_column: str
) -> list[float]:
    """A star per OTM label at its mean chosen ratio (``otm``; ``otm_weighted``, trained on
    OT-potential repeat counts, an open star); returns their x (%)."""
    xs: list[float] = []
    for method, face in (("otm", None), ("otm_weighted", "none")):
        rows = long[(long["method"] == method) & long["ratio"].notna()]
        for _, row in rows.iterrows():
            ratios = df.loc[(df["method"] == method) & (df["ratio_label"] == row["ratio_label"]), "ratio"]
            x = float(row["ratio"]) * 100.0
            xerr = float(ratios.std(ddof=DDOF)) * 100.0 if len(ratios) > 1 else 0.0
            yerr = float(np.nan_to_num(row["std"] * factor, nan=0.0))
            ax.errorbar(
                [x],
                [float(row["mean"]) * factor],
                yerr=[yerr],
                xerr=[np.nan_to_num(xerr)],
                color=colours[method],
                marker="*",
                markersize=15,
                markerfacecolor=face,
                linestyle="none",
                capsize=3,
                label=f"{method} ({x:.1f} %)",
                zorder=5,
            )
            xs.append(x)
    return xs


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


def _style_ratio_axes(ax: Axes, xs: Sequence[float], log_x: bool | None) -> None:
    """Percent x axis, log-scaled when asked or when the ratios span a factor of 8."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ticks = sorted({round(x, 6) for x in xs})
    if log_x is None:
        log_x = bool(ticks) and ticks[0] > 0 and ticks[-1] / ticks[0] >= 8.0
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ticks and len(ticks) <= 12:
        ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}%"))
    ax.set_xlabel("selected ratio of the pool (%)")
    ax.grid(True, alpha=0.3)
