"""Reporting: tables and figures of downstream results (the paper's tables, Figs. 5-7).

The input is a *tidy* table of downstream runs, one row per (method, ratio label, seed):

============  =============================================================
column        meaning
============  =============================================================
method        ``"random"``, ``"dsdm"``, ``"less"``, ``"tarot"``, ``"tarot_weighted"``,
              ``"otm"``, ``"full"``, ``"target_only"`` (or any other name)
ratio         selected fraction of the pool in (0, 1]; OTM's chosen ratio for ``otm``,
              ``1.0`` for ``full``, NaN for ``target_only``
ratio_label   column key of the tables (``"5%"``, ``"10%"``, ``"OTM"``, ``"full"``, ...)
seed          integer seed of the run
metric        primary metric value (finite)
metric_<x>    optional extra metrics
============  =============================================================

:func:`collect_runs` builds this table from per-run JSON files, :func:`summary_long` and
:func:`summary_table` aggregate it over seeds (mean, sample standard deviation with
``ddof=1`` -- NaN for a single seed -- and the number of seeds), :func:`write_tables`
writes a long CSV and a Markdown table, :func:`plot_metric_vs_ratio` draws metric
against selected ratio and :func:`plot_tsne` draws t-SNE panels of the selections.

Every file is written atomically through :func:`tarot_select.io.atomic_path`. Figures
are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot global
state). matplotlib and scikit-learn are imported only inside the plotting functions.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._validate import check_features
from .errors import TarotInputError
from .io import atomic_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DDOF",
    "METHOD_ORDER",
    "REFERENCE_METHODS",
    "collect_runs",
    "format_markdown",
    "ordered_labels",
    "ordered_methods",
    "plot_metric_vs_ratio",
    "plot_tsne",
    "summary_long",
    "summary_table",
    "write_tables",
]

logger = logging.getLogger(__name__)

#: Row order of the tables; other methods follow alphabetically.
METHOD_ORDER: tuple[str, ...] = (
    "target_only",
    "full",
    "random",
    "dsdm",
    "less",
    "tarot",
    "tarot_weighted",
    "otm",
)
#: Methods drawn as references (horizontal lines / a single star) rather than curves.
REFERENCE_METHODS: frozenset[str] = frozenset({"otm", "full", "target_only"})
#: Degrees of freedom of the reported standard deviation (sample std, pandas' default).
DDOF: int = 1

_REQUIRED_COLUMNS: tuple[str, ...] = ("method", "ratio", "ratio_label", "seed", "metric")
_REQUIRED_KEYS: tuple[str, ...] = ("method", "ratio", "ratio_label", "seed", "metrics", "metric")
#: Labels kept after the numeric-ratio columns, in order of first appearance.
_SPECIAL_LABELS: frozenset[str] = frozenset({"otm", "full", "target", "target_only"})
_LONG_COLUMNS: list[str] = ["method", "ratio_label", "ratio", "mean", "std", "n_seeds", "best"]
_WIDE_FIELDS: tuple[str, ...] = ("mean", "std", "n_seeds", "best")
_PNG_DPI = 120

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- collect


def collect_runs(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Read per-run JSON files into the tidy runs table.

    Each file holds ``{"method", "ratio", "ratio_label", "seed", "metrics": {name: value},
    "metric": name, ...}``; other keys are ignored. ``ratio`` may be ``null`` (NaN, for
    ``target_only``).

    Parameters
    ----------
    paths : sequence of path-like
        The run files.

    Returns
    -------
    pd.DataFrame
        Columns ``method, ratio, ratio_label, seed, metric`` (the primary metric's value),
        ``metric_name`` (its name), one ``metric_<name>`` column per other numeric metric
        (NaN where a file lacks it) and ``source`` (the file path), one row per file.

    Raises
    ------
    TarotInputError
        If no path is given, or a file is unreadable, lacks a key, has a non-finite primary
        metric, names a different primary metric than the first file, or repeats a
        (method, ratio_label, seed) run of another file. The message names the file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise TarotInputError("collect_runs: no run files given")
    records = [_read_run(Path(p)) for p in paths]
    _check_same_metric(records)
    _check_unique_runs(records)
    frame = pd.DataFrame.from_records(records)
    extra = sorted(c for c in frame.columns if c.startswith("metric_") and c != "metric_name")
    frame = frame[["method", "ratio", "ratio_label", "seed", "metric", "metric_name", *extra, "source"]]
    frame["seed"] = frame["seed"].astype("int64")
    frame["ratio"] = frame["ratio"].astype("float64")
    logger.info("collected %d runs from %d files", len(frame), len(paths))
    return frame


def _read_run(path: Path) -> dict[str, Any]:
    """Parse and check one run file into a flat record."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TarotInputError(f"{path}: cannot read run file as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TarotInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise TarotInputError(f"{path}: missing key(s) {', '.join(missing)}")
    metrics, name = data["metrics"], data["metric"]
    if not isinstance(metrics, dict):
        raise TarotInputError(f"{path}: 'metrics' must be an object of name -> value")
    if not isinstance(name, str) or name not in metrics:
        raise TarotInputError(f"{path}: primary metric {name!r} is not among metrics {sorted(metrics)}")
    value = _finite_float(metrics[name])
    if value is None:
        raise TarotInputError(f"{path}: primary metric {name!r} is not a finite number: {metrics[name]!r}")
    record: dict[str, Any] = {
        "method": _nonempty_str(data["method"], "method", path),
        "ratio": _ratio_value(data["ratio"], path),
        "ratio_label": _nonempty_str(data["ratio_label"], "ratio_label", path),
        "seed": _seed_value(data["seed"], path),
        "metric": value,
        "metric_name": name,
        "source": str(path),
    }
    record.update(_extra_metrics(metrics, name))
    return record


