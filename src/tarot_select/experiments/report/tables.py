"""Tables: the long CSV and the Markdown table of a runs summary, and their cell format.

The CSV holds the stored values (full float precision); the Markdown shows them as the
metric spec says (:mod:`~.runs`): value × ``scale``, the header naming the metric's
``label``, the scale and the ``unit``, the best cell per column (``higher_is_better``)
in bold.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ...errors import TarotInputError
from ...io import atomic_path
from .runs import SPEC_ATTR, PathLike, _finite_float, collect_runs
from .summary import DDOF, _summarize, _widen, ordered_methods

__all__ = ["format_markdown", "write_pool_table", "write_tables", "write_task_tables"]

logger = logging.getLogger(__name__)


def _decimals(mean: float, percent: bool) -> int:
    """Decimals to show: 1 for a percentage, else enough for 3 significant digits of the mean."""
    if percent:
        return 1
    if mean == 0.0 or not math.isfinite(mean):
        return 2
    return max(0, 2 - math.floor(math.log10(abs(mean))))


def _format_cell(mean: float, std: float, n_seeds: int, n_max: int, scale: float, percent: bool) -> str:
    """``"91.2 ± 0.8"`` (std omitted for one seed; ``(n=k)`` when fewer seeds than elsewhere).

    ``mean`` and ``std`` are stored values, shown × ``scale``; ``percent`` (unit ``%``)
    fixes one decimal.
    """
    dec = _decimals(mean * scale, percent)
    text = f"{mean * scale:.{dec}f}"
    if n_seeds > 1 and math.isfinite(std):
        text += f" ± {std * scale:.{dec}f}"
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


def _header_note(spec: Mapping[str, Any]) -> str:
    """What follows the metric's label in the Markdown header: the scale and the unit.

    `` ×<scale>`` when the shown values are scaled (the CSV holds the stored ones), then
    `` (<unit>)`` for a non-empty unit, except ``%`` under a ×100 scale, which the
    `` ×100`` already says (``"**Metric: accuracy** ×100"``, ``"**Metric: minFDE** (m)"``).
    """
    scale, unit = float(spec["scale"]), str(spec["unit"])
    note = f" ×{scale:g}" if scale != 1.0 else ""
    if unit and not (unit == "%" and scale == 100.0):
        note += f" ({_md_escape(unit)})"
    return note


def _markdown(
    wide: pd.DataFrame,
    labels: Sequence[str],
    spec: Mapping[str, Any],
    otm_ratio: float | None,
    title: str | None,
    notes: Sequence[str] = (),
) -> str:
    """Render the wide summary as a Markdown document (header, table, footnotes)."""
    n_all = [int(wide.at[m, (lab, "n_seeds")]) for m in wide.index for lab in labels]
    n_all = [n for n in n_all if n > 0]
    n_max = max(n_all)
    direction = "higher" if spec["higher_is_better"] else "lower"
    lines: list[str] = []
    if title:
        lines += [f"## {title}", ""]
    lines.append(
        f"**Metric: {_md_escape(spec['label'])}**{_header_note(spec)}, mean ± std over {_seed_phrase(n_all)} "
        f"(sample std, ddof={DDOF}); {direction} is better; best per column in **bold**."
    )
    lines += ["", "| method | " + " | ".join(_md_escape(lab) for lab in labels) + " |"]
    lines.append("|:---|" + "---:|" * len(labels))
    for method in wide.index:
        cells = [_markdown_cell(wide, method, lab, n_max, spec) for lab in labels]
        lines.append(f"| {_md_escape(str(method))} | " + " | ".join(cells) + " |")
    if otm_ratio is not None:
        lines += ["", f"OTM selected {otm_ratio * 100:.1f} % of the pool."]
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _markdown_cell(wide: pd.DataFrame, method: str, label: str, n_max: int, spec: Mapping[str, Any]) -> str:
    n_seeds = int(wide.at[method, (label, "n_seeds")])
    if n_seeds == 0:
        return "–"
    text = _format_cell(
        float(wide.at[method, (label, "mean")]),
        float(wide.at[method, (label, "std")]),
        n_seeds,
        n_max,
        float(spec["scale"]),
        spec["unit"] == "%",
    )
    return f"**{text}**" if bool(wide.at[method, (label, "best")]) else text


def _check_otm_ratio(otm_ratio: Any) -> float | None:
    if otm_ratio is None:
        return None
    value = _finite_float(otm_ratio)
    if value is None or not 0.0 < value <= 1.0:
        raise TarotInputError(f"otm_ratio must be a fraction in (0, 1], got {otm_ratio!r}")
    return value


def format_markdown(
    runs: pd.DataFrame,
    otm_ratio: float | None = None,
    title: str | None = None,
    *,
    value_column: str = "metric",
    spec: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown summary that :func:`write_tables` writes, as a string.

    The header names the metric's label, its scale and unit (see the module docstring)
    and the direction. Cells read ``mean ± std`` of the values × ``scale`` (one decimal
    for the unit ``%``, else 3 significant digits of the mean, std to the same decimals;
    std left out for a single seed; ``(n=k)`` added where a cell has fewer seeds than the
    most seeded one; ``–`` where a method lacks the column). The best cell of each shared
    column (as the spec's ``higher_is_better`` says) is in bold.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    otm_ratio : float, optional
        OTM's chosen ratio (fraction of the pool); adds the footnote
        ``"OTM selected 23.4 % of the pool."``.
    title : str, optional
        A ``## title`` line above the header.
    value_column : str
        Column to aggregate.
    spec : mapping, optional
        Metric spec of ``value_column``; by default ``runs.attrs["metric_spec"]``.

    Raises
    ------
    TarotInputError
        On a malformed runs table, a missing or malformed spec or an ``otm_ratio``
        outside (0, 1].
    """
    otm = _check_otm_ratio(otm_ratio)
    long, labels, _, spec = _summarize(runs, value_column, spec)
    return _markdown(_widen(long, labels), labels, spec, otm, title)


