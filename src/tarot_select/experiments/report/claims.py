"""The paper's claims and their verdicts on a run: plain data in, one row per claim and task out.

This module imports nothing but the standard library: the exhibits module
(:mod:`~.paper`) reads the run's files into the small records below
(:class:`UnitResults` for a selection experiment, an :data:`LdsScores` mapping for an LDS
benchmark) and the paper's published numbers (``workflow/resources/paper_numbers.yaml``)
into a mapping, and :func:`build_claims` turns them into :class:`Claim` rows.

Verdicts
--------
Every row ends in one of :data:`VERDICTS`:

- ``holds``: the run's own numbers satisfy the claim;
- ``does not hold``: they contradict it;
- ``not run``: an input is missing (the config has no such task, or the run lacks the
  method, ratio or model the claim compares). A missing input never gets another verdict.

Comparisons use the means over seeds in the metric's direction (``higher_is_better``);
"≥" claims hold on a tie, ">" claims do not. There is no significance test: the rows show
the standard deviation over seeds next to every mean so that a reader can judge the margin.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HOLDS",
    "NOT_HOLD",
    "NOT_RUN",
    "PAPER_KINDS",
    "VERDICTS",
    "Cell",
    "Claim",
    "LdsScores",
    "Metric",
    "UnitResults",
    "ablation_order",
    "build_claims",
    "candidates_hurt",
    "format_cell",
    "format_claims",
    "otm_beats_full",
    "selection_transfers",
    "tarot_beats_baselines",
    "wfd_beats_trak",
]

HOLDS = "holds"
NOT_HOLD = "does not hold"
NOT_RUN = "not run"
#: Every verdict a claim row can end in.
VERDICTS: tuple[str, ...] = (HOLDS, NOT_HOLD, NOT_RUN)

#: Task kinds with an experiment in the paper, and where it is shown.
PAPER_KINDS: dict[str, str] = {"segmentation": "Fig. 5", "motion": "Fig. 7", "instruct": "Tab. 2"}
#: Ratios of the paper's figures and tables, per kind (Table 2: 5 % only), as table labels.
PAPER_RATIOS: dict[str, tuple[str, ...]] = {
    "segmentation": ("5%", "20%", "50%"),
    "motion": ("5%", "20%", "50%"),
    "instruct": ("5%",),
}
#: Target sets of Table 2 (the keys of its rows in the paper's numbers).
TAB2_TARGETS: tuple[str, ...] = ("mmlu", "bbh")
#: Ratios checked for a task of another kind (not in the paper).
OTHER_RATIOS: tuple[str, ...] = ("5%", "20%", "50%")
#: The baselines TAROT is compared with, in the order shown.
BASELINES: tuple[str, ...] = ("random", "dsdm", "less")
#: Display names of methods.
NAMES: dict[str, str] = {
    "random": "random",
    "dsdm": "DsDm",
    "less": "LESS",
    "tarot": "TAROT",
    "tarot_weighted": "TAROT, OT-potential weights",
    "infdist": "Influence Distillation",
    "otm": "OTM",
    "otm_weighted": "TAROT-OTM",
    "tarot_otm": "TAROT-OTM",
    "full": "full pool",
    "target_only": "target only",
}
#: The four WFD variants of Table 6, in the order the paper's claim ranks them.
ABLATION_ORDER: tuple[str, ...] = ("wfd", "wfd_no_norm", "wfd_no_whiten", "wfd_no_whiten_no_norm")
ABLATION_NAMES: dict[str, str] = {
    "wfd": "WFD",
    "wfd_no_norm": "w/o norm",
    "wfd_no_whiten": "w/o whitening",
    "wfd_no_whiten_no_norm": "neither",
}

#: LDS of one benchmark: method -> ensemble size -> LDS.
LdsScores = Mapping[str, Mapping[int, float]]


@dataclass(frozen=True)
class Cell:
    """A measured value: mean and sample std over ``n`` seeds (std NaN for one seed), stored units."""

    mean: float
    std: float = math.nan
    n: int = 1


@dataclass(frozen=True)
class Metric:
    """How a unit's metric is shown: value × ``scale``, ``unit``, and its direction."""

    label: str
    unit: str = ""
    scale: float = 1.0
    higher_is_better: bool = True

    def describe(self) -> str:
        """``"mIoU ×100, higher is better"``."""
        scale = f" ×{self.scale:g}" if self.scale != 1.0 else ""
        unit = f" ({self.unit})" if self.unit and not (self.unit == "%" and self.scale == 100.0) else ""
        return f"{self.label}{scale}{unit}, {'higher' if self.higher_is_better else 'lower'} is better"


