"""Summaries of the runs table over seeds: row and column order, mean/std, best flags.

The best mean of a label column is its maximum or its minimum as the metric spec's
``higher_is_better`` says (:func:`~.runs.resolve_spec`: ``runs.attrs["metric_spec"]`` by
default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .runs import _check_runs, resolve_spec

__all__ = [
    "DDOF",
    "METHOD_ORDER",
    "REFERENCE_METHODS",
    "ordered_labels",
    "ordered_methods",
    "summary_long",
    "summary_table",
]

#: Row order of the tables; other methods follow alphabetically.
METHOD_ORDER: tuple[str, ...] = (
    "target_only",
    "full",
    "random",
    "dsdm",
    "less",
    "infdist",
    "tarot",
    "tarot_concat",
    "tarot_weighted",
    "otm",
    "otm_weighted",
)
#: Methods drawn as references (horizontal lines / a single star) rather than curves.
REFERENCE_METHODS: frozenset[str] = frozenset({"otm", "otm_weighted", "full", "target_only"})
#: Degrees of freedom of the reported standard deviation (sample std, pandas' default).
DDOF: int = 1

#: Labels kept after the numeric-ratio columns, in order of first appearance.
_SPECIAL_LABELS: frozenset[str] = frozenset({"otm", "full", "target", "target_only"})
_LONG_COLUMNS: list[str] = ["method", "ratio_label", "ratio", "mean", "std", "n_seeds", "best"]
_WIDE_FIELDS: tuple[str, ...] = ("mean", "std", "n_seeds", "best")


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
    runs: pd.DataFrame, value_column: str, spec: Mapping[str, Any] | None
) -> tuple[pd.DataFrame, list[str], pd.DataFrame, dict[str, Any]]:
    """Check the runs and aggregate them; return (long summary, label order, checked runs, spec)."""
    df = _check_runs(runs, value_column)
    spec = resolve_spec(runs, value_column, spec)
    grouped = df.groupby(["method", "ratio_label"], sort=False)
    out = grouped[value_column].agg(["mean", "count"]).rename(columns={"count": "n_seeds"})
    out["std"] = grouped[value_column].std(ddof=DDOF)
    out["ratio"] = grouped["ratio"].mean()
    out = out.reset_index()
    out["n_seeds"] = out["n_seeds"].astype("int64")
    out["best"] = _best_flags(out, spec["higher_is_better"])
    labels = _ordered_labels(df)
    pairs = list(zip(out["method"], out["ratio_label"]))
    order = sorted(range(len(out)), key=lambda i: (_method_key(pairs[i][0]), labels.index(pairs[i][1])))
    out = out.iloc[order].reset_index(drop=True)
    return out[_LONG_COLUMNS], labels, df, spec


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


def summary_long(
    runs: pd.DataFrame, *, value_column: str = "metric", spec: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Aggregate the runs over seeds, one row per (method, ratio label).

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table (see :mod:`tarot_select.experiments.report`).
    value_column : str
        Column to aggregate (``"metric"``, or an extra ``metric_<name>`` column).
    spec : mapping, optional
        Metric spec of ``value_column``; by default ``runs.attrs["metric_spec"]`` (the
        primary metric's, set by :func:`~.runs.collect_runs`). Its
        ``higher_is_better`` says whether the best mean of a column is its maximum (else
        its minimum).

    Returns
    -------
    pd.DataFrame
        Columns ``method, ratio_label, ratio, mean, std, n_seeds, best``, rows in table
        order (methods as in :data:`METHOD_ORDER`, labels as in :func:`ordered_labels`).
        ``ratio`` is the mean ratio over seeds (OTM's may vary per seed), ``std`` the
        sample standard deviation (``ddof=1``; NaN with one seed), both of the stored
        (unscaled) values. ``best`` marks, in each label column that at least two methods
        share, the method(s) with the best mean (exact ties share it); a column with a
        single method (e.g. ``full``) has no best.

    Raises
    ------
    TarotInputError
        If the runs table is malformed or has no (valid) metric spec.
    """
    long, _, _, _ = _summarize(runs, value_column, spec)
    return long


def summary_table(
    runs: pd.DataFrame, *, value_column: str = "metric", spec: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Wide summary: one row per method, one column group per ratio label.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    value_column : str
        Column to aggregate.
    spec : mapping, optional
        Metric spec of ``value_column`` (default ``runs.attrs["metric_spec"]``); its
        ``higher_is_better`` sets the direction of ``best``.

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
        If the runs table is malformed or has no (valid) metric spec.
    """
    long, labels, _, _ = _summarize(runs, value_column, spec)
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
