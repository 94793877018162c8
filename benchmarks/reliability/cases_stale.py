"""Stale results: after an edit, ``snakemake -n`` must plan exactly the jobs that depend on it.

Each case edits one setting of the finished tiny run's config and compares the jobs per
rule that a dry run plans with the jobs that truly depend on the setting. Too few is a
stale result (tables that keep numbers from the old settings); too many is wasted compute.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from probe import Case, Verdict, run_snakemake, tiny_run

# Jobs per rule of the tiny config (tests/data/tiny.yaml): 2 checkpoints x (2 candidate
# shards + 1 target split) + output gradients + 2 landmark shards (infdist); 15 selections;
# one digits unit.
FEATURE_JOBS = {"dump_gradients": 12, "gather_features": 6, "whiten": 1, "select": 15}
DOWNSTREAM_JOBS = {"train_downstream": 15, "evaluate": 15, "table": 1, "figure_metric_vs_ratio": 1, "all": 1}
PROXY_JOBS = {"train_proxy": 1, "embed_candidates": 1, **FEATURE_JOBS, **DOWNSTREAM_JOBS, "figure_tsne": 1}
DATA_JOBS = {"prepare_data": 1, **PROXY_JOBS}
LDS_MODEL_JOBS = {"lds_train_subsets": 2, "lds_gather_outputs": 1, "lds_member": 2, "lds_evaluate": 1, "lds_report": 1}
#: infdist's two selections (ratios 0.1 and 0.5), their trainings, the reports (t-SNE shows 0.1)
INFDIST_JOBS = {"select": 2, **DOWNSTREAM_JOBS, "train_downstream": 2, "evaluate": 2, "figure_tsne": 1}

#: (case name, {dotted key: new value}, expected jobs per rule)
EDITS: list[tuple[str, dict[str, Any], dict[str, int]]] = [
    ("downstream-epochs", {"tasks.digits.downstream.epochs": 4}, DOWNSTREAM_JOBS),
    ("downstream-lr", {"tasks.digits.downstream.lr": 0.002}, DOWNSTREAM_JOBS),
    ("proxy-lr", {"tasks.digits.proxy.lr": 0.002}, PROXY_JOBS),
    ("proxy-epochs", {"tasks.digits.proxy.epochs": 3}, PROXY_JOBS),
    ("proxy-checkpoints", {"tasks.digits.proxy.checkpoints": 1}, PROXY_JOBS),
    ("per-source", {"tasks.digits.per_source": 41}, DATA_JOBS),
    ("sources", {"tasks.digits.sources": ["clean", "rotated", "noisy"]}, DATA_JOBS),
    ("n-targets", {"tasks.digits.n_targets": 20}, DATA_JOBS),
    ("seed", {"seed": 1}, {"prepare_data": 2, **PROXY_JOBS, "lds_masks": 1, **LDS_MODEL_JOBS}),
    ("lds-task-epochs", {"lds.tasks.digits-lds.downstream.epochs": 2}, {**LDS_MODEL_JOBS, "all": 1}),
    # the ensemble members train on the whole training set: new subsets leave them alone
    ("lds-subsets", {"lds.subsets": 9}, {"lds_masks": 1, **LDS_MODEL_JOBS, "lds_member": 0, "all": 1}),
    ("lds-ridge", {"lds.ridge": 0.5}, {"lds_evaluate": 1, "lds_report": 1, "all": 1}),
    ("whitening-eps", {"whitening.eps": 1e-4}, {"whiten": 1, "select": 15, **DOWNSTREAM_JOBS, "figure_tsne": 1}),
    # the projection of the gradients, not of the embeddings (infdist.dim): embed_candidates stays
    ("proj-dim", {"features.proj_dim": 16}, {**FEATURE_JOBS, **DOWNSTREAM_JOBS, "figure_tsne": 1}),
    # R sets tarot_weighted's repeat counts (2 ratios) and every other ratio run's repetition
    ("repeat", {"weighting.repeat": 3.0}, {"select": 2, **DOWNSTREAM_JOBS, "train_downstream": 12, "evaluate": 12}),
    (
        "otm-folds",
        {"otm.folds": 3},
        {"select": 1, **DOWNSTREAM_JOBS, "train_downstream": 1, "evaluate": 1, "figure_tsne": 1},
    ),
    # Influence Distillation: the kernel ridge regression reruns its selections only; the landmark
    # count its landmarks' gradients too (not the pool's); the blocks its embeddings only
    ("infdist-damping", {"infdist.damping": 0.1}, INFDIST_JOBS),
    ("infdist-landmarks", {"infdist.landmarks": 30}, {"dump_gradients": 2, "gather_features": 1, **INFDIST_JOBS}),
    ("infdist-blocks", {"infdist.blocks": 1}, {"embed_candidates": 1, **INFDIST_JOBS}),
    ("nothing", {}, {}),
]


def planned(cfg: Path) -> dict[str, int] | str:
    """Jobs per rule that ``snakemake -n`` plans for ``cfg`` (or the error it gave)."""
    ran = run_snakemake(["-n", "--quiet", "rules", "--configfile", str(cfg)])
    if ran.code != 0:
        return f"snakemake -n failed: {ran.stderr.strip()[-300:]}"
    found = re.findall(r"^([a-z_]+)\s+(\d+)$", ran.stdout + ran.stderr, re.MULTILINE)
    return {rule: int(n) for rule, n in found if rule != "total"}


def edited_config(work: Path, edit: dict[str, Any]) -> Path:
    """The finished tiny run's config with ``edit`` applied (same results folder)."""
    _, cfg = tiny_run()
    config = yaml.safe_load(cfg.read_text())
    for dotted, value in edit.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = work / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _edit_case(name: str, edit: dict[str, Any], expected: dict[str, int]) -> Case:
    want = {rule: n for rule, n in expected.items() if n}

    def run(work: Path) -> Verdict:
        got = planned(edited_config(work, edit))
        if isinstance(got, str):
            return Verdict("crash", got)
        if got == want:
            return Verdict("right answer", f"{sum(got.values())} jobs")
        missing = {r: n - got.get(r, 0) for r, n in want.items() if got.get(r, 0) < n}
        extra = {r: n - want.get(r, 0) for r, n in got.items() if n > want.get(r, 0)}
        kind = "stale" if missing else "wasted"
        return Verdict(kind, f"missing {missing}, extra {extra}")

    return Case("stale", name, run, slow=True)


CASES = [_edit_case(*edit) for edit in EDITS]