@dataclass(frozen=True)
class UnitResults:
    """The summary of one selection experiment (a unit: one pool and one target set).

    Attributes
    ----------
    name : str
        The unit (``segmentation``, ``instruct-mmlu``).
    kind : str
        The task kind (``segmentation``, ``motion``, ``instruct``, ``digits``, ...).
    target : str or None
        The target set of a multi-target task (``mmlu``), else None.
    metric : Metric
        The primary metric.
    cells : mapping
        ``(method, ratio_label) -> Cell`` of the downstream model: labels ``"5%"``,
        ``"OTM"``, ``"full"``, ``"target"``.
    otm_ratio : float or None
        OTM's mean chosen ratio (fraction of the pool).
    transfer_model : str or None
        A model that did not select but was trained on the selections: the downstream model
        when it differs from the proxy (motion: Wayformer), or a second model of another
        family (instruct: the transfer model). None when the run has none.
    transfer_cells : mapping
        ``(method, ratio_label) -> Cell`` of ``transfer_model``.
    model : str or None
        The downstream model's name, when the records give it.
    """

    name: str
    kind: str
    metric: Metric
    cells: Mapping[tuple[str, str], Cell]
    target: str | None = None
    otm_ratio: float | None = None
    transfer_model: str | None = None
    transfer_cells: Mapping[tuple[str, str], Cell] = field(default_factory=dict)
    model: str | None = None


@dataclass(frozen=True)
class Claim:
    """One row of ``claims.md``."""

    claim: str
    source: str
    paper: str
    task: str
    ours: str
    verdict: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; one of {', '.join(VERDICTS)}")


# --------------------------------------------------------------------------- formatting


def _decimals(shown: float, metric: Metric) -> int:
    """One decimal for a percentage, else enough for 3 significant digits of ``shown``."""
    if metric.unit == "%":
        return 1
    if shown == 0.0 or not math.isfinite(shown):
        return 2
    return max(0, 2 - math.floor(math.log10(abs(shown))))


def format_cell(cell: Cell, metric: Metric) -> str:
    """``"37.8 ± 3.9"``: the mean as shown (× scale), the std (same decimals) when there are several seeds."""
    shown = cell.mean * metric.scale
    if not math.isfinite(shown):
        return "nan"
    decimals = _decimals(shown, metric)
    text = f"{shown:.{decimals}f}"
    if cell.n > 1 and math.isfinite(cell.std):
        text += f" ± {cell.std * metric.scale:.{decimals}f}"
    return text


def _better_or_equal(a: float, b: float, higher: bool) -> bool:
    return a >= b if higher else a <= b


def _lds(value: float) -> str:
    return f"{value:.3f}".replace("-", "−")


def _paper_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _absent(kind: str, target: str | None) -> str:
    """The task cell of a claim whose task the config lacks."""
    return f"— (no {kind} task in this config)" + (f", {target.upper()}" if target else "")


def _unit_label(unit: UnitResults) -> str:
    return unit.name if unit.kind in PAPER_KINDS else f"{unit.name} (not a paper task)"


def _source(unit: UnitResults, paper_source: str) -> str:
    return paper_source if unit.kind in PAPER_KINDS else "—"


# --------------------------------------------------------------------------- LDS claims


def wfd_beats_trak(task: str | None, scores: LdsScores | None, paper: Mapping[str, Any]) -> Claim:
    """Fig. 4: the LDS of WFD is above TRAK's at every ensemble size of the run.

    ``task`` None (or ``scores`` None): the config has no LDS benchmark (``not run``). The
    verdict needs both methods at one ensemble size at least.
    """
    fig4 = paper.get("fig4", {})
    paper_text = f"{fig4.get('values', 'not stated in the text')} (\u201c{fig4.get('statement', '')}\u201d)"
    claim = "WFD's LDS > TRAK's at every ensemble size"
    source = str(fig4.get("source", "Fig. 4"))
    if task is None or scores is None:
        return Claim(claim, source, paper_text, "— (no LDS benchmark in this config)", "—", NOT_RUN)
    wfd, trak = scores.get("wfd", {}), scores.get("trak", {})
    sizes = sorted(set(wfd) & set(trak))
    if not sizes:
        return Claim(claim, source, paper_text, task, "WFD or TRAK not in lds.methods", NOT_RUN)
    ours = "; ".join(f"E={e}: {_lds(wfd[e])} vs {_lds(trak[e])}" for e in sizes)
    holds = all(wfd[e] > trak[e] for e in sizes)
    return Claim(claim, source, paper_text, task, ours, HOLDS if holds else NOT_HOLD)


