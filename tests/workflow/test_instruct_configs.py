"""The instruct configs that ship plan through the workflow: the paper-scale config on tiny
fake LESS / MMLU / BBH folders and tiny saved model folders in the real layouts (GPU resources
on its training and gradient rules; a missing folder stops the run naming its key), and the
mini config, whose two target sets share the pool's candidate gradients (computed once)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smk_helpers import ROOT, dry_run, planned_jobs, save_config, smk

from tarot_select.tasks.instruct import lm
from tarot_select.tasks.instruct.formats import write_bbh_task, write_less_jsonl, write_mmlu_split
from tarot_select.tasks.instruct.records import Conversation, ExactExample, MCQuestion, Message


def _fake_folders(root: Path) -> dict[str, str]:
    """Four LESS JSONL files, an MMLU folder, a BBH folder and two tiny saved models with tokenizers."""
    out: dict[str, str] = {}
    for src in ("flan_v2", "cot", "dolly", "oasst1"):
        convs = [
            Conversation(src, f"{src}_{i}", (Message("user", f"Question {i}?"), Message("assistant", f"Answer {i}.")))
            for i in range(4)
        ]
        out[src] = str(write_less_jsonl(root / "less" / src / f"{src}_data.jsonl", convs))
    qs = [MCQuestion("anatomy", f"Which bone {i}?", ("a", "b", "c", "d"), "A") for i in range(7)]
    write_mmlu_split(root / "mmlu", "dev", {"anatomy": qs[:5]})
    write_mmlu_split(root / "mmlu", "test", {"anatomy": qs[5:]})
    write_bbh_task(root / "bbh", "navigate", [ExactExample("navigate", f"Step {i}?", "Yes") for i in range(5)])
    tok = lm.train_tokenizer(["Question Answer Which bone Step Yes"] * 5, 280)
    for name, preset in (("llama", "llama-tiny"), ("qwen", "qwen-tiny")):
        model = lm.build_model(preset, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        lm.save_local(model, root / name)
        lm.save_local(tok, root / name)
    out.update(mmlu=str(root / "mmlu"), bbh=str(root / "bbh"), llama=str(root / "llama"), qwen=str(root / "qwen"))
    return out


def _paper_config(tmp_path: Path) -> Path:
    """config/instruct_paper.yaml pointed at the fake folders."""
    cfg = yaml.safe_load((ROOT / "config" / "instruct_paper.yaml").read_text())
    block = cfg["tasks"]["instruct"]
    fake = _fake_folders(tmp_path / "fake")
    block["pool"] = [fake[s] for s in ("flan_v2", "cot", "dolly", "oasst1")]
    block.update(mmlu_root=fake["mmlu"], bbh_root=fake["bbh"])
    block["proxy"]["model"]["path"] = fake["llama"]
    block["downstream"]["also_transfer"]["path"] = fake["qwen"]
    return save_config(cfg, tmp_path)


def test_the_paper_config_plans_on_fake_folders_with_gpus_for_training_and_gradients(tmp_path):
    out = dry_run("--configfile", str(_paper_config(tmp_path)))
    jobs = planned_jobs(out)
    # per unit (mmlu, bbh): random drawn per seed (3) + less, tarot, tarot_weighted, otm, otm_weighted,
    # infdist, full x 3 seeds
    assert jobs["train_downstream"] == jobs["evaluate"] == 2 * (3 + 7 * 3)
    assert jobs["train_proxy"] == 1 and jobs["prepare_data"] == 1
    # 8 shards of the pool's candidates, their Adam features and the infdist landmarks once, of each
    # unit's targets; the pool's embeddings once
    assert jobs["dump_gradients"] == 8 * 3 + 8 * 2 and jobs["embed_candidates"] == 1
    assert jobs["table"] == 2 and jobs["pool_table"] == 1  # the Table 2 layout: both units, both models
    # every job that runs an 8 B model asks for a GPU, evaluation too (it generates BBH answers)
    blocks = re.split(r"\n(?=rule )", out)
    for rule in ("train_proxy", "dump_gradients", "embed_candidates", "train_downstream", "evaluate"):
        mine = [b for b in blocks if b.startswith(f"rule {rule}:")]
        assert mine and all(re.search(r"resources: .*\bgpu=1\b", b) for b in mine), rule
    select = [b for b in blocks if b.startswith("rule select:")]
    assert select and not any(re.search(r"\bgpu=1\b", b) for b in select)


def test_a_missing_model_folder_stops_the_paper_config_before_any_job(tmp_path):
    path = _paper_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["tasks"]["instruct"]["downstream"]["also_transfer"]["path"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(cfg))
    res = smk("-n", "--configfile", str(path), timeout=300)
    assert res.returncode != 0
    assert "tasks.instruct.downstream.also_transfer.path: model folder not found" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_the_mini_config_plans_candidate_gradients_once_for_both_target_sets(tmp_path):
    out = dry_run("--configfile", "config/instruct_mini.yaml", "--config", f"results={tmp_path / 'results'}")
    jobs = planned_jobs(out)
    # per unit: random-s0, random-s1, less, tarot, infdist, tarot_weighted, otm, otm_weighted, full;
    # random with its own seed only
    assert jobs["select"] == 2 * 9 and jobs["train_downstream"] == jobs["evaluate"] == 2 * (2 + 7 * 2)
    assert jobs["prepare_data"] == jobs["train_proxy"] == 1 and jobs["table"] == 2 and jobs["pool_table"] == 1
    # candidates (plain and Adam-preconditioned) and infdist's landmarks once for the pool, targets
    # once per unit; the pool's embeddings once
    assert jobs["dump_gradients"] == 5 and jobs["embed_candidates"] == 1
    shards = re.findall(r"output: (\S+/features/shards/\S+)\.0\.npy", out)
    results = str(tmp_path / "results")
    assert sorted(shards) == sorted(
        [
            f"{results}/instruct/features/shards/candidates",
            f"{results}/instruct/features/shards/candidates_adam",
            f"{results}/instruct/features/shards/landmarks_adam",
            f"{results}/instruct-mmlu/features/shards/targets",
            f"{results}/instruct-bbh/features/shards/targets",
        ]
    )
