"""Table and figure of the LDS benchmark (TAROT Fig. 4 / Table 6) from ``lds_evaluate``'s JSON."""

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
from ...lds import ATTRIBUTION_METHODS

__all__ = ["LABELS", "lds_frame", "plot_lds", "write_lds_table"]

PathLike = str | os.PathLike[str]

#: Row labels as in the paper's Table 6.
LABELS: dict[str, str] = {
    "wfd": "WFD (TAROT)",
    "wfd_no_whiten": "WFD w/o whitening",
    "wfd_no_norm": "WFD w/o normalisation",
    "wfd_no_whiten_no_norm": "WFD w/o whitening, w/o norm.",
    "trak": "TRAK",
    "grad_dot": "Grad-Dot",
}
_COLUMNS = ["method", "ensemble", "lds", "std", "ci_low", "ci_high", "n_targets", "n_excluded", "n_subsets"]


def lds_frame(source: PathLike | Mapping[str, Any]) -> pd.DataFrame:
    """The records of an ``lds.json`` as a frame (one row per method and ensemble size)."""
    data = json.loads(Path(source).read_text()) if not isinstance(source, Mapping) else source
    records = data.get("records")
    if not records:
        raise TarotInputError(f"{source}: no LDS records")
    frame = pd.DataFrame.from_records(records)
    missing = set(_COLUMNS) - set(frame.columns)
    if missing:
        raise TarotInputError(f"{source}: records lack {sorted(missing)}")
    order = {m: i for i, m in enumerate(ATTRIBUTION_METHODS)}
    frame = frame.assign(_o=frame["method"].map(order)).sort_values(["_o", "ensemble"]).drop(columns="_o")
    return frame[_COLUMNS].reset_index(drop=True)


def write_lds_table(source: PathLike | Mapping[str, Any], csv_path: PathLike, md_path: PathLike, task: str) -> None:
    """``csv_path``: the long frame; ``md_path``: methods × ensemble sizes, ``LDS ± std``
    (bootstrap over targets), the best of each column in bold."""
    frame = lds_frame(source)
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    sizes = sorted(frame["ensemble"].unique())
    best = frame.groupby("ensemble")["lds"].max()
    lines = [
        f"LDS on `{task}` (mean Spearman correlation over {int(frame['n_targets'].iloc[0])} targets "
        f"across {int(frame['n_subsets'].iloc[0])} retrained 50 % subsets; ± bootstrap std over targets)",
        "",
        "| method | " + " | ".join(f"E={e}" for e in sizes) + " |",
        "|:---|" + "---:|" * len(sizes),
    ]
    for method, rows in frame.groupby("method", sort=False):
        cells = []
        for e in sizes:
            row = rows[rows["ensemble"] == e]
            if row.empty:
                cells.append("–")
                continue
            v, s = float(row["lds"].iloc[0]), float(row["std"].iloc[0])
            cell = f"{v:.3f} ± {s:.3f}"
            cells.append(f"**{cell}**" if v == best[e] else cell)
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def plot_lds(
    source: PathLike | Mapping[str, Any], png_path: PathLike, task: str, methods: Sequence[str] | None = None
) -> None:
    """LDS against ensemble size, one line per method with its bootstrap interval (Fig. 4)."""
    frame = lds_frame(source)
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for method, rows in frame.groupby("method", sort=False):
        if methods is not None and method not in methods:
            continue
        style = "-" if method in ("wfd", "trak") else "--"
        ax.plot(rows["ensemble"], rows["lds"], style, marker="o", label=LABELS.get(method, method))
        ax.fill_between(rows["ensemble"], rows["ci_low"], rows["ci_high"], alpha=0.15)
    sizes = sorted(frame["ensemble"].unique())
    if len(sizes) > 1 and sizes[-1] / sizes[0] >= 5:
        ax.set_xscale("log")
    ax.set_xticks(sizes, [str(e) for e in sizes])
    ax.set_xlabel("ensemble size E (models averaged)")
    ax.set_ylabel("LDS (Spearman)")
    ax.set_title(f"Linear datamodeling score, {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