def ablation_order(task: str | None, scores: LdsScores | None, paper: Mapping[str, Any]) -> Claim:
    """Table 6: LDS of WFD > w/o norm > w/o whitening > neither, at every ensemble size of the run."""
    tab6 = paper.get("tab6", {})
    claim = "LDS: WFD > w/o norm > w/o whitening > neither, at every ensemble size"
    source = str(tab6.get("source", "Tab. 6"))
    sizes_paper = list(tab6.get("ensembles", []))
    rows = tab6.get("lds", {})
    if rows and sizes_paper:
        paper_text = "; ".join(
            f"E={e}: " + " > ".join(f"{float(rows[m][i]):.3f}" for m in ABLATION_ORDER if m in rows)
            for i, e in enumerate(sizes_paper)
        )
    else:
        paper_text = "not stated in the text"
    if task is None or scores is None:
        return Claim(claim, source, paper_text, "— (no LDS benchmark in this config)", "—", NOT_RUN)
    missing = [ABLATION_NAMES[m] for m in ABLATION_ORDER if not scores.get(m)]
    if missing:
        return Claim(claim, source, paper_text, task, f"not in lds.methods: {', '.join(missing)}", NOT_RUN)
    sizes = sorted(set.intersection(*(set(scores[m]) for m in ABLATION_ORDER)))
    if not sizes:
        return Claim(claim, source, paper_text, task, "no ensemble size shared by the four variants", NOT_RUN)
    parts, holds = [], True
    for e in sizes:
        values = [scores[m][e] for m in ABLATION_ORDER]
        holds &= all(a > b for a, b in itertools.pairwise(values))
        parts.append(f"E={e}: " + ", ".join(f"{ABLATION_NAMES[m]} {_lds(v)}" for m, v in zip(ABLATION_ORDER, values)))
    return Claim(claim, source, paper_text, task, "; ".join(parts), HOLDS if holds else NOT_HOLD)


# --------------------------------------------------------------------------- selection claims


def _tab2_paper(paper: Mapping[str, Any], target: str | None, model: str, methods: Sequence[str]) -> str:
    """Table 2's numbers of ``methods`` for ``target`` (mmlu/bbh) and model group, as text."""
    rows = paper.get("tab2", {}).get("rows", {})
    names = paper.get("tab2", {}).get("models", {})
    parts = []
    for method in methods:
        value = rows.get(method, {}).get(model, {}).get(target or "")
        if value is not None:
            parts.append(f"{NAMES.get(method, method)} {float(value):.1f}")
    if not parts:
        return "not stated in the text"
    return ", ".join(parts) + f" ({str(names.get(model, model)).split(' (')[0]}, {(target or '').upper()})"


def _statement(paper: Mapping[str, Any], key: str, field_name: str = "statement") -> str:
    text = paper.get(key, {}).get(field_name)
    return f"not stated in the text (\u201c{text}\u201d)" if text else "not stated in the text"


