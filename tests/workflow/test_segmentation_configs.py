"""The segmentation configs that ship plan through the workflow: the paper-scale GTA5 ->
Cityscapes config on tiny fake folders in the datasets' own layouts (with GPU resources on
its training and gradient rules), the mini config, and the mmseg backend's config check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("cityscapesscripts")
pytest.importorskip("PIL.Image")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks"))
from smk_helpers import ROOT, assert_gpus_for_training, dry_run, planned_jobs, save_config, smk
from test_segmentation_readers import make_cityscapes, make_gta5

from tarot_select.tasks.segmentation.mmseg_model import mmseg_available


def _paper_config(tmp_path: Path, **model) -> Path:
    """config/segmentation_paper.yaml pointed at fake GTA5 (40 frames) and Cityscapes (12 + 6)."""
    gta = make_gta5(tmp_path / "gta5", n=40)
    cs = make_cityscapes(tmp_path / "cityscapes", per_city=6)
    cfg = yaml.safe_load((ROOT / "config" / "segmentation_paper.yaml").read_text())
    block = cfg["tasks"]["gta5-cityscapes"]
    block.update(gta5_root=str(gta), cityscapes_root=str(cs))
    block["model"].update(model)
    return save_config(cfg, tmp_path)


def test_the_paper_config_plans_on_fake_folders_with_gpus_for_training_and_gradients(tmp_path):
    out = dry_run("--configfile", str(_paper_config(tmp_path)))
    jobs = planned_jobs(out)
    # 4 methods x 3 ratios + tarot_weighted x 3 + otm + full + target_only = 18 selections, 3 seeds
    assert jobs["train_downstream"] == jobs["evaluate"] == 54
    assert jobs["train_proxy"] == 1 and jobs["prepare_data"] == 1
    assert jobs["dump_gradients"] == 24  # 8 shards of candidates, targets, candidates' Adam features
    assert jobs["select"] == 24  # 15 selections + random's own per seed (3 ratios x 3 seeds)
    assert_gpus_for_training(out)


def test_the_mini_config_plans(tmp_path):
    config = "config/segmentation_mini.yaml"
    jobs = planned_jobs(
        dry_run("--quiet", "rules", "--configfile", config, "--config", f"results={tmp_path / 'results'}")
    )
    # 15 selections + random's own per seed (3 ratios x 2 seeds); 18 trainings per seed
    assert jobs["train_downstream"] == 36 and jobs["select"] == 21
    assert jobs["figure_metric_vs_ratio"] == 1 and jobs["figure_tsne"] == 1 and jobs["table"] == 1


def test_the_mmseg_backend_is_checked_before_any_job(tmp_path):
    mmseg_cfg = tmp_path / "deeplabv3_r50-d8.py"
    mmseg_cfg.write_text("model = dict(type='EncoderDecoder')\n")
    missing = _paper_config(tmp_path, backend="mmseg", mmseg_config=str(tmp_path / "nowhere.py"))
    res = smk("-n", "--configfile", str(missing), timeout=300)
    assert res.returncode == 2
    assert "tasks.gta5-cityscapes.model.mmseg_config: file not found" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    cfg = yaml.safe_load(missing.read_text())
    cfg["tasks"]["gta5-cityscapes"]["model"]["mmseg_config"] = str(mmseg_cfg)
    missing.write_text(yaml.safe_dump(cfg))
    res = smk("-n", "--configfile", str(missing), timeout=300)
    if mmseg_available() is None:
        assert res.returncode == 0, res.stderr[-2000:]
    else:
        assert res.returncode == 2
        assert "model.backend: mmseg:" in res.stderr and "envs/mmseg.post-deploy.sh" in res.stderr
