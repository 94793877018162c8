"""Table and figure of the LDS benchmark (TAROT Fig. 4 / Table 6) from ``lds_evaluate``'s JSON.

The methods of the paper and the diagnostics (:data:`~tarot_select.lds.DIAGNOSTIC_METHODS`,
which test whether TRAK's :math:`1 - p_y` factor explains the gap between TRAK and WFD) are
kept apart: a ``diagnostic`` column in the CSV, a "diagnostic" row kind and label in the
Markdown (bold marks the best *paper* method only), dotted lines in the figure. Paired
bootstrap differences between methods form a second Markdown table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from ...errors import TarotInputError
from ...io import atomic_path
from ...lds import ATTRIBUTION_METHODS, DIAGNOSTIC_METHODS

__all__ = ["LABELS", "differences_frame", "format_difference", "lds_frame", "plot_lds", "write_lds_table"]

PathLike = str | os.PathLike[str]

#: Row labels as in the paper's Table 6; diagnostics say so.
LABELS: dict[str, str] = {
    "wfd": "WFD (TAROT)",
    "wfd_no_whiten": "WFD w/o whitening",
    "wfd_no_norm": "WFD w/o normalisation",
    "wfd_no_whiten_no_norm": "WFD w/o whitening, w/o norm.",
    "trak": "TRAK",
    "grad_dot": "Grad-Dot",
    "trak_no_q": "TRAK w/o (1 − p_y) (diagnostic)",
    "wfd_times_q": "whitened cosine × (1 − p_y) (diagnostic)",
}
#: Short names for the difference table.
SHORT: dict[str, str] = {
    "wfd": "WFD",
    "wfd_no_whiten": "WFD w/o whit.",
    "wfd_no_norm": "WFD w/o norm",
    "wfd_no_whiten_no_norm": "WFD w/o both",
    "trak": "TRAK",
    "grad_dot": "Grad-Dot",
    "trak_no_q": "TRAK w/o q",
    "wfd_times_q": "WFD cos × q",
}
_COLUMNS = ["method", "ensemble", "lds", "std", "ci_low", "ci_high", "n_targets", "n_excluded", "n_subsets"]
_DIFF_COLUMNS = ["a", "b", "ensemble", "diff", "std", "ci_low", "ci_high", "ci", "n_targets"]


def _load(source: PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    return json.loads(Path(source).read_text()) if not isinstance(source, Mapping) else source


def lds_frame(source: PathLike | Mapping[str, Any]) -> pd.DataFrame:
    """The records of an ``lds.json`` as a frame (one row per method and ensemble size).

    Paper methods first, diagnostics last (each group in :data:`ATTRIBUTION_METHODS` order);
    column ``diagnostic`` (bool, last) marks :data:`DIAGNOSTIC_METHODS` (also for files
    written before the records carried it).
    """
    records = _load(source).get("records")
    if not records:
        raise TarotInputError(f"{source}: no LDS records")
    frame = pd.DataFrame.from_records(records)
    missing = set(_COLUMNS) - set(frame.columns)
    if missing:
        raise TarotInputError(f"{source}: records lack {sorted(missing)}")
    frame["diagnostic"] = frame["method"].isin(DIAGNOSTIC_METHODS)
    order = {m: i for i, m in enumerate(ATTRIBUTION_METHODS)}
    frame = frame.assign(_o=frame["method"].map(order)).sort_values(["diagnostic", "_o", "ensemble"])
    return frame[[*_COLUMNS, "diagnostic"]].reset_index(drop=True)


def differences_frame(source: PathLike | Mapping[str, Any]) -> pd.DataFrame:
    """The paired differences of an ``lds.json`` (``LDS(a) - LDS(b)`` per ensemble size);
    empty if the file has none (written before they existed)."""
    diffs = _load(source).get("differences") or []
    frame = pd.DataFrame.from_records(diffs, columns=None if diffs else _DIFF_COLUMNS)
    missing = set(_DIFF_COLUMNS) - set(frame.columns)
    if missing:
        raise TarotInputError(f"{source}: differences lack {sorted(missing)}")
    return frame[_DIFF_COLUMNS].reset_index(drop=True)


def format_difference(diff: float, low: float, high: float) -> str:
    """``"−0.091 [−0.110, −0.071] †"``: signed, with true minus signs; ``†`` when the interval excludes 0."""
    mark = " †" if low > 0.0 or high < 0.0 else ""
    return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]{mark}".replace("-", "−")


def write_lds_table(source: PathLike | Mapping[str, Any], csv_path: PathLike, md_path: PathLike, task: str) -> None:
    """``csv_path``: the long frame; ``md_path``: methods × ensemble sizes, ``LDS ± std``
    (bootstrap over targets), the best paper method of each column in bold, diagnostics
    marked in a ``kind`` column; then the paired differences ``a − b`` with their
    bootstrap interval (same resampled targets for both methods)."""
    data = _load(source)
    frame = lds_frame(data)
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    sizes = sorted(frame["ensemble"].unique())
    paper = frame[~frame["diagnostic"]]
    best = (paper if not paper.empty else frame).groupby("ensemble")["lds"].max()
    lines = [
        (
            f"LDS on `{task}` (mean Spearman correlation over {int(frame['n_targets'].iloc[0])} targets "
            f"across {int(frame['n_subsets'].iloc[0])} retrained 50 % subsets; ± bootstrap std over targets; "
            "bold: best method of the paper per column; *diagnostic* rows are not methods of the paper, they "
            "test whether TRAK's factor 1 − p_y explains the gap between TRAK and WFD)"
        ),
        "",
        "| method | kind | " + " | ".join(f"E={e}" for e in sizes) + " |",
        "|:---|:---|" + "---:|" * len(sizes),
    ]
    for method, rows in frame.groupby("method", sort=False):
        diagnostic = bool(rows["diagnostic"].iloc[0])
        cells = []
        for e in sizes:
            row = rows[rows["ensemble"] == e]
            if row.empty:
                cells.append("–")
                continue
            v, s = float(row["lds"].iloc[0]), float(row["std"].iloc[0])
            cell = f"{v:.3f} ± {s:.3f}"
            cells.append(f"**{cell}**" if not diagnostic and e in best and v == best[e] else cell)
        label = LABELS.get(method, method)
        kind = "*diagnostic*" if diagnostic else "paper"
        lines.append(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    diffs = differences_frame(data)
    if not diffs.empty:
        level = float(diffs["ci"].iloc[0])
        lines += [
            "",
            (
                f"Paired differences of LDS, a − b: mean over targets [{level:.0%} bootstrap interval, the same "
                "resampled targets for both methods]; † the interval excludes 0."
            ),
            "",
            "| a − b | " + " | ".join(f"E={e}" for e in sizes) + " |",
            "|:---|" + "---:|" * len(sizes),
        ]
        for (a, b), rows in diffs.groupby(["a", "b"], sort=False):
            cells = []
            for e in sizes:
                row = rows[rows["ensemble"] == e]
                if row.empty:
                    cells.append("–")
                    continue
                r = row.iloc[0]
                cells.append(format_difference(float(r["diff"]), float(r["ci_low"]), float(r["ci_high"])))
            lines.append(f"| {SHORT.get(a, a)} − {SHORT.get(b, b)} | " + " | ".join(cells) + " |")
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def plot_lds(
    source: PathLike | Mapping[str, Any], png_path: PathLike, task: str, methods: Sequence[str] | None = None
) -> None:
    """LDS against ensemble size, one line per method with its bootstrap interval (Fig. 4).

    WFD and TRAK solid, the paper's other methods dashed, diagnostics dotted with open
    markers and "(diagnostic)" in the legend.
    """
    frame = lds_frame(source)
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for method, rows in frame.groupby("method", sort=False):
        if methods is not None and method not in methods:
            continue
        if bool(rows["diagnostic"].iloc[0]):
            style: dict[str, Any] = {"linestyle": ":", "marker": "s", "markerfacecolor": "none", "linewidth": 1.6}
        else:
            style = {"linestyle": "-" if method in ("wfd", "trak") else "--", "marker": "o"}
        ax.plot(rows["ensemble"], rows["lds"], label=LABELS.get(method, method), **style)
        ax.fill_between(rows["ensemble"], rows["ci_low"], rows["ci_high"], alpha=0.15)
    sizes = sorted(frame["ensemble"].unique())
    if len(sizes) > 1 and sizes[-1] / sizes[0] >= 5:
        ax.set_xscale("log")
    ax.set_xticks(sizes, [str(e) for e in sizes])
    ax.set_xlabel("ensemble size E (models averaged)")
    ax.set_ylabel("LDS (Spearman)")
    ax.set_title(f"Linear datamodeling score, {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