def tarot_beats_baselines(
    unit: UnitResults | None, label: str, paper: Mapping[str, Any], kind: str, target: str | None = None
) -> Claim:
    """Figs. 5 and 7, Table 2: TAROT's mean ≥ every baseline's (random, DsDm, LESS) at ratio ``label``.

    ``unit`` None: the config has no task of ``kind``. Baselines the run lacks are named;
    the verdict needs TAROT and at least one baseline at ``label``.
    """
    claim = f"TAROT ≥ LESS, DsDm, random at {label}"
    source = PAPER_KINDS.get(kind, "—")
    if kind == "instruct":
        target = unit.target if unit is not None else target
        paper_text = (
            _tab2_paper(paper, target, "llama", ("tarot", "less", "random"))
            if target
            else "Tab. 2 (MMLU, BBH at 5 %): see tab2_instruction.md"
        )
    elif kind in ("segmentation", "motion"):
        paper_text = _statement(paper, {"segmentation": "fig5", "motion": "fig7"}[kind])
    else:
        paper_text = "—"
    if unit is None:
        return Claim(claim, source, paper_text, _absent(kind, target), "—", NOT_RUN)
    task = _unit_label(unit)
    tarot = unit.cells.get(("tarot", label))
    present = [(m, unit.cells[(m, label)]) for m in BASELINES if (m, label) in unit.cells]
    if tarot is None or not present:
        what = "TAROT" if tarot is None else "a baseline"
        return Claim(claim, source, paper_text, task, f"{what} not run at {label}", NOT_RUN)
    ours = f"TAROT {format_cell(tarot, unit.metric)} vs " + ", ".join(
        f"{NAMES[m]} {format_cell(c, unit.metric)}" for m, c in present
    )
    ours += f" ({unit.metric.describe()})"
    absent = [NAMES[m] for m in BASELINES if (m, label) not in unit.cells]
    note = f"{', '.join(absent)} not run" if absent else ""
    holds = all(_better_or_equal(tarot.mean, c.mean, unit.metric.higher_is_better) for _, c in present)
    return Claim(claim, source, paper_text, task, ours, HOLDS if holds else NOT_HOLD, note)


def otm_beats_full(unit: UnitResults | None, paper: Mapping[str, Any], kind: str, target: str | None = None) -> Claim:
    """Figs. 5 and 7 (and Table 2's TAROT-OTM vs All): OTM's mean ≥ the full pool's.

    Table 2's TAROT-OTM is OTM trained on OT-potential repeat counts: ``otm_weighted`` when
    the run has it, else ``otm``.
    """
    claim = "OTM ≥ the full pool"
    source = PAPER_KINDS.get(kind, "—")
    otm_method = "otm"
    if kind == "instruct":
        target = unit.target if unit is not None else target
        paper_text = (
            _tab2_paper(paper, target, "llama", ("tarot_otm", "full"))
            if target
            else "Tab. 2: TAROT-OTM vs All, see tab2_instruction.md"
        )
        if unit is not None and ("otm_weighted", "OTM") in unit.cells:
            otm_method = "otm_weighted"
    elif kind == "segmentation":
        fig5 = paper.get("fig5", {})
        paper_text = (
            f"curves not stated in the text; OTM ≈ {_paper_value(100 * fig5.get('otm_ratio', math.nan))} % of the pool"
        )
    elif kind == "motion":
        fig7 = paper.get("fig7", {})
        paper_text = (
            f"not stated in the text (\u201cOTM selection outperforms training on the entire dataset\u201d); "
            f"OTM: {_paper_value(100 * fig7.get('otm_ratio', math.nan))} % of the pool"
        )
    else:
        paper_text = "—"
    if unit is None:
        return Claim(claim, source, paper_text, _absent(kind, target), "—", NOT_RUN)
    task = _unit_label(unit)
    otm, full = unit.cells.get((otm_method, "OTM")), unit.cells.get(("full", "full"))
    if otm is None or full is None:
        what = "OTM" if otm is None else "the full pool"
        return Claim(claim, source, paper_text, task, f"{what} not run", NOT_RUN)
    share = f" [{100 * unit.otm_ratio:.1f} % of the pool]" if unit.otm_ratio is not None else ""
    ours = (
        f"{NAMES[otm_method]} {format_cell(otm, unit.metric)}{share} vs full pool {format_cell(full, unit.metric)} "
        f"({unit.metric.describe()})"
    )
    holds = _better_or_equal(otm.mean, full.mean, unit.metric.higher_is_better)
    return Claim(claim, source, paper_text, task, ours, HOLDS if holds else NOT_HOLD)