def write_tables(
    runs: pd.DataFrame,
    csv_path: PathLike,
    md_path: PathLike,
    otm_ratio: float | None = None,
    title: str | None = None,
    *,
    value_column: str = "metric",
    spec: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> pd.DataFrame:
    """Write the summary as a long CSV and a Markdown table, both atomically.

    Parameters
    ----------
    runs : pd.DataFrame
        The tidy runs table.
    csv_path : path-like
        Destination of the long CSV: columns ``method, ratio_label, ratio, mean, std,
        n_seeds, best`` (stored values, unscaled, full float precision, no index).
    md_path : path-like
        Destination of the Markdown document (see :func:`format_markdown`).
    otm_ratio : float, optional
        OTM's chosen ratio (fraction of the pool) for the footnote; none if not given.
    title : str, optional
        Markdown title.
    value_column : str
        Column to aggregate.
    spec : mapping, optional
        Metric spec of ``value_column``; by default ``runs.attrs["metric_spec"]``.
    notes : sequence of str
        Footnote paragraphs under the table.

    Returns
    -------
    pd.DataFrame
        The long summary that was written to the CSV.

    Raises
    ------
    TarotInputError
        On a malformed runs table, a missing or malformed spec or an ``otm_ratio``
        outside (0, 1]. Nothing is written then.
    """
    otm = _check_otm_ratio(otm_ratio)
    long, labels, _, spec = _summarize(runs, value_column, spec)
    text = _markdown(_widen(long, labels), labels, spec, otm, title, notes)
    with atomic_path(csv_path) as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logger.info("wrote summary of %d cells to %s and %s", len(long), csv_path, md_path)
    return long


def write_task_tables(
    records: Sequence[PathLike],
    csv_path: PathLike,
    md_path: PathLike,
    task: str,
    otm_json: PathLike | None = None,
) -> pd.DataFrame:
    """The ``table`` rule: collect a task's run records and write its CSV and Markdown tables.

    Parameters
    ----------
    records : sequence of path-like
        The task's run records (see :func:`~.runs.collect_runs`); their metric spec sets
        the display and the direction.
    csv_path, md_path : path-like
        Destinations (see :func:`write_tables`).
    task : str
        Task name, for the title ``"<task>: downstream <metric label>"``.
    otm_json : path-like, optional
        OTM's selection summary; its ``chosen_ratio`` becomes the footnote.

    Returns
    -------
    pd.DataFrame
        The long summary that was written to the CSV.

    Raises
    ------
    TarotInputError
        On bad records (see :func:`~.runs.collect_runs`) or an unreadable ``otm_json``.
    """
    runs = collect_runs(records)
    otm_ratio = _read_otm_ratio(Path(otm_json)) if otm_json else None
    label = runs.attrs[SPEC_ATTR]["label"]
    notes = [_steps_note(runs)] if "samples_per_epoch" in runs else []
    if "dsdm_features" in runs and runs["dsdm_features"].notna().any():
        kinds = sorted(set(runs["dsdm_features"].dropna()))
        notes.append("dsdm scored TRAK datamodels of " + "; ".join(kinds) + ".")
    notes += _transfer_table(runs)
    if "composition" in runs:
        notes += _composition_tables(runs)
    return write_tables(runs, csv_path, md_path, otm_ratio=otm_ratio, title=f"{task}: downstream {label}", notes=notes)


def _steps_note(runs: pd.DataFrame) -> str:
    """Whether every method at a ratio trained on as many samples per epoch (compute-matched)."""
    at_ratio = runs[runs["ratio_label"].str.endswith("%") & runs["samples_per_epoch"].notna()]
    per_label = at_ratio.groupby("ratio_label", sort=False)["samples_per_epoch"].unique()
    if per_label.empty:
        return ""
    if all(len(v) == 1 for v in per_label):
        counts = ", ".join(f"{lab}: {int(v[0])}" for lab, v in per_label.items())
        return (
            f"Compute-matched: at each ratio every method trains on the same number of samples per epoch ({counts}; "
            "tarot_weighted repeats samples by OT potentials, the others uniformly)."
        )
    unequal = ", ".join(f"{lab}: {sorted(int(x) for x in v)}" for lab, v in per_label.items() if len(v) > 1)
    return f"Not compute-matched: samples per epoch differ between methods at {unequal}."


def _read_otm_ratio(path: Path) -> Any:
    """``chosen_ratio`` of OTM's selection summary (checked by :func:`_check_otm_ratio`)."""
    try:
        data = json.loads(path.read_text())
        return data["chosen_ratio"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TarotInputError(f"{path}: cannot read OTM's chosen_ratio: {exc!r}") from None


#: What the run records' ``architectures`` keys other than ``downstream`` mean: a model also
#: trained on every selection, whose metrics are prefixed ``<key>_`` (key: how the tables name it).
TRANSFER_ROLES: dict[str, str] = {"proxy_arch": "the proxy's architecture", "transfer": "the transfer model"}
#: Kinds of group with at most this many groups get a table of the share of each group kept.
MAX_GROUPS_SHOWN = 12


def _other_models(runs: pd.DataFrame, primary: str) -> tuple[str, list[tuple[str, str]]]:
    """The downstream model's name and, for every other model trained on the same selections
    (records with ``<key>_<primary>`` metrics), its key and name, from the records'
    ``architectures`` (``{"downstream": ..., key: name}``); a record set without names but with
    ``proxy_arch_<primary>`` metrics (older records) gets generic names."""
    named: dict[str, str] = {}
    if "architectures" in runs:
        for arch in runs["architectures"].dropna():
            named = {str(k): str(v) for k, v in arch.items()}
            break
    keys = [k for k in named if k != "downstream"] or ["proxy_arch"]
    others = [(k, named.get(k, TRANSFER_ROLES.get(k, k))) for k in keys if f"metric_{k}_{primary}" in runs]
    return named.get("downstream", "downstream model"), [
        (k, n) for k, n in others if runs[f"metric_{k}_{primary}"].notna().any()
    ]


def _transfer_table(runs: pd.DataFrame) -> list[str]:
    """Transfer: every selection's primary metric with the downstream model beside the same
    metric of each other model trained on the same selection (records with ``<key>_<metric>``,
    e.g. ``proxy_arch_brier_min_fde``: the proxy's architecture; ``transfer_accuracy``: a model
    of another family), mean ± std over seeds, best per ratio and column in bold."""
    if "metric_name" not in runs or runs.empty:
        return []
    primary = str(runs["metric_name"].iloc[0])
    down_name, others = _other_models(runs, primary)
    if not others:
        return []
    columns = [f"metric_{k}_{primary}" for k, _ in others]
    sub = runs[runs[columns].notna().all(axis=1)]
    spec = dict(runs.attrs[SPEC_ATTR])
    merged, labels, _, _ = _summarize(sub, "metric", spec)
    for i, col in enumerate(columns):
        part, _, _, _ = _summarize(sub, col, spec)
        part = part[["method", "ratio_label", "mean", "std", "n_seeds", "best"]]
        merged = merged.merge(part, on=["method", "ratio_label"], suffixes=("", f"_{i}"))
    sides = ["", *(f"_{i}" for i in range(len(columns)))]
    n_max = int(max(merged[f"n_seeds{side}"].max() for side in sides))
    scale, percent = float(spec["scale"]), spec["unit"] == "%"

    def cell(row: pd.Series, side: str) -> str:
        text = _format_cell(
            float(row[f"mean{side}"]), float(row[f"std{side}"]), int(row[f"n_seeds{side}"]), n_max, scale, percent
        )
        return f"**{text}**" if bool(row[f"best{side}"]) else text

    names = [down_name, *(name for _, name in others)]
    roles = " and ".join(f"with {TRANSFER_ROLES.get(k, k)} ({_md_escape(name)})" for k, name in others)
    lines = [
        (
            f"Transfer: each selection trained with the downstream model ({_md_escape(down_name)}) and {roles}; "
            f"{_md_escape(spec['label'])}{_header_note(spec)}; best per ratio in **bold**."
        ),
        "",
        "| selection | " + " | ".join(_md_escape(n) for n in names) + " |",
        "|:---|" + "---:|" * len(names),
    ]
    for label in labels:
        for _, row in merged[merged["ratio_label"] == label].iterrows():
            name = f"{row['method']} {label}" if label.endswith("%") else str(row["method"])
            lines.append(f"| {_md_escape(name)} | " + " | ".join(cell(row, side) for side in sides) + " |")
    return ["\n".join(lines)]


def _composition_tables(runs: pd.DataFrame) -> list[str]:
    """Per kind of group (source, class): the share of each group's pool that each selection
    kept (kinds of at most :data:`MAX_GROUPS_SHOWN` groups whose records carry the pool's
    group sizes; the paper's "OTM kept 31 % of WOMD, 53 % of AV2, 22 % of nuPlan" row), else
    how many groups each selection covers and the share of its largest group; at each ratio
    and for OTM (the selection of the lowest seed)."""
    selected = runs["composition"].notna() & (runs["ratio_label"].str.endswith("%") | (runs["method"] == "otm"))
    rows = runs[selected].sort_values("seed")
    if rows.empty:
        return []
    rows = rows.drop_duplicates(["method", "ratio_label"])
    out, shown = [], set()
    for kind in sorted({k for comp in rows["composition"] for k in comp}):
        sizes = _group_sizes(rows, kind)
        if sizes is not None and len(sizes) <= MAX_GROUPS_SHOWN:
            out.append(_share_kept_table(rows, kind, sizes))
            shown.add(kind)
    return out + _largest_group_tables(rows[rows["ratio_label"].str.endswith("%")], exclude=shown)


def _group_sizes(rows: pd.DataFrame, kind: str) -> dict[str, int] | None:
    """The pool's size of each group of ``kind``, from the first record that has it."""
    if "group_sizes" not in rows:
        return None
    for sizes in rows["group_sizes"].dropna():
        if isinstance(sizes.get(kind), dict):
            return {str(k): int(v) for k, v in sizes[kind].items()}
    return None


def _share_kept_table(rows: pd.DataFrame, kind: str, sizes: Mapping[str, int]) -> str:
    """Markdown: one row per selection, one column per group: selected / pool size of the group (%)."""
    groups = sorted(sizes)
    total = sum(sizes.values())
    lines = [
        f"Share of each {kind}'s pool kept by each selection (selected / in the pool, %; "
        + ", ".join(f"{_md_escape(g)}: {sizes[g]}" for g in groups)
        + f"; all: {total}).",
        "",
        "| selection | " + " | ".join(_md_escape(g) for g in groups) + " | all |",
        "|:---|" + "---:|" * (len(groups) + 1),
    ]
    labels = list(dict.fromkeys(rows["ratio_label"]))
    labels = [lab for lab in labels if lab.endswith("%")] + [lab for lab in labels if not lab.endswith("%")]
    for label in labels:
        at = rows[rows["ratio_label"] == label]
        for method in ordered_methods(list(at["method"])):
            counts = at[at["method"] == method].iloc[0]["composition"].get(kind, {})
            cells = [f"{100 * counts.get(g, 0) / sizes[g]:.0f}" if sizes[g] else "–" for g in groups]
            cells.append(f"{100 * sum(counts.values()) / total:.1f}" if total else "–")
            name = f"{method} {label}" if label.endswith("%") else method
            lines.append(f"| {_md_escape(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _largest_group_tables(rows: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Per kind of group not in ``exclude``: how many groups each selection covers and the
    share of its largest group, at each ratio."""
    if rows.empty:
        return []
    labels = list(dict.fromkeys(rows["ratio_label"]))
    methods = ordered_methods(list(dict.fromkeys(rows["method"])))
    out = []
    kinds = sorted({k for comp in rows["composition"] for k in comp} - exclude)
    for kind in kinds:
        lines = [
            f"Selection composition by {kind}: groups present / in the pool, and the largest group's share.",
            "",
            "| method | " + " | ".join(labels) + " |",
            "|:---|" + "---:|" * len(labels),
        ]
        for method in methods:
            cells = []
            for label in labels:
                hit = rows[(rows["method"] == method) & (rows["ratio_label"] == label)]
                if hit.empty or kind not in hit.iloc[0]["composition"]:
                    cells.append("–")
                    continue
                counts = hit.iloc[0]["composition"][kind]
                total = (hit.iloc[0]["group_totals"] or {}).get(kind, len(counts))
                top, size = max(counts, key=counts.get), sum(counts.values())
                cells.append(f"{len(counts)}/{total}, top {_md_escape(top)}: {100 * counts[top] / size:.0f} %")
            lines.append(f"| {_md_escape(method)} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return out


def write_pool_table(
    records: Mapping[str, Sequence[PathLike]],
    csv_path: PathLike,
    md_path: PathLike,
    pool: str,
    otm_jsons: Mapping[str, PathLike] | None = None,
) -> pd.DataFrame:
    """The ``pool_table`` rule: one table for a pool that serves several target sets (the
    paper's Table 2: methods × target sets × models).

    Rows are the selections (``tarot 5%``, ``otm``, ``full`` ...); columns are, per target
    set (unit), its primary metric with the downstream model and with every other model
    trained on the same selections (the records' ``architectures``, metrics ``<key>_<metric>``).
    Cells read ``mean ± std`` over seeds as in :func:`write_tables`, the best of each column
    at each ratio in bold; OTM's cells add the share of the pool it kept for that target set, in brackets.

    Parameters
    ----------
    records : mapping of str to sequence of path-like
        Per unit name (``<pool>-<target>``), its run records (see :func:`~.runs.collect_runs`).
    csv_path, md_path : path-like
        Destinations; the CSV is long: ``unit, model, method, ratio_label, mean, std, n_seeds,
        best`` (stored values, unscaled).
    pool : str
        The pool's (task block's) name, for the title.
    otm_jsons : mapping of str to path-like, optional
        Per unit, OTM's selection summary (its ``chosen_ratio``).

    Returns
    -------
    pd.DataFrame
        The long summary that was written to the CSV.

    Raises
    ------
    TarotInputError
        On bad records (see :func:`~.runs.collect_runs`), no unit, or an unreadable OTM summary.
    """
    if not records:
        raise TarotInputError(f"pool table of {pool}: no unit given")
    parts, headers, kept, labels = [], [], {}, []
    for unit, paths in records.items():
        runs = collect_runs(paths)
        spec = dict(runs.attrs[SPEC_ATTR])
        primary = str(runs["metric_name"].iloc[0])
        down_name, others = _other_models(runs, primary)
        for key, name in [("metric", down_name), *((f"metric_{k}_{primary}", n) for k, n in others)]:
            sub = runs[runs[key].notna()]
            long, unit_labels, _, _ = _summarize(sub, key, spec)
            labels += unit_labels
            long.insert(0, "model", name)
            long.insert(0, "unit", unit)
            parts.append(long)
            headers.append((unit, name, spec))
        if otm_jsons and unit in otm_jsons:
            kept[unit] = _check_otm_ratio(_read_otm_ratio(Path(otm_jsons[unit])))
    table = pd.concat(parts, ignore_index=True)
    labels = list(dict.fromkeys(labels))
    methods = ordered_methods(list(table["method"]))
    rows = sorted(
        dict.fromkeys(zip(table["method"], table["ratio_label"], strict=True)),
        key=lambda r: (methods.index(r[0]), labels.index(r[1])),
    )
    lines = [
        f"## {pool}: every target set, with every model trained on the selections",
        "",
        (
            "Mean ± std over seeds; each column's metric and direction as in the target set's own "
            "table; the best of each column at each ratio in **bold**; OTM's share of the pool in brackets."
        ),
        "",
        "| selection | "
        + " | ".join(
            f"{_md_escape(u)}: {_md_escape(s['label'])}{_header_note(s)} ({_md_escape(n)})" for u, n, s in headers
        )
        + " |",
        "|:---|" + "---:|" * len(headers),
    ]
    for method, label in rows:
        cells = []
        for unit, name, spec in headers:
            hit = table[
                (table["unit"] == unit)
                & (table["model"] == name)
                & (table["method"] == method)
                & (table["ratio_label"] == label)
            ]
            if hit.empty:
                cells.append("–")
                continue
            row = hit.iloc[0]
            n_max = int(table.loc[(table["unit"] == unit) & (table["model"] == name), "n_seeds"].max())
            text = _format_cell(
                float(row["mean"]),
                float(row["std"]),
                int(row["n_seeds"]),
                n_max,
                float(spec["scale"]),
                spec["unit"] == "%",
            )
            if method in ("otm", "otm_weighted") and kept.get(unit) is not None:
                text += f" [{100 * kept[unit]:.1f} %]"
            cells.append(f"**{text}**" if bool(row["best"]) else text)
        title = f"{method} {label}" if label.endswith("%") else method
        lines.append(f"| {_md_escape(title)} | " + " | ".join(cells) + " |")
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("wrote the pool table of %s (%d units) to %s and %s", pool, len(records), csv_path, md_path)
    return table
