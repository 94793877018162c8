"""The paper's exhibits from a run: Figs. 4-7, Tables 2 and 6 and ``claims.md`` (the ``paper`` target).

Each exhibit is built from whatever tasks the run has and shows the paper's published numbers
(``workflow/resources/paper_numbers.yaml``, parsed by the Snakemake process and checked by
:func:`check_paper_numbers`) beside the
run's own, always labelled "paper" and never drawn as a measurement: a dotted grey marker or
a text panel in figures, their own columns in tables. A task the config did not run still
gets its exhibit, which says "not run" (a panel with that text, table cells), so the target
never fails for a missing task.

Inputs, as the rules pass them:

- ``lds``: LDS task name -> its ``lds.json`` (:mod:`~.lds`), for Fig. 4 and Table 6;
- ``units``: selection unit -> ``{"kind", "target", "records"}`` (the unit's task kind, its
  target set or None, and its run records, see :mod:`~.runs`), for Figs. 5 and 7 (units of
  kind ``segmentation`` / ``motion``), Table 2 (``instruct``) and the claims;
- ``tsne``: segmentation unit -> its t-SNE figure (``figures/<unit>_tsne.png``), for Fig. 6.

The verdict logic lives in the library-free :mod:`~.claims`; this module reads the files
into its records.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import TarotInputError
from ...io import atomic_path
from . import claims as cl
from .figures import _PNG_DPI, _method_colours, _save_png, draw_otm_star
from .lds import lds_frame
from .runs import SPEC_ATTR, PathLike, collect_runs
from .summary import REFERENCE_METHODS, summary_long

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "EXHIBITS",
    "check_paper_numbers",
    "lds_scores",
    "plot_fig4",
    "plot_ratio_exhibit",
    "plot_tsne_exhibit",
    "unit_results",
    "write_claims",
    "write_tab2",
    "write_tab6",
]

logger = logging.getLogger(__name__)

#: The files of ``results/paper/``, in the order of the paper.
EXHIBITS: tuple[str, ...] = (
    "fig4_lds.png",
    "tab6_wfd_ablation.md",
    "fig5_segmentation.png",
    "fig6_tsne.png",
    "fig7_motion.png",
    "tab2_instruction.md",
    "claims.md",
)
#: Figure of each selection kind, its title and the key of its paper numbers.
RATIO_EXHIBITS: dict[str, tuple[str, str]] = {
    "fig5": ("segmentation", "Fig. 5 analogue: semantic segmentation (GTA5 \u2192 Cityscapes in the paper)"),
    "fig7": ("motion", "Fig. 7 analogue: motion prediction (WOMD + AV2 + nuPlan \u2192 nuScenes in the paper)"),
}
_PAPER_COLOUR = "0.35"
_DPI = _PNG_DPI  # the per-task figures' resolution (figures.py), which saves these too
_REQUIRED = {"fig4": (), "tab6": ("ensembles", "lds"), "fig5": (), "fig7": (), "tab2": ("rows",)}


# --------------------------------------------------------------------------- reading


def check_paper_numbers(numbers: Any, where: str = "paper numbers") -> Mapping[str, Any]:
    """Check the paper's numbers (``paper_numbers.yaml``, parsed): one block per exhibit.

    The Snakemake process reads the file (the rules' ``params.paper``), so that this module
    needs no YAML reader.

    Raises
    ------
    TarotInputError
        If an exhibit block or key is missing, or a Table 6 row does not give one value per
        ensemble size.
    """
    if not isinstance(numbers, Mapping):
        raise TarotInputError(f"{where}: expected a mapping of exhibits, got {type(numbers).__name__}")
    for block, keys in _REQUIRED.items():
        if not isinstance(numbers.get(block), Mapping):
            raise TarotInputError(f"{where}: no {block!r} block")
        for key in keys:
            if key not in numbers[block]:
                raise TarotInputError(f"{where}: {block}.{key} is missing")
    sizes = numbers["tab6"]["ensembles"]
    for method, values in numbers["tab6"]["lds"].items():
        if not isinstance(values, list) or len(values) != len(sizes):
            raise TarotInputError(f"{where}: tab6.lds.{method} must list one value per ensemble size {sizes}")
    return numbers


def lds_scores(path: PathLike) -> dict[str, dict[int, float]]:
    """``method -> ensemble size -> LDS`` of an ``lds.json``."""
    frame = lds_frame(path)
    out: dict[str, dict[int, float]] = {}
    for _, row in frame.iterrows():
        out.setdefault(str(row["method"]), {})[int(row["ensemble"])] = float(row["lds"])
    return out


def _cells(long: Any) -> dict[tuple[str, str], cl.Cell]:
    return {
        (str(r["method"]), str(r["ratio_label"])): cl.Cell(float(r["mean"]), float(r["std"]), int(r["n_seeds"]))
        for _, r in long.iterrows()
    }


def unit_results(records: Sequence[PathLike], name: str, kind: str, target: str | None = None) -> cl.UnitResults:
    """A unit's run records summarised for the claims (:class:`~.claims.UnitResults`).

    The model that did not select (the claims' transfer check) is, from the records'
    ``architectures``: a ``transfer`` model (metrics ``transfer_<metric>``), else the
    downstream model when the proxy's architecture (``proxy_arch``) differs from it.

    Parameters
    ----------
    records : sequence of path-like
        The unit's run records (:func:`~.runs.collect_runs`).
    name, kind : str
        The unit and its task kind.
    target : str, optional
        The unit's target set (multi-target tasks).

    Returns
    -------
    UnitResults
        Means, sample std and seed counts per (method, ratio label), OTM's mean ratio, and
        the cells of the model that did not select, if any.

    Raises
    ------
    TarotInputError
        On bad run records.
    """
    runs = collect_runs(records)
    spec = runs.attrs[SPEC_ATTR]
    metric = cl.Metric(str(spec["label"]), str(spec["unit"]), float(spec["scale"]), bool(spec["higher_is_better"]))
    long = summary_long(runs)
    cells = _cells(long)
    # OTM's share of the pool (otm_weighted trains on the same selection)
    otm = long[long["method"].isin(["otm", "otm_weighted"]) & long["ratio"].notna()]
    otm_ratio = float(otm["ratio"].iloc[0]) if not otm.empty else None
    primary = str(runs["metric_name"].iloc[0])
    arch = next((a for a in runs["architectures"].dropna()), None) if "architectures" in runs else None
    transfer_model, transfer_cells = None, {}
    column = f"metric_transfer_{primary}"
    if arch and "transfer" in arch and column in runs and runs[column].notna().any():
        sub = runs[runs[column].notna()]
        sub.attrs = dict(runs.attrs)
        transfer_model = str(arch["transfer"])
        transfer_cells = _cells(summary_long(sub, value_column=column, spec=spec))
    elif arch and arch.get("proxy_arch") and arch.get("downstream") and arch["proxy_arch"] != arch["downstream"]:
        transfer_model, transfer_cells = str(arch["downstream"]), cells
    model = str(arch["downstream"]) if arch and arch.get("downstream") else None
    return cl.UnitResults(name, kind, metric, cells, target, otm_ratio, transfer_model, transfer_cells, model)


def _units_of(units: Mapping[str, Mapping[str, Any]], kind: str) -> dict[str, Mapping[str, Any]]:
    return {name: u for name, u in units.items() if u.get("kind") == kind}


# --------------------------------------------------------------------------- figure helpers


def _figure(n_panels: int, panel: tuple[float, float], texts: Sequence[str]) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` panels side by side and ``texts`` (the paper's numbers and
    how to read the figure), wrapped to its width, in a text panel under them."""
    from matplotlib.figure import Figure

    width = max(7.0, panel[0] * n_panels)
    note = _note_text(texts, _note_chars(width))
    note_h = _note_height(note.count("\n") + 1)
    fig = Figure(figsize=(width, panel[1] + note_h), dpi=_DPI, layout="constrained")
    grid = fig.add_gridspec(2, n_panels, height_ratios=[panel[1], note_h])
    axes = [fig.add_subplot(grid[0, i]) for i in range(n_panels)]
    note_ax = fig.add_subplot(grid[1, :])
    note_ax.axis("off")
    _write_note(note_ax, note)
    return fig, axes


def _note_height(lines: int) -> float:
    """Inches of a text panel of ``lines`` lines at the notes' 8 pt."""
    return 0.15 * lines + 0.1


def _note_chars(width_in: float) -> int:
    """Characters per line of a note across a figure ``width_in`` inches wide (8 pt)."""
    return int(width_in * 16)


def _wrap(text: str, width: int) -> list[str]:
    return [line for para in text.split("\n") for line in (textwrap.wrap(para, width) or [""])]


def _note_text(lines: Sequence[str], width: int) -> str:
    return "\n".join(line for text in lines for line in _wrap(text, width))


def _write_note(ax: Axes, text: str) -> None:
    ax.text(0.0, 1.0, text, va="top", ha="left", fontsize=8, color=_PAPER_COLOUR, transform=ax.transAxes)


def _not_run(ax: Axes, reason: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.55, "not run", ha="center", va="center", fontsize=20, color="0.3", transform=ax.transAxes)
    ax.text(0.5, 0.38, reason, ha="center", va="center", fontsize=9, color="0.3", transform=ax.transAxes, wrap=True)


def _percent(value: float) -> str:
    return f"{value:.3g} %"


# --------------------------------------------------------------------------- Fig. 4


def plot_fig4(lds: Mapping[str, PathLike], numbers: Mapping[str, Any], path: PathLike) -> Path:
    """Fig. 4: LDS of WFD and TRAK against the ensemble size, one panel per LDS task.

    Bands: the bootstrap interval over targets. The paper states no value of its Fig. 4 in
    the text, so its claim is printed under the panels; no LDS task: one "not run" panel.

    Parameters
    ----------
    lds : mapping
        LDS task name -> its ``lds.json`` (empty: the config has no LDS benchmark).
    numbers : mapping
        The paper's numbers (``paper_numbers.yaml``, parsed; see :func:`check_paper_numbers`).
    path : path-like
        Destination, written atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed input file or paper numbers; nothing is written.
    """
    from matplotlib.ticker import FixedLocator, NullFormatter

    paper = check_paper_numbers(numbers)
    fig4 = paper["fig4"]
    tasks = list(lds)
    texts = [
        (
            f"Paper, {fig4.get('source', 'Fig. 4')}: {fig4.get('setting', '')}. "
            f"\u201c{fig4.get('statement', '')}\u201d Values: {fig4.get('values', 'not stated in the text')}."
        ),
        "This run: LDS (mean Spearman correlation over targets) with the bootstrap interval over targets.",
    ]
    fig, axes = _figure(max(1, len(tasks)), (5.0, 3.8), texts)
    if not tasks:
        _not_run(axes[0], "the config has no LDS benchmark (lds.enabled, lds.tasks)")
    styles = {"wfd": ("WFD (TAROT)", "tab:red", "o"), "trak": ("TRAK", "tab:blue", "s")}
    for ax, task in zip(axes, tasks):
        frame = lds_frame(lds[task])
        shown = False
        for method, (label, colour, marker) in styles.items():
            rows = frame[frame["method"] == method].sort_values("ensemble")
            if rows.empty:
                continue
            shown = True
            ax.plot(rows["ensemble"], rows["lds"], color=colour, marker=marker, label=f"{label} (this run)")
            ax.fill_between(rows["ensemble"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, linewidth=0)
        if not shown:
            _not_run(ax, f"{task}: WFD and TRAK are not in lds.methods")
            continue
        sizes = sorted(int(e) for e in frame["ensemble"].unique())
        if len(sizes) > 1 and sizes[-1] / sizes[0] >= 5:
            ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticklabels([str(e) for e in sizes])
        ax.set_xlabel("ensemble size E")
        ax.set_ylabel("LDS")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Fig. 4 analogue: linear datamodeling score, WFD vs TRAK")
    return _save_png(fig, path)


# --------------------------------------------------------------------------- Table 6

_TAB6_ROWS: tuple[tuple[str, str], ...] = (
    ("wfd", "WFD"),
    ("wfd_no_norm", "w/o norm"),
    ("wfd_no_whiten", "w/o whitening"),
    ("wfd_no_whiten_no_norm", "w/o whitening, w/o norm"),
    ("trak", "TRAK (not in Tab. 6)"),
)


def write_tab6(lds: Mapping[str, PathLike], numbers: Mapping[str, Any], path: PathLike) -> Path:
    """Table 6: LDS of WFD and its ablations: the paper's columns, then each LDS task's.

    Ours: LDS ± bootstrap std over targets at each ensemble size; a method the run did not
    score reads "not run"; no LDS task: one column "not run".

    Parameters
    ----------
    lds : mapping
        LDS task name -> its ``lds.json`` (empty: the config has no LDS benchmark).
    numbers : mapping
        The paper's numbers (``paper_numbers.yaml``, parsed; see :func:`check_paper_numbers`).
    path : path-like
        Destination, written atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed input file or paper numbers; nothing is written.
    """
    paper = check_paper_numbers(numbers)
    tab6 = paper["tab6"]
    sizes_paper = list(tab6["ensembles"])
    header = [f"paper E={e}" for e in sizes_paper]
    frames = {task: lds_frame(lds[task]) for task in lds}
    sizes = {task: sorted(int(e) for e in f["ensemble"].unique()) for task, f in frames.items()}
    for task in frames:
        header += [f"{task} E={e}" for e in sizes[task]]
    if not frames:
        header.append("this run")
    lines = [
        "# Table 6 analogue: ablation of the whitened feature distance (LDS)",
        "",
        (
            f"Paper, {tab6.get('source', 'Tab. 6')}: {tab6.get('setting', '')}; columns as printed (ensemble "
            "sizes). This run: LDS ± bootstrap std over targets, per LDS task and ensemble size E. "
            "The claim (WFD > w/o norm > w/o whitening > neither) is checked in `claims.md`."
        ),
        "",
        "| variant | " + " | ".join(header) + " |",
        "|:---|" + "---:|" * len(header),
    ]
    for method, label in _TAB6_ROWS:
        values = tab6["lds"].get(method)
        cells = [f"{v:.3f}" for v in values] if values else ["–"] * len(sizes_paper)
        for task, frame in frames.items():
            for e in sizes[task]:
                row = frame[(frame["method"] == method) & (frame["ensemble"] == e)]
                cells.append("not run" if row.empty else f"{row['lds'].iloc[0]:.3f} ± {row['std'].iloc[0]:.3f}")
        if not frames:
            cells.append("not run (no LDS benchmark in this config)")
        lines.append(f"| {label} | " + " | ".join(c.replace("-", "−") for c in cells) + " |")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return Path(path)


# --------------------------------------------------------------------------- Figs. 5 and 7


def _draw_ratio_panel(ax: Axes, records: Sequence[PathLike], paper_otm: float | None) -> None:
    """One unit: metric vs selected ratio (lines), OTM stars, full / target-only lines; the
    paper's OTM ratio as a dotted grey vertical line."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    runs = collect_runs(records)
    spec = runs.attrs[SPEC_ATTR]
    scale = float(spec["scale"])
    long = summary_long(runs)
    colours = _method_colours(list(long["method"]))
    xs: list[float] = []
    for method, grp in long[~long["method"].isin(REFERENCE_METHODS)].groupby("method", sort=False):
        grp = grp[grp["ratio"].notna()].sort_values("ratio")
        if grp.empty:
            continue
        x = (grp["ratio"] * 100.0).to_list()
        ax.errorbar(
            x,
            grp["mean"] * scale,
            yerr=(grp["std"].fillna(0.0) * scale).to_list(),
            color=colours[method],
            marker="o",
            markersize=4,
            capsize=3,
            label=cl.NAMES.get(method, method),
        )
        xs += x
    drawn = [m for m in ("otm", "otm_weighted") if ((long["method"] == m) & long["ratio"].notna()).any()]
    for method, face in (("otm", None), ("otm_weighted", "none")):
        for _, row in long[(long["method"] == method) & long["ratio"].notna()].iterrows():
            x = float(row["ratio"]) * 100.0
            draw_otm_star(
                ax,
                method,
                drawn,
                x,
                float(row["mean"]) * scale,
                0.0 if math.isnan(row["std"]) else float(row["std"]) * scale,
                color=colours[method],
                markersize=14,
                markerfacecolor=face,
                capsize=3,
                zorder=5,
                label=f"{cl.NAMES.get(method, method)} ({x:.1f} % of the pool)",
            )
            xs.append(x)
    for method, style in (("full", "--"), ("target_only", "-.")):
        for _, row in long[long["method"] == method].iterrows():
            y = float(row["mean"]) * scale
            ax.axhline(y, color=colours[method], linestyle=style, linewidth=1.2, label=f"{cl.NAMES[method]} ({y:.3g})")
    if paper_otm is not None:
        ax.axvline(
            paper_otm * 100.0,
            color=_PAPER_COLOUR,
            linestyle=":",
            linewidth=1.5,
            label=f"paper: OTM's ratio ({_percent(paper_otm * 100.0)})",
        )
        xs.append(paper_otm * 100.0)
    ticks = sorted({round(float(r) * 100.0, 6) for r in long.loc[~long["method"].isin(REFERENCE_METHODS), "ratio"]})
    ticks = [t for t in ticks if math.isfinite(t)]
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    label, unit = str(spec["label"]), str(spec["unit"])
    note = f" (×{scale:g})" if scale != 1.0 and unit in ("", "%") else (f" ({unit})" if unit else "")
    ax.set_ylabel(f"{label}{note}, {'higher' if spec['higher_is_better'] else 'lower'} is better")
    ax.set_xlabel("selected ratio of the pool")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def plot_ratio_exhibit(
    units: Mapping[str, Mapping[str, Any]], numbers: Mapping[str, Any], path: PathLike, exhibit: str
) -> Path:
    """Fig. 5 (``exhibit="fig5"``, segmentation units) or Fig. 7 (``"fig7"``, motion units).

    One panel per unit of the exhibit's kind (a "not run" panel when there is none): the
    metric against the selected ratio, as the per-task figure draws it, with the paper's OTM
    ratio as a dotted grey line and the paper's other stated numbers in the text under it.

    Parameters
    ----------
    units : mapping
        Unit name -> ``{"kind", "target", "records"}``; units of other kinds are ignored.
    exhibit : {"fig5", "fig7"}
        Which figure (it must come last in the call).
    numbers : mapping
        The paper's numbers (``paper_numbers.yaml``, parsed; see :func:`check_paper_numbers`).
    path : path-like
        Destination, written atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed input file or paper numbers; nothing is written.
    """
    if exhibit not in RATIO_EXHIBITS:
        raise TarotInputError(f"unknown exhibit {exhibit!r}; one of {', '.join(RATIO_EXHIBITS)}")
    kind, title = RATIO_EXHIBITS[exhibit]
    paper = check_paper_numbers(numbers)
    block = paper[exhibit]
    chosen = _units_of(units, kind)
    texts = [f"Paper, {block.get('source', exhibit)}: {block.get('setting', '')}."]
    texts.append(
        f"\u201c{block.get('statement', '')}\u201d (the curves' values: {block.get('curves', 'not stated in the text')})."
    )
    if exhibit == "fig5" and "full_pool" in block:
        texts.append(
            f"Stated in the text: full GTA5 pool {block['full_pool']} mIoU, without it {block['without_pool']}; "
            f"OTM keeps \u2248 {_percent(100 * block['otm_ratio'])} of the pool (dotted grey line)."
        )
    if exhibit == "fig7" and "otm_ratio" in block:
        shares = ", ".join(f"{k} {_percent(100 * v)}" for k, v in (block.get("otm_source_share") or {}).items())
        texts.append(
            f"Stated in the text: OTM keeps {_percent(100 * block['otm_ratio'])} of the pool (dotted grey line; "
            f"per source: {shares}). {block.get('transfer', '')}"
        )
    texts.append("Markers and solid lines: this run (mean ± std over seeds); grey dotted: the paper.")
    fig, axes = _figure(max(1, len(chosen)), (7.5, 4.2), texts)
    if not chosen:
        _not_run(axes[0], f"the config has no {kind} task")
    for ax, (name, unit) in zip(axes, chosen.items()):
        _draw_ratio_panel(ax, unit["records"], block.get("otm_ratio"))
        ax.set_title(f"{name} (this run)")
    fig.suptitle(title)
    return _save_png(fig, path)


# --------------------------------------------------------------------------- Fig. 6


def plot_tsne_exhibit(tsne: Mapping[str, PathLike], numbers: Mapping[str, Any], path: PathLike) -> Path:
    """Fig. 6: the t-SNE figure of each segmentation unit (the per-task figure, unchanged),
    under the paper's qualitative finding; a "not run" panel without a segmentation task.

    Parameters
    ----------
    tsne : mapping
        Segmentation unit -> its t-SNE figure (empty: no segmentation task).
    numbers : mapping
        The paper's numbers (``paper_numbers.yaml``, parsed; see :func:`check_paper_numbers`).
    path : path-like
        Destination, written atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed input file or paper numbers; nothing is written.
    """
    from matplotlib.image import imread

    paper = check_paper_numbers(numbers)
    block = paper.get("fig6", {})
    images = {name: imread(str(p)) for name, p in tsne.items()}
    note = _note_text(
        [
            (
                f"Paper, {block.get('source', 'Fig. 6')}: \u201c{block.get('statement', '')}\u201d "
                f"({block.get('values', 'qualitative')})."
            ),
            "Below: this run's t-SNE figure of each segmentation task (figures/<task>_tsne.png).",
        ],
        _note_chars(10.0),
    )
    from matplotlib.figure import Figure

    n = max(1, len(images))
    heights = [img.shape[0] / img.shape[1] * 10.0 for img in images.values()] or [3.0]
    note_h = _note_height(note.count("\n") + 1)
    fig = Figure(figsize=(10.0, sum(heights) + note_h + 0.4), dpi=_DPI, layout="constrained")
    grid = fig.add_gridspec(n + 1, 1, height_ratios=[note_h, *heights])
    note_ax = fig.add_subplot(grid[0, 0])
    note_ax.axis("off")
    _write_note(note_ax, note)
    if not images:
        _not_run(fig.add_subplot(grid[1, 0]), "the config has no segmentation task")
    for i, (name, img) in enumerate(images.items(), 1):
        ax = fig.add_subplot(grid[i, 0])
        ax.imshow(img)
        ax.axis("off")
        ax.set_title(f"{name} (this run)", fontsize=10)
    fig.suptitle("Fig. 6 analogue: t-SNE of target and selected candidates")
    return _save_png(fig, path)


# --------------------------------------------------------------------------- Table 2

#: Rows of Table 2: our method, the paper's row key (None: not in the paper's table), label.
_TAB2_ROWS: tuple[tuple[str, str | None, str], ...] = (
    ("full", "full", "All (full pool)"),
    ("random", "random", "5% Random"),
    ("dsdm", None, "5% DsDm"),
    ("less", "less", "5% LESS"),
    ("tarot", "tarot", "5% TAROT"),
    ("otm_weighted", "tarot_otm", "TAROT-OTM (OTM + OT-potential weights)"),
    ("otm", None, "OTM (unweighted)"),
    ("target_only", None, "target only"),
)


def _tab2_ours(unit: cl.UnitResults | None, method: str, transfer: bool) -> str:
    if unit is None:
        return "not run"
    label = {"full": "full", "otm": "OTM", "otm_weighted": "OTM", "target_only": "target"}.get(method, "5%")
    cells = unit.transfer_cells if transfer else unit.cells
    cell = cells.get((method, label))
    if cell is None:
        return "not run"
    text = cl.format_cell(cell, unit.metric)
    if method in ("otm", "otm_weighted") and unit.otm_ratio is not None:
        text += f" [{100 * unit.otm_ratio:.1f} %]"
    return text


def _tab2_paper_cell(tab2: Mapping[str, Any], key: str | None, model: str, target: str) -> str:
    if key is None:
        return "–"
    value = tab2["rows"].get(key, {}).get(model, {}).get(target)
    if value is None:
        return "–"
    text = f"{float(value):.1f}"
    share = (tab2.get("otm_ratio") or {}).get(model, {}).get(target) if key == "tarot_otm" else None
    return f"{text} [{100 * share:.2g} %]" if share is not None else text


def write_tab2(units: Mapping[str, Mapping[str, Any]], numbers: Mapping[str, Any], path: PathLike) -> Path:
    """Table 2: instruction tuning, the paper's columns beside this run's, per target set.

    Two tables: the model that selected is tuned (the paper: Llama-3.1-8B, and Qwen-2.5-7B
    selecting for itself, which this run has no analogue of), and transfer (another model
    tuned on those selections). Cells: mean ± std over seeds (×100); OTM's share of the pool
    in brackets; "–": not in the paper's table; "not run": not in this run.

    Parameters
    ----------
    units : mapping
        Unit name -> ``{"kind", "target", "records"}``; units of other kinds are ignored.
    numbers : mapping
        The paper's numbers (``paper_numbers.yaml``, parsed; see :func:`check_paper_numbers`).
    path : path-like
        Destination, written atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed input file or paper numbers; nothing is written.
    """
    paper = check_paper_numbers(numbers)
    tab2 = paper["tab2"]
    models = tab2.get("models", {})
    chosen = _units_of(units, "instruct")
    results = {name: unit_results(u["records"], name, "instruct", u.get("target")) for name, u in chosen.items()}
    targets = [r.target or name for name, r in results.items()] or ["mmlu", "bbh"]
    by_target = {r.target or name: r for name, r in results.items()}
    first = next(iter(results.values()), None)
    down = first.model if first is not None and first.model else "this run's model"
    transfer_name = first.transfer_model if first is not None and first.transfer_model else "transfer model"
    llama, qwen = str(models.get("llama", "llama")), str(models.get("qwen", "qwen"))
    seeds = sorted({c.n for r in results.values() for c in r.cells.values()})
    lines = [
        "# Table 2 analogue: instruction tuning",
        "",
        f"Paper, {tab2.get('source', 'Tab. 2')}: {tab2.get('setting', '')}; 5 % of the pool; TAROT-OTM: OTM "
        "trained on OT-potential repeat counts, its share of the pool in brackets. "
        f"This run: {', '.join(results) or 'no instruct task (not run)'}; "
        + (f"mean ± std over {'/'.join(map(str, seeds))} seeds, ×100. " if seeds else "")
        + "\u201c–\u201d: not in the paper's table; \u201cnot run\u201d: not in this run.",
        "",
        f"## The selecting model is tuned (paper: {llama}; {qwen} selecting for itself; this run: {down})",
        "",
    ]
    header = []
    for target in targets:
        t = target.upper()
        header += [f"{t} {llama} (paper)", f"{t} {qwen} (paper)", f"{t} {down} (this run)"]
    lines += ["| selection | " + " | ".join(header) + " |", "|:---|" + "---:|" * len(header)]
    for method, key, label in _TAB2_ROWS:
        cells = []
        for target in targets:
            unit = by_target.get(target)
            cells += [
                _tab2_paper_cell(tab2, key, "llama", target),
                _tab2_paper_cell(tab2, key, "qwen", target),
                _tab2_ours(unit, method, transfer=False),
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"## Transfer (paper: {models.get('transfer', 'transfer')}; this run: {transfer_name})", ""]
    header = []
    for target in targets:
        t = target.upper()
        header += [f"{t} transfer (paper)", f"{t} {transfer_name} (this run)"]
    lines += ["| selection | " + " | ".join(header) + " |", "|:---|" + "---:|" * len(header)]
    for method, key, label in _TAB2_ROWS:
        cells = []
        for target in targets:
            unit = by_target.get(target)
            has_transfer = unit is not None and unit.transfer_model is not None
            cells += [
                _tab2_paper_cell(tab2, key, "transfer", target),
                _tab2_ours(unit if has_transfer else None, method, transfer=True),
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return Path(path)


# --------------------------------------------------------------------------- claims


def write_claims(
    lds: Mapping[str, PathLike], units: Mapping[str, Mapping[str, Any]], numbers: Mapping[str, Any], path: PathLike
) -> Path:
    """``claims.md``: every claim of :func:`~.claims.build_claims`, from this run's files.

    Parameters
    ----------
    lds : mapping
        LDS task name -> its ``lds.json`` (empty: the config has no LDS benchmark).
    units : mapping
        Every selection unit -> ``{"kind", "target", "records"}``.
    numbers : mapping
        The paper's numbers (``paper_numbers.yaml``, parsed; see :func:`check_paper_numbers`).
    path : path-like
        Destination, written atomically.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TarotInputError
        On a malformed input file or paper numbers; nothing is written.
    """
    paper = check_paper_numbers(numbers)
    scores = {task: lds_scores(p) for task, p in lds.items()}
    results = [unit_results(u["records"], name, str(u["kind"]), u.get("target")) for name, u in units.items()]
    rows = cl.build_claims(scores, results, paper)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(cl.format_claims(rows))
    return Path(path)