def selection_transfers(
    unit: UnitResults | None, paper: Mapping[str, Any], kind: str, target: str | None = None
) -> Claim:
    """Fig. 7 and Table 2: a model that did not select, trained on TAROT's selection, does at
    least as well as on random's, at every ratio of the paper's exhibit (:data:`PAPER_RATIOS`:
    Table 2 has 5 % only) where both were trained on it.

    The run's other ratios are shown after the verdict's, marked "no verdict" (the paper makes
    no claim there)."""
    claim = "the selection transfers: on a model that did not select, TAROT ≥ random"
    source = PAPER_KINDS.get(kind, "—")
    if kind == "instruct":
        target = unit.target if unit is not None else target
        paper_text = (
            _tab2_paper(paper, target, "transfer", ("tarot", "random"))
            if target
            else "Tab. 2, Transfer columns: see tab2_instruction.md"
        )
    elif kind == "motion":
        paper_text = _statement(paper, "fig7", "transfer")
    else:
        paper_text = "—"
    if unit is None:
        return Claim(claim, source, paper_text, _absent(kind, target), "—", NOT_RUN)
    task = _unit_label(unit)
    if unit.transfer_model is None or not unit.transfer_cells:
        return Claim(claim, source, paper_text, task, "no model other than the selecting one was trained", NOT_RUN)
    cells = unit.transfer_cells
    labels = [lab for (m, lab) in cells if m == "tarot" and ("random", lab) in cells]
    labels = sorted(set(labels), key=lambda s: float(s.rstrip("%")) if s.endswith("%") else math.inf)
    if not labels:
        return Claim(claim, source, paper_text, task, "TAROT and random not both trained on it", NOT_RUN)
    checked = [lab for lab in labels if lab in PAPER_RATIOS.get(kind, OTHER_RATIOS)]
    if not checked:
        wanted = ", ".join(PAPER_RATIOS.get(kind, OTHER_RATIOS))
        return Claim(claim, source, paper_text, task, f"TAROT and random not both trained on it at {wanted}", NOT_RUN)

    def pair(lab: str) -> str:
        t, r = cells[("tarot", lab)], cells[("random", lab)]
        return f"{lab}: TAROT {format_cell(t, unit.metric)} vs random {format_cell(r, unit.metric)}"

    holds = all(
        _better_or_equal(cells[("tarot", lab)].mean, cells[("random", lab)].mean, unit.metric.higher_is_better)
        for lab in checked
    )
    ours = f"{unit.transfer_model}: " + "; ".join(pair(lab) for lab in checked) + f" ({unit.metric.describe()})"
    others = [lab for lab in labels if lab not in checked]
    if others:
        ours += "; no verdict (not in the paper's exhibit): " + "; ".join(pair(lab) for lab in others)
    return Claim(claim, source, paper_text, task, ours, HOLDS if holds else NOT_HOLD)


def candidates_hurt(unit: UnitResults | None, paper: Mapping[str, Any], kind: str) -> Claim:
    """Fig. 5's text: some candidate data hurts; training on the whole pool does worse than
    without it (the paper: 58.21 vs 58.98 mIoU). Ours: the full pool against the target
    sample alone (the paper does not say what its 58.98 model was trained on)."""
    claim = "some candidate data hurts: the full pool < without it"
    fig5 = paper.get("fig5", {})
    if kind == "segmentation":
        source = str(fig5.get("source", "Fig. 5"))
        full, without = fig5.get("full_pool"), fig5.get("without_pool")
        paper_text = (
            f"{_paper_value(full)} vs {_paper_value(without)} mIoU (full GTA5 vs without it)"
            if full is not None and without is not None
            else "not stated in the text"
        )
    else:
        source, paper_text = "—", "—"
    if unit is None:
        return Claim(claim, source, paper_text, f"— (no {kind} task in this config)", "—", NOT_RUN)
    task = _unit_label(unit)
    full_c, target_c = unit.cells.get(("full", "full")), unit.cells.get(("target_only", "target"))
    if full_c is None or target_c is None:
        what = "the full pool" if full_c is None else "the target-only reference"
        return Claim(claim, source, paper_text, task, f"{what} not run", NOT_RUN)
    ours = (
        f"full pool {format_cell(full_c, unit.metric)} vs target only {format_cell(target_c, unit.metric)} "
        f"({unit.metric.describe()})"
    )
    hurts = not _better_or_equal(full_c.mean, target_c.mean, unit.metric.higher_is_better)
    return Claim(claim, source, paper_text, task, ours, HOLDS if hurts else NOT_HOLD, "ours: without = target only")


# --------------------------------------------------------------------------- all claims


