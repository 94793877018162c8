"""The `paper` target: the paper's exhibits and claims.md from the tiny run, the HTML report's
"Paper" category, and the paper-mini config planned with ``snakemake -n``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smk_helpers import ROOT, dry_run, planned_jobs, smk

EXHIBITS = (
    "fig4_lds.png",
    "tab6_wfd_ablation.md",
    "fig5_segmentation.png",
    "fig6_tsne.png",
    "fig7_motion.png",
    "tab2_instruction.md",
    "claims.md",
)
VERDICTS = ("holds", "does not hold", "not run")


def _claim_rows(text: str) -> list[list[str]]:
    """The cells of every numbered row of claims.md's table."""
    rows = []
    for line in text.splitlines():
        if re.match(r"^\| \d+ \|", line):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return rows


@pytest.mark.xdist_group("tiny")
def test_the_paper_target_builds_every_exhibit_from_the_tiny_run(tiny_run):
    tmp, cfg = tiny_run
    res = smk("paper", "--cores", "2", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    paper = tmp / "results" / "paper"
    for name in EXHIBITS:
        path = paper / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    rows = _claim_rows((paper / "claims.md").read_text())
    assert len(rows) >= 15
    by_task: dict[str, list[str]] = {}
    for cells in rows:
        assert len(cells) == 7, cells
        verdict = cells[-1].strip("*")
        assert verdict in VERDICTS, cells
        by_task.setdefault(cells[4], []).append(verdict)
    # the tiny config has digits and an LDS benchmark (digits-lds), nothing of the paper's
    # segmentation, motion or instruction-tuning experiments: those claims are "not run"
    absent = [task for task in by_task if re.match(r"— \(no (segmentation|motion|instruct) task", task)]
    assert len(absent) >= 4 and all(v == "not run" for t in absent for v in by_task[t])
    # claims whose inputs the run has get a computed verdict
    assert len(by_task["digits-lds"]) == 2 and "not run" not in by_task["digits-lds"]
    digits = by_task["digits (not a paper task)"]
    assert len(digits) == 4  # TAROT vs baselines at 5/20/50 %, OTM vs full
    assert digits[0] == digits[1] == "not run"  # the tiny config selects at 10 % and 50 % only
    assert digits[2] != "not run" and digits[3] != "not run"

    # Table 6: the paper's columns, then the run's LDS at its ensemble sizes (1 and 2)
    tab6 = (paper / "tab6_wfd_ablation.md").read_text()
    assert "| WFD | 0.028 | 0.065 | 0.098 |" in tab6 and "digits-lds E=2" in tab6
    # Table 2: the paper's numbers, and "not run" where this run has no instruct task
    tab2 = (paper / "tab2_instruction.md").read_text()
    assert "| 5% TAROT | 66.0 | 74.1 | not run |" in tab2

    # the exhibits are in the HTML report, category "Paper"
    report = tmp / "report_paper.html"
    res = smk("paper", "--report", str(report), "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert "Paper" in html and "fig4_lds.png" in html and "claims.md" in html


def test_the_paper_mini_config_plans_every_paper_task_and_the_paper_target(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "paper_mini.yaml").read_text())
    kinds = {block["kind"] for block in cfg["tasks"].values()}
    assert {"segmentation", "motion", "instruct", "digits"} <= kinds
    assert {block["kind"] for block in cfg["lds"]["tasks"].values()} == {"mnist_mlp", "motion"}
    # targets before --config, which takes every argument after it
    out = dry_run(
        "all", "paper", "--quiet", "rules", "--configfile", "config/paper_mini.yaml", "--config", f"results={tmp_path}"
    )
    jobs = planned_jobs(out)
    for rule in (
        "paper_lds",
        "paper_ablation",
        "paper_segmentation",
        "paper_tsne",
        "paper_motion",
        "paper_instruction",
        "paper_claims",
    ):
        assert jobs[rule] == 1, rule
    # five units (digits, segmentation, motion, instruct-mmlu, instruct-bbh); per unit and seed:
    # 4 methods x 3 ratios + OTM + TAROT-OTM + full + target only = 16 trainings, 2 seeds
    assert jobs["table"] == 5 and jobs["pool_table"] == 1
    assert jobs["train_downstream"] == jobs["evaluate"] == 5 * 16 * 2
    assert jobs["lds_evaluate"] == 2 and jobs["lds_member"] == 2 * 10