def _extra_metrics(metrics: Mapping[str, Any], primary: str) -> dict[str, float]:
    """The numeric non-primary metrics as ``metric_<name>`` entries (non-finite kept as NaN)."""
    out: dict[str, float] = {}
    for key, val in metrics.items():
        if key == primary or key == "name":
            continue
        if isinstance(val, numbers.Real) and not isinstance(val, bool):
            out[f"metric_{key}"] = float(val)
        else:
            logger.debug("ignoring non-numeric metric %r", key)
    return out


def _finite_float(value: Any) -> float | None:
    """``float(value)`` if it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _nonempty_str(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise TarotInputError(f"{path}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _ratio_value(value: Any, path: Path) -> float:
    if value is None:
        return math.nan
    ratio = _finite_float(value)
    if ratio is None or not 0.0 < ratio <= 1.0:
        raise TarotInputError(f"{path}: 'ratio' must be null or a fraction in (0, 1], got {value!r}")
    return ratio


def _seed_value(value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) != int(value):
        raise TarotInputError(f"{path}: 'seed' must be an integer, got {value!r}")
    return int(value)


def _check_same_metric(records: Sequence[Mapping[str, Any]]) -> None:
    first = records[0]["metric_name"]
    for rec in records[1:]:
        if rec["metric_name"] != first:
            raise TarotInputError(
                f"{rec['source']}: primary metric {rec['metric_name']!r} differs from "
                f"{first!r} in {records[0]['source']}"
            )


def _check_unique_runs(records: Sequence[Mapping[str, Any]]) -> None:
    seen: dict[tuple[str, str, int], str] = {}
    for rec in records:
        key = (rec["method"], rec["ratio_label"], rec["seed"])
        if key in seen:
            raise TarotInputError(f"{rec['source']}: run {key} already read from {seen[key]}")
        seen[key] = rec["source"]


# --------------------------------------------------------------------------- validate


def _check_runs(runs: pd.DataFrame, value_column: str = "metric") -> pd.DataFrame:
    """Check the runs table and return a clean copy with the required dtypes.

    Raises
    ------
    TarotInputError
        On a non-frame, an empty frame, missing columns, non-string methods or labels,
        non-integer seeds, ratios outside (0, 1], non-finite metric values or duplicated
        (method, ratio_label, seed) runs.
    """
    if not isinstance(runs, pd.DataFrame):
        raise TarotInputError(f"runs must be a pandas DataFrame, got {type(runs).__name__}")
    need = [c for c in (*_REQUIRED_COLUMNS, value_column) if c not in runs.columns]
    if need:
        raise TarotInputError(f"runs table lacks column(s) {', '.join(dict.fromkeys(need))}")
    if runs.empty:
        raise TarotInputError("runs table is empty")
    df = runs.copy()
    for col in ("method", "ratio_label"):
        ok = df[col].map(lambda v: isinstance(v, str) and v != "")
        if not ok.all():
            raise TarotInputError(f"runs: column {col!r} must hold non-empty strings (row {_first_bad(ok)})")
    df["seed"] = _int_column(df["seed"])
    df["ratio"] = _float_column(df["ratio"], "ratio")
    bad_ratio = df["ratio"].notna() & ~((df["ratio"] > 0) & (df["ratio"] <= 1))
    if bad_ratio.any():
        raise TarotInputError(f"runs: 'ratio' must be NaN or in (0, 1] (row {_first_bad(~bad_ratio)})")
    df[value_column] = _float_column(df[value_column], value_column)
    finite = np.isfinite(df[value_column].to_numpy())
    if not finite.all():
        raise TarotInputError(f"runs: {value_column!r} must be finite (row {df.index[~finite][0]!r})")
    dup = df.duplicated(["method", "ratio_label", "seed"])
    if dup.any():
        row = df.loc[dup].iloc[0]
        raise TarotInputError(
            f"runs: duplicated run (method={row['method']!r}, ratio_label={row['ratio_label']!r}, seed={row['seed']})"
        )
    return df


def _first_bad(ok: pd.Series) -> Any:
    return ok.index[~ok.to_numpy(dtype=bool)][0]


def _float_column(col: pd.Series, name: str) -> pd.Series:
    try:
        return pd.to_numeric(col, errors="raise").astype("float64")
    except (ValueError, TypeError) as exc:
        raise TarotInputError(f"runs: column {name!r} must be numeric: {exc}") from None


def _int_column(col: pd.Series) -> pd.Series:
    vals = _float_column(col, "seed")
    arr = vals.to_numpy()
    if not (np.isfinite(arr).all() and np.all(arr == np.round(arr))):
        raise TarotInputError("runs: column 'seed' must hold integers")
    return vals.astype("int64")


# --------------------------------------------------------------------------- summaries


def _method_key(method: str) -> tuple[int, str]:
    """Sort key: the known methods in :data:`METHOD_ORDER`, then the others alphabetically."""
    if method in METHOD_ORDER:
        return (METHOD_ORDER.index(method), "")
    return (len(METHOD_ORDER), method)


def ordered_methods(methods: Sequence[str]) -> list[str]:
    """Distinct method names in table order."""
    return sorted(dict.fromkeys(methods), key=_method_key)


def ordered_labels(runs: pd.DataFrame) -> list[str]:
    """Ratio-label columns: fixed-ratio labels by numeric ratio, then the special ones as they come.

    A label is *special* (kept in order of first appearance, after the numeric ones) if it
    is one of ``OTM``, ``full``, ``target``, ``target_only`` (any case), if only reference
    methods (``otm``, ``full``, ``target_only``) use it, or if its rows do not share one
    finite ratio (e.g. OTM's per-seed ratio).

    Raises
    ------
    TarotInputError
        If the runs table is malformed.
    """
    return _ordered_labels(_check_runs(runs))


def _ordered_labels(runs: pd.DataFrame) -> list[str]:
    """Label order of a checked runs table (see :func:`ordered_labels`)."""
    numeric: list[tuple[float, int, str]] = []
    special: list[str] = []
    for pos, (label, grp) in enumerate(runs.groupby("ratio_label", sort=False)):
        ratios = grp["ratio"].to_numpy(dtype=float)
        fixed = np.isfinite(ratios).all() and np.allclose(ratios, ratios[0], rtol=1e-9, atol=0.0)
        only_refs = set(grp["method"]) <= REFERENCE_METHODS
        if str(label).lower() in _SPECIAL_LABELS or only_refs or not fixed:
            special.append(str(label))
        else:
            numeric.append((float(ratios[0]), pos, str(label)))
    return [lab for _, _, lab in sorted(numeric)] + special


def _summarize(
    runs: pd.DataFrame, higher_is_better: bool, value_column: str
) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Check the runs and aggregate them; return (long summary, label order, checked runs)."""
    df = _check_runs(runs, value_column)
    grouped = df.groupby(["method", "ratio_label"], sort=False)
    out = grouped[value_column].agg(["mean", "count"]).rename(columns={"count": "n_seeds"})
    out["std"] = grouped[value_column].std(ddof=DDOF)
    out["ratio"] = grouped["ratio"].mean()
    out = out.reset_index()
    out["n_seeds"] = out["n_seeds"].astype("int64")
    out["best"] = _best_flags(out, higher_is_better)
    labels = _ordered_labels(df)
    pairs = list(zip(out["method"], out["ratio_label"]))
    order = sorted(range(len(out)), key=lambda i: (_method_key(pairs[i][0]), labels.index(pairs[i][1])))
    out = out.iloc[order].reset_index(drop=True)
    return out[_LONG_COLUMNS], labels, df


def _best_flags(summary: pd.DataFrame, higher_is_better: bool) -> pd.Series:
    """True where a row's mean is the best of its label column (columns of >= 2 methods only)."""
    flags = pd.Series(False, index=summary.index, dtype=bool)
    for _, grp in summary.groupby("ratio_label", sort=False):
        if len(grp) < 2:
            continue
        means = grp["mean"].to_numpy(dtype=float)
        target = means.max() if higher_is_better else means.min()
        hit = np.isclose(means, target, rtol=1e-12, atol=0.0)
        flags.loc[grp.index[hit]] = True
    return flags


def summary_long(runs: pd.DataFrame, higher_is_better: bool = True, *, value_column: str = "metric") -> pd.DataFrame:
    """Aggregate the runs over seeds, one row per (method, ratio label).

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table (see the module docstring).
    higher_is_better : bool
        Whether the best mean of a column is its maximum (else its minimum).
    value_column : str
        Column to aggregate (``"metric"``, or an extra ``metric_<name>`` column).

    Returns
    -------
    pd.DataFrame
        Columns ``method, ratio_label, ratio, mean, std, n_seeds, best``, rows in table
        order (methods as in :data:`METHOD_ORDER`, labels as in :func:`ordered_labels`).
        ``ratio`` is the mean ratio over seeds (OTM's may vary per seed), ``std`` the
        sample standard deviation (``ddof=1``; NaN with one seed). ``best`` marks, in each
        label column that at least two methods share, the method(s) with the best mean
        (exact ties share it); a column with a single method (e.g. ``full``) has no best.

    Raises
    ------
    TarotInputError
        If the runs table is malformed (see the module docstring).
    """
    long, _, _ = _summarize(runs, higher_is_better, value_column)
    return long


def summary_table(runs: pd.DataFrame, higher_is_better: bool = True, *, value_column: str = "metric") -> pd.DataFrame:
    """Wide summary: one row per method, one column group per ratio label.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    higher_is_better : bool
        Whether the best mean of a column is its maximum (else its minimum).
    value_column : str
        Column to aggregate.

    Returns
    -------
    pd.DataFrame
        Index ``method`` (in :data:`METHOD_ORDER`, others alphabetically); columns a
        two-level index ``(ratio_label, field)`` with labels ordered as in
        :func:`ordered_labels` and fields ``mean``, ``std`` (``ddof=1``; NaN where absent
        or single-seed), ``n_seeds`` (0 where the method lacks the column) and ``best``
        (bool, see :func:`summary_long`). ``table[("10%", "mean")]`` is one column;
        ``table.xs("best", axis=1, level="field")`` is the best-per-column mask.

    Raises
    ------
    TarotInputError
        If the runs table is malformed.
    """
    long, labels, _ = _summarize(runs, higher_is_better, value_column)
    return _widen(long, labels)


def _widen(long: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Pivot a long summary into the wide table, keeping the method and label orders."""
    methods = list(dict.fromkeys(long["method"]))
    wide = long.set_index(["method", "ratio_label"])[list(_WIDE_FIELDS)].unstack("ratio_label")
    wide = wide.swaplevel(0, 1, axis=1)
    cols = pd.MultiIndex.from_product([list(labels), list(_WIDE_FIELDS)], names=["ratio_label", "field"])
    wide = wide.reindex(index=methods, columns=cols)
    fixed: dict[tuple[str, str], pd.Series] = {}
    for label in labels:
        fixed[(label, "mean")] = wide[(label, "mean")].astype("float64")
        fixed[(label, "std")] = wide[(label, "std")].astype("float64")
        fixed[(label, "n_seeds")] = wide[(label, "n_seeds")].fillna(0).astype("int64")
        fixed[(label, "best")] = wide[(label, "best")].astype(object).fillna(False).astype(bool)
    out = pd.DataFrame(fixed, index=pd.Index(methods, name="method"))
    out.columns = cols
    return out


# --------------------------------------------------------------------------- tables


def _percent_scale(values: pd.Series | np.ndarray) -> bool:
    """True if every value lies in [0, 1] (shown x100 with one decimal)."""
    arr = np.asarray(values, dtype=float)
    return bool(arr.size) and bool(np.all((arr >= 0.0) & (arr <= 1.0)))


def _decimals(mean: float, percent: bool) -> int:
    """Decimals to show: 1 on the x100 scale, else enough for 3 significant digits of the mean."""
    if percent:
        return 1
    if mean == 0.0 or not math.isfinite(mean):
        return 2
    return max(0, 2 - math.floor(math.log10(abs(mean))))


def _format_cell(mean: float, std: float, n_seeds: int, n_max: int, percent: bool) -> str:
    """``"91.2 ± 0.8"`` (std omitted for one seed; ``(n=k)`` when fewer seeds than elsewhere)."""
    factor = 100.0 if percent else 1.0
    dec = _decimals(mean * factor, percent)
    text = f"{mean * factor:.{dec}f}"
    if n_seeds > 1 and math.isfinite(std):
        text += f" ± {std * factor:.{dec}f}"
    if n_seeds < n_max:
        text += f" (n={n_seeds})"
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _seed_phrase(n_values: Sequence[int]) -> str:
    lo, hi = min(n_values), max(n_values)
    if lo == hi:
        return f"{hi} seed" + ("s" if hi != 1 else "")
    return f"{lo}-{hi} seeds per cell"


def _markdown(
    wide: pd.DataFrame,
    labels: Sequence[str],
    metric_name: str,
    percent: bool,
    higher_is_better: bool,
    otm_ratio: float | None,
    title: str | None,
) -> str:
    """Render the wide summary as a Markdown document (header, table, footnote)."""
    n_all = [int(wide.at[m, (lab, "n_seeds")]) for m in wide.index for lab in labels]
    n_all = [n for n in n_all if n > 0]
    n_max = max(n_all)
    scale = " ×100" if percent else ""
    direction = "higher" if higher_is_better else "lower"
    lines: list[str] = []
    if title:
        lines += [f"## {title}", ""]
    lines.append(
        f"**Metric: {_md_escape(metric_name)}**{scale}, mean ± std over {_seed_phrase(n_all)} "
        f"(sample std, ddof={DDOF}); {direction} is better; best per column in **bold**."
    )
    lines += ["", "| method | " + " | ".join(_md_escape(lab) for lab in labels) + " |"]
    lines.append("|:---|" + "---:|" * len(labels))
    for method in wide.index:
        cells = [_markdown_cell(wide, method, lab, n_max, percent) for lab in labels]
        lines.append(f"| {_md_escape(str(method))} | " + " | ".join(cells) + " |")
    if otm_ratio is not None:
        lines += ["", f"OTM selected {otm_ratio * 100:.1f} % of the pool."]
    return "\n".join(lines) + "\n"


def _markdown_cell(wide: pd.DataFrame, method: str, label: str, n_max: int, percent: bool) -> str:
    n_seeds = int(wide.at[method, (label, "n_seeds")])
    if n_seeds == 0:
        return "–"
    text = _format_cell(
        float(wide.at[method, (label, "mean")]), float(wide.at[method, (label, "std")]), n_seeds, n_max, percent
    )
    return f"**{text}**" if bool(wide.at[method, (label, "best")]) else text


def _check_metric_name(metric_name: Any) -> str:
    if not isinstance(metric_name, str) or not metric_name.strip():
        raise TarotInputError(f"metric_name must be a non-empty string, got {metric_name!r}")
    return metric_name


def _check_otm_ratio(otm_ratio: Any) -> float | None:
    if otm_ratio is None:
        return None
    value = _finite_float(otm_ratio)
    if value is None or not 0.0 < value <= 1.0:
        raise TarotInputError(f"otm_ratio must be a fraction in (0, 1], got {otm_ratio!r}")
    return value


def format_markdown(
    runs: pd.DataFrame,
    metric_name: str,
    higher_is_better: bool = True,
    otm_ratio: float | None = None,
    title: str | None = None,
    *,
    value_column: str = "metric",
) -> str:
    """The Markdown summary that :func:`write_tables` writes, as a string.

    Cells read ``mean ± std`` (x100 with one decimal when every value lies in [0, 1], else
    3 significant digits of the mean, std to the same decimals; std left out for a single
    seed; ``(n=k)`` added where a cell has fewer seeds than the most seeded one; ``–``
    where a method lacks the column). The best cell of each shared column is in bold.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    metric_name : str
        Name of the metric, shown in the header line.
    higher_is_better : bool
        Direction of the best-per-column marking.
    otm_ratio : float, optional
        OTM's chosen ratio (fraction of the pool); adds the footnote
        ``"OTM selected 23.4 % of the pool."``.
    title : str, optional
        A ``## title`` line above the header.
    value_column : str
        Column to aggregate.
    """
    metric_name = _check_metric_name(metric_name)
    otm = _check_otm_ratio(otm_ratio)
    long, labels, df = _summarize(runs, higher_is_better, value_column)
    percent = _percent_scale(df[value_column])
    return _markdown(_widen(long, labels), labels, metric_name, percent, higher_is_better, otm, title)


def write_tables(
    runs: pd.DataFrame,
    csv_path: PathLike,
    md_path: PathLike,
    metric_name: str,
    higher_is_better: bool = True,
    otm_ratio: float | None = None,
    title: str | None = None,
    *,
    value_column: str = "metric",
) -> pd.DataFrame:
    """Write the summary as a long CSV and a Markdown table, both atomically.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    csv_path : path-like
        Destination of the long CSV: columns ``method, ratio_label, ratio, mean, std,
        n_seeds, best`` (full float precision, no index).
    md_path : path-like
        Destination of the Markdown document (see :func:`format_markdown`).
    metric_name : str
        Name of the metric, shown in the Markdown header.
    higher_is_better : bool
        Direction of the best-per-column marking.
    otm_ratio : float, optional
        OTM's chosen ratio (fraction of the pool) for the footnote; none if not given.
    title : str, optional
        Markdown title.
    value_column : str
        Column to aggregate.

    Returns
    -------
    pd.DataFrame
        The long summary that was written to the CSV.

    Raises
    ------
    TarotInputError
        On a malformed runs table, an empty metric name or an ``otm_ratio`` outside (0, 1].
        Nothing is written then.
    """
    metric_name = _check_metric_name(metric_name)
    otm = _check_otm_ratio(otm_ratio)
    long, labels, df = _summarize(runs, higher_is_better, value_column)
    percent = _percent_scale(df[value_column])
    text = _markdown(_widen(long, labels), labels, metric_name, percent, higher_is_better, otm, title)
    with atomic_path(csv_path) as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logger.info("wrote summary of %d cells to %s and %s", len(long), csv_path, md_path)
    return long


# --------------------------------------------------------------------------- figures


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


_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def plot_metric_vs_ratio(
    runs: pd.DataFrame,
    path: PathLike,
    metric_name: str,
    title: str | None = None,
    *,
    value_column: str = "metric",
    log_x: bool | None = None,
) -> Path:
    """Plot the metric against the selected ratio, one curve per method (paper Figs. 5/7).

    Methods other than ``otm``, ``full`` and ``target_only`` are lines with markers and
    std error bars at their mean ratio per label; ``otm`` is a star at its (mean) chosen
    ratio, with horizontal error bars when the ratio varies over seeds; ``full`` and
    ``target_only`` are dashed horizontal lines with a light ±std band. Values in [0, 1]
    are shown x100.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    path : path-like
        Destination PNG (written atomically, 120 dpi).
    metric_name : str
        y-axis label.
    title : str, optional
        Figure title.
    value_column : str
        Column to plot.
    log_x : bool, optional
        Log-scaled x axis; by default log when the ratios span a factor of 8 or more.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed runs table or an empty metric name; no file is written.
    """
    metric_name = _check_metric_name(metric_name)
    long, _, df = _summarize(runs, True, value_column)
    factor = 100.0 if _percent_scale(df[value_column]) else 1.0
    colours = _method_colours(list(long["method"]))
    fig = _new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    xs = _draw_curves(ax, long, colours, factor)
    xs += _draw_otm(ax, long, df, colours, factor, value_column)
    _draw_references(ax, long, colours, factor)
    _style_ratio_axes(ax, xs, log_x)
    ax.set_ylabel(metric_name + (" (×100)" if factor != 1.0 else ""))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="best")
    return _save_png(fig, path)


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
    """A star per OTM label at its mean chosen ratio; returns its x (%)."""
    xs: list[float] = []
    rows = long[(long["method"] == "otm") & long["ratio"].notna()]
    for _, row in rows.iterrows():
        ratios = df.loc[(df["method"] == "otm") & (df["ratio_label"] == row["ratio_label"]), "ratio"]
        x = float(row["ratio"]) * 100.0
        xerr = float(ratios.std(ddof=DDOF)) * 100.0 if len(ratios) > 1 else 0.0
        yerr = float(np.nan_to_num(row["std"] * factor, nan=0.0))
        ax.errorbar(
            [x],
            [float(row["mean"]) * factor],
            yerr=[yerr],
            xerr=[np.nan_to_num(xerr)],
            color=colours["otm"],
            marker="*",
            markersize=15,
            linestyle="none",
            capsize=3,
            label=f"otm ({x:.1f} %)",
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
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    ax.set_xlabel("selected ratio of the pool (%)")
    ax.grid(True, alpha=0.3)


# --------------------------------------------------------------------------- t-SNE

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