def build_claims(lds: Mapping[str, LdsScores], units: Sequence[UnitResults], paper: Mapping[str, Any]) -> list[Claim]:
    """Every claim row for a run: LDS claims per LDS task, selection claims per unit.

    A paper kind (:data:`PAPER_KINDS`) without a unit in the run gets its rows with ``not
    run``; units of other kinds (this project's digits task) get the selection claims too,
    marked "not a paper task" (the transfer claim only if they trained a second model; the
    claim that some candidate data hurts is the paper's for segmentation only).

    Parameters
    ----------
    lds : mapping
        LDS task name -> :data:`LdsScores` (empty: no LDS benchmark).
    units : sequence of UnitResults
        The run's selection experiments.
    paper : mapping
        The paper's numbers (``paper_numbers.yaml``).
    """
    rows: list[Claim] = []
    tasks: list[str | None] = list(lds) or [None]
    rows += [wfd_beats_trak(t, lds.get(t) if t else None, paper) for t in tasks]
    rows += [ablation_order(t, lds.get(t) if t else None, paper) for t in tasks]

    others = [unit for unit in units if unit.kind not in PAPER_KINDS]
    # (unit, target set) per paper kind; a kind the run lacks gets one "not run" entry, Table 2
    # one per target set of the paper, so that its rows still show the paper's numbers.
    by_kind: dict[str, list[tuple[UnitResults | None, str | None]]] = {}
    for kind in PAPER_KINDS:
        present = [(unit, unit.target) for unit in units if unit.kind == kind]
        absent = [(None, t) for t in TAB2_TARGETS] if kind == "instruct" else [(None, None)]
        by_kind[kind] = present or absent

    for kind, entries in by_kind.items():
        for unit, target in entries:
            rows += [tarot_beats_baselines(unit, label, paper, kind, target) for label in PAPER_RATIOS[kind]]
    for unit in others:
        rows += [tarot_beats_baselines(unit, label, paper, unit.kind) for label in OTHER_RATIOS]

    for kind, entries in by_kind.items():
        rows += [otm_beats_full(unit, paper, kind, target) for unit, target in entries]
    rows += [otm_beats_full(unit, paper, unit.kind) for unit in others]

    for kind in ("motion", "instruct"):
        rows += [selection_transfers(unit, paper, kind, target) for unit, target in by_kind[kind]]
    rows += [selection_transfers(unit, paper, unit.kind) for unit in others if unit.transfer_model]

    # The paper makes this claim for segmentation only (Sec. 5.2).
    rows += [candidates_hurt(unit, paper, "segmentation") for unit, _ in by_kind["segmentation"]]
    return rows


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_claims(rows: Sequence[Claim], title: str = "The paper's claims on this run") -> str:
    """``claims.md``: how verdicts are reached, one table row per claim and task, a tally."""
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    lines = [
        f"# {title}",
        "",
        (
            "Each row: a claim of the TAROT paper (arXiv:2412.00420), where the paper makes it, the paper's own "
            "number (from `workflow/resources/paper_numbers.yaml`, read from the paper's text; \u201cnot stated in "
            "the text\u201d where the paper shows it only in a plot), the task of this run it is checked on, this "
            "run's numbers, and the verdict. Verdicts compare means over seeds in the metric's direction (≥ holds on "
            "a tie, > does not); there is no significance test, so read the ± (std over seeds) beside each mean. "
            "**not run**: the run has no files for it (the config has no such task, method, ratio or model)."
        ),
        "",
        "| # | claim | paper | paper's number | task | ours | verdict |",
        "|---:|:---|:---|:---|:---|:---|:---|",
    ]
    for i, row in enumerate(rows, 1):
        ours = row.ours + (f" ({row.note})" if row.note else "")
        verdict = f"**{row.verdict}**" if row.verdict != NOT_RUN else row.verdict
        lines.append(
            f"| {i} | {_md(row.claim)} | {_md(row.source)} | {_md(row.paper)} | {_md(row.task)} | {_md(ours)} "
            f"| {verdict} |"
        )
    lines += [
        "",
        f"{counts[HOLDS]} hold, {counts[NOT_HOLD]} do not hold, {counts[NOT_RUN]} not run ({len(rows)} rows).",
    ]
    return "\n".join(lines) + "\n"
