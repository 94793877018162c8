"""Run records: per-run JSON files -> the tidy runs table, its checks and its metric spec.

A run record (written by the evaluate rule) holds ``method``, ``ratio``, ``ratio_label``,
``seed``, ``metrics`` (name -> value), ``metric`` (the primary metric's name) and
``metric_spec``, the primary metric's spec::

    {"name": "accuracy", "label": "accuracy", "unit": "%", "scale": 100.0, "higher_is_better": true}

Displayed value = stored value × ``scale``; ``unit`` is the unit of the displayed value
(``""`` for none); ``higher_is_better`` decides the best entry of a table column;
``label`` (default: ``name``) names the metric in headers and axis labels.

:func:`collect_runs` stores the spec, checked and completed, in the runs table's
``attrs["metric_spec"]`` (a plain dict with exactly the five keys above); the summaries,
tables and figures read it from there (:func:`resolve_spec`).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import TarotInputError

__all__ = ["SPEC_ATTR", "check_spec", "collect_runs", "resolve_spec"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Key of the metric spec in the runs table's ``attrs``.
SPEC_ATTR = "metric_spec"

_REQUIRED_COLUMNS: tuple[str, ...] = ("method", "ratio", "ratio_label", "seed", "metric")
_REQUIRED_KEYS: tuple[str, ...] = ("method", "ratio", "ratio_label", "seed", "metrics", "metric")
#: Keys a metric spec must have (``label`` is optional and defaults to ``name``).
_SPEC_KEYS: tuple[str, ...] = ("name", "unit", "scale", "higher_is_better")


# --------------------------------------------------------------------------- collect


def collect_runs(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Read per-run JSON files into the tidy runs table.

    Each file holds ``{"method", "ratio", "ratio_label", "seed", "metrics": {name: value},
    "metric": name, "metric_spec": {...}, ...}``; other keys are ignored. ``ratio`` may be
    ``null`` (NaN, for ``target_only``). ``metric_spec`` is the primary metric's spec (see
    the module docstring); its ``name`` must be ``metric``.

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
        ``attrs["metric_spec"]`` holds the primary metric's spec, shared by every file.

    Raises
    ------
    TarotInputError
        If no path is given, or a file is unreadable, lacks a key (a file without
        ``metric_spec`` predates it: rerun the evaluate rule), has a malformed spec or a
        non-finite primary metric, names a different primary metric or spec than the
        first file, or repeats a (method, ratio_label, seed) run of another file. The
        message names the file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise TarotInputError("collect_runs: no run files given")
    records = [_read_run(Path(p)) for p in paths]
    _check_same_metric(records)
    _check_unique_runs(records)
    spec = records[0]["metric_spec"]
    frame = pd.DataFrame.from_records([{k: v for k, v in rec.items() if k != "metric_spec"} for rec in records])
    extra = sorted(c for c in frame.columns if c.startswith("metric_") and c != "metric_name")
    provenance = ["samples_per_epoch", "dsdm_features", "composition", "group_totals", "group_sizes", "architectures"]
    frame = frame[["method", "ratio", "ratio_label", "seed", "metric", "metric_name", *extra, "source", *provenance]]
    frame["seed"] = frame["seed"].astype("int64")
    frame["ratio"] = frame["ratio"].astype("float64")
    frame.attrs[SPEC_ATTR] = dict(spec)
    logger.info("collected %d runs from %d files", len(frame), len(paths))
    return frame


def _read_run(path: Path) -> dict[str, Any]:
    """Parse and check one run file into a flat record (plus its ``metric_spec``)."""
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
    if SPEC_ATTR not in data:
        raise TarotInputError(
            f"{path}: no 'metric_spec' (the primary metric's unit, scale and direction); the record "
            "predates it: regenerate it by rerunning the evaluate rule"
        )
    spec = check_spec(data[SPEC_ATTR], str(path))
    if spec["name"] != name:
        raise TarotInputError(f"{path}: metric_spec names {spec['name']!r} but the primary metric is {name!r}")
    record: dict[str, Any] = {
        "method": _nonempty_str(data["method"], "method", path),
        "ratio": _ratio_value(data["ratio"], path),
        "ratio_label": _nonempty_str(data["ratio_label"], "ratio_label", path),
        "seed": _seed_value(data["seed"], path),
        "metric": value,
        "metric_name": name,
        "source": str(path),
        SPEC_ATTR: spec,
    }
    steps = data.get("samples_per_epoch")
    record["samples_per_epoch"] = (
        float(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) else np.nan
    )
    record["dsdm_features"] = data.get("dsdm_features") if isinstance(data.get("dsdm_features"), str) else None
    record["composition"] = data.get("composition") if isinstance(data.get("composition"), dict) else None
    for key in ("group_totals", "group_sizes", "architectures"):
        record[key] = data.get(key) if isinstance(data.get(key), dict) else None
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
    first = records[0]
    for rec in records[1:]:
        if rec["metric_name"] != first["metric_name"]:
            raise TarotInputError(
                f"{rec['source']}: primary metric {rec['metric_name']!r} differs from "
                f"{first['metric_name']!r} in {first['source']}"
            )
        if rec[SPEC_ATTR] != first[SPEC_ATTR]:
            raise TarotInputError(
                f"{rec['source']}: metric_spec {rec[SPEC_ATTR]} differs from {first[SPEC_ATTR]} in "
                f"{first['source']}; all records of one table must share the spec"
            )


def _check_unique_runs(records: Sequence[Mapping[str, Any]]) -> None:
    seen: dict[tuple[str, str, int], str] = {}
    for rec in records:
        key = (rec["method"], rec["ratio_label"], rec["seed"])
        if key in seen:
            raise TarotInputError(f"{rec['source']}: run {key} already read from {seen[key]}")
        seen[key] = rec["source"]


# --------------------------------------------------------------------------- metric spec


def check_spec(spec: Any, where: str) -> dict[str, Any]:
    """Check a metric spec and return it complete: ``name, label, unit, scale, higher_is_better``.

    Parameters
    ----------
    spec : Any
        The spec (a mapping); other keys are dropped.
    where : str
        What holds it (a file path, ``"runs.attrs['metric_spec']"``), for the messages.

    Returns
    -------
    dict
        ``name`` and ``label`` (default: ``name``) non-empty strings, ``unit`` a string,
        ``scale`` a finite float > 0 and ``higher_is_better`` a bool.

    Raises
    ------
    TarotInputError
        If ``spec`` is not a mapping, lacks a key or has a value of the wrong kind.
    """
    if not isinstance(spec, Mapping):
        raise TarotInputError(f"{where}: metric_spec must be an object, got {type(spec).__name__}")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise TarotInputError(f"{where}: metric_spec lacks key(s) {', '.join(missing)}")
    name, label, unit = spec["name"], spec.get("label", spec["name"]), spec["unit"]
    scale, higher = spec["scale"], spec["higher_is_better"]
    for key, val in (("name", name), ("label", label)):
        if not isinstance(val, str) or not val.strip():
            raise TarotInputError(f"{where}: metric_spec {key!r} must be a non-empty string, got {val!r}")
    if not isinstance(unit, str):
        raise TarotInputError(f"{where}: metric_spec 'unit' must be a string, got {unit!r}")
    factor = _finite_float(scale)
    if factor is None or factor <= 0.0:
        raise TarotInputError(f"{where}: metric_spec 'scale' must be a finite number > 0, got {scale!r}")
    if not isinstance(higher, bool):
        raise TarotInputError(f"{where}: metric_spec 'higher_is_better' must be true or false, got {higher!r}")
    return {"name": name, "label": label, "unit": unit, "scale": factor, "higher_is_better": higher}


def resolve_spec(
    runs: pd.DataFrame, value_column: str = "metric", spec: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The checked metric spec of ``value_column`` of a runs table.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    value_column : str
        The column to be shown.
    spec : mapping, optional
        The column's spec. By default ``runs.attrs["metric_spec"]`` (set by
        :func:`collect_runs`), which describes the primary metric and so serves
        ``value_column="metric"`` only.

    Raises
    ------
    TarotInputError
        If no spec is given and ``runs.attrs`` has none (or ``value_column`` is another
        column), or the spec is malformed.
    """
    if spec is not None:
        return check_spec(spec, "spec")
    if value_column != "metric":
        raise TarotInputError(
            f"runs.attrs['{SPEC_ATTR}'] describes the primary metric; pass spec= for column {value_column!r}"
        )
    if SPEC_ATTR not in runs.attrs:
        raise TarotInputError(
            f"runs table carries no metric spec (runs.attrs['{SPEC_ATTR}']); build it with collect_runs "
            "from run records that have one, or pass spec="
        )
    return check_spec(runs.attrs[SPEC_ATTR], f"runs.attrs['{SPEC_ATTR}']")


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
