"""The motion configs that ship plan through the workflow: the paper-scale config on tiny
fake ScenarioNet folders written with the project's writer (GPU resources on its training and
gradient rules; a missing folder stops the run naming its key), and the mini config."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smk_helpers import ROOT, assert_gpus_for_training, dry_run, planned_jobs, save_config, smk

from tarot_select.tasks.motion.synthetic import write_synthetic


def _paper_config(tmp_path: Path) -> Path:
    """config/motion_paper.yaml pointed at five fake ScenarioNet folders of three scenes each."""
    cfg = yaml.safe_load((ROOT / "config" / "motion_paper.yaml").read_text())
    block = cfg["tasks"]["motion"]
    folders = {}
    for name, style in (
        ("womd", "womd"),
        ("av2", "av2"),
        ("nuplan", "nuplan"),
        ("nuscenes_train", "nuscenes"),
        ("nuscenes_val", "nuscenes"),
    ):
        folders[name] = str(write_synthetic(tmp_path / "scenarionet" / name, style, 3, seed=0, steps=20, split=name))
    block["candidate_roots"] = {k: folders[k] for k in ("womd", "av2", "nuplan")}
    block.update(target_root=folders["nuscenes_train"], evaluation_root=folders["nuscenes_val"])
    return save_config(cfg, tmp_path)


def test_the_paper_config_plans_on_fake_folders_with_gpus_for_training_and_gradients(tmp_path):
    out = dry_run("--configfile", str(_paper_config(tmp_path)))
    jobs = planned_jobs(out)
    # 4 methods x 3 ratios + tarot_weighted x 3 + otm + full + target_only = 18 selections, 3 seeds
    assert jobs["train_downstream"] == jobs["evaluate"] == 54
    assert jobs["train_proxy"] == 1 and jobs["prepare_data"] == 1
    # 8 shards of candidates, targets, candidates' Adam features, and (DsDm on a task with
    # model outputs) the output gradients of candidates and targets
    assert jobs["dump_gradients"] == 40
    assert_gpus_for_training(out)


def test_a_missing_scenarionet_folder_stops_the_paper_config_before_any_job(tmp_path):
    path = _paper_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["tasks"]["motion"]["candidate_roots"]["av2"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(cfg))
    res = smk("-n", "--configfile", str(path), timeout=300)
    assert res.returncode != 0
    assert "tasks.motion.candidate_roots.av2:" in res.stderr and "ScenarioNet folder not found" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_the_mini_config_plans(tmp_path):
    out = dry_run(
        "--quiet", "rules", "--configfile", "config/motion_mini.yaml", "--config", f"results={tmp_path / 'results'}"
    )
    jobs = planned_jobs(out)
    # 4 methods x 3 ratios + otm + full + target_only = 15 trainings per seed, 2 seeds;
    # selections: 12 + random's own draw per seed (3 ratios) + otm + 2 references
    assert jobs["train_downstream"] == jobs["evaluate"] == 30 and jobs["select"] == 18
    assert jobs["dump_gradients"] == 5 and jobs["train_proxy"] == 1
    assert jobs["figure_metric_vs_ratio"] == 1 and jobs["figure_tsne"] == 1 and jobs["table"] == 1


def test_the_mini_lds_config_plans_the_lds_benchmark_only(tmp_path):
    out = dry_run(
        "--quiet", "rules", "--configfile", "config/motion_lds_mini.yaml", "--config", f"results={tmp_path / 'results'}"
    )
    jobs = planned_jobs(out)
    # 40 subsets in 2 chunks, 3 ensemble members (E up to 3), no selection experiment
    assert jobs["lds_train_subsets"] == 2 and jobs["lds_member"] == 3 and jobs["lds_evaluate"] == 1
    assert "select" not in jobs and "train_proxy" not in jobs and jobs["prepare_data"] == 1
