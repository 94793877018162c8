"""The instruct task kind: settings checks, the prepared data read back in both target sets,
LoRA-only proxy checkpoints with their Adam state, the torch-free parameter list, downstream
training with a transfer model and the suites' metrics; the ``less`` dataset on tiny fake
folders in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tarot_select.errors import TarotInputError
from tarot_select.tasks import get_task
from tarot_select.tasks.instruct import lm
from tarot_select.tasks.instruct.formats import write_bbh_task, write_less_jsonl, write_mmlu_split
from tarot_select.tasks.instruct.records import Conversation, ExactExample, MCQuestion, Message
from tarot_select.tasks.instruct.settings import PRESET_SHAPES, InstructSettings
from tarot_select.tasks.instruct.synthetic import BBH_TASKS, MMLU_SUBJECTS, SOURCES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_TRAIN = {"batch_size": 8, "max_len": 96, "lora": {"r": 4, "alpha": 8.0}}
SMALL = {
    "kind": "instruct",
    "per_source": {"flan_v2": 30, "cot": 30, "dolly": 20, "oasst1": 20},
    "mmlu_test": 3,
    "bbh_test": 2,
    "vocab_size": 320,
    "base": {"lines": 200, "steps": 3, "batch_size": 4, "block_size": 16},
    "proxy": {**_TRAIN, "epochs": 2, "checkpoints": 2, "warmup_fraction": 0.1},
    "downstream": {
        **_TRAIN,
        "epochs": 1,
        "also_transfer": {"preset": "qwen-tiny"},
        "mmlu_shots": 1,
        "max_new_tokens": 4,
    },
}


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"per_sourse": {}}, "tasks.x.per_sourse: unknown key (did you mean 'per_source'?)"),
        ({"targets": ["mmlu", "gsm8k"]}, "tasks.x.targets[1]: must be one of 'mmlu', 'bbh', got 'gsm8k'"),
        ({"targets": []}, "tasks.x.targets: must not be empty"),
        ({"dataset": "less"}, "tasks.x.pool: required for dataset less"),
        ({"pool": ["/x.jsonl"]}, "tasks.x.pool: only for dataset less"),
        ({"proxy": {"model": {"path": "/m"}}}, "tasks.x.proxy.model.path: only for dataset less"),
        ({"proxy": {"epochs": 2, "checkpoints": 3}}, "tasks.x.proxy.checkpoints: 3 exceeds epochs=2"),
        ({"proxy": {"lora": {"target_modules": ["fc1"]}}}, "tasks.x.proxy.lora.target_modules: 'fc1' is not one of"),
    ],
)
def test_settings_errors_name_the_key(change, message):
    with pytest.raises(TarotInputError) as err:
        InstructSettings.from_config({"kind": "instruct", **change}, "tasks.x")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_less_paths_are_checked_at_config_time(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("")
    block = {"kind": "instruct", "dataset": "less", "pool": [str(pool)], "mmlu_root": str(tmp_path / "none")}
    with pytest.raises(TarotInputError, match=r"^tasks\.x\.mmlu_root: MMLU data folder not found: "):
        InstructSettings.from_config(block, "tasks.x")
    (tmp_path / "mmlu" / "dev").mkdir(parents=True)
    block["mmlu_root"] = str(tmp_path / "mmlu")
    with pytest.raises(TarotInputError, match=r"^tasks\.x\.mmlu_root: .* has no test/ folder"):
        InstructSettings.from_config(block, "tasks.x")
    block["pool"] = [str(tmp_path / "gone.jsonl")]
    with pytest.raises(TarotInputError, match=r"^tasks\.x\.pool\[0\]: .*gone\.jsonl not found"):
        InstructSettings.from_config(block, "tasks.x")


def test_each_target_set_is_a_unit_and_stages_see_the_model_blocks():
    s = InstructSettings.from_config(SMALL, "tasks.x")
    assert s.target_names() == ("mmlu", "bbh")
    # smallest target set: BBH's 3 exemplars x 4 tasks; its test set 2 x 4
    assert s.split_sizes() == {"candidates": 100, "targets": 12, "evaluation": 8}
    data = s.for_stage("data")  # prepare builds the base models of every model block
    assert data["proxy"] == {"model": s.to_dict()["proxy"]["model"]}
    assert data["downstream"]["also_transfer"]["preset"] == "qwen-tiny" and "epochs" not in data["downstream"]
    assert s.presets() == ("llama-tiny", "qwen-tiny") and s.downstream_model().preset == "llama-tiny"
    assert s.model_names() == {"downstream": "llama-tiny", "transfer": "qwen-tiny"}


def test_preset_shapes_match_the_model_presets():
    for name, shape in PRESET_SHAPES.items():
        p = lm.PRESETS[name]
        assert shape == {
            "hidden": p.hidden_size,
            "intermediate": p.intermediate_size,
            "layers": p.num_layers,
            "heads": p.num_heads,
            "kv_heads": p.num_kv_heads,
        }


# --------------------------------------------------------------------------- synthetic data


def test_prepare_and_load_round_trip_in_both_target_sets(small):
    task, data, folder = small
    manifest = json.loads((folder / "data.json").read_text())
    assert sorted(manifest["models"]) == ["llama-tiny", "qwen-tiny"]
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert len(data.candidates) == 100 and list(np.unique(data.sources)) == sorted(SOURCES)
    assert [int((data.sources == s).sum()) for s in SOURCES] == [30, 30, 20, 20]
    assert isinstance(data.candidates[0], Conversation) and data.candidates[0].dataset == "flan_v2"
    # target None (pool-level jobs): both suites, labels prefixed by the suite
    assert len(data.targets) == 4 * 5 + 4 * 3 and len(data.evaluation) == 4 * 3 + 4 * 2
    assert set(data.target_groups) == {f"mmlu/{s}" for s in MMLU_SUBJECTS} | {f"bbh/{t}" for t in BBH_TASKS}
    mmlu = task.load(folder, "mmlu")
    assert len(mmlu.targets) == 20 and len(mmlu.evaluation) == 12
    assert sorted(set(mmlu.target_groups)) == sorted(MMLU_SUBJECTS) and list(mmlu.target_groups).count("alphabet") == 5
    assert all(isinstance(q, MCQuestion) for q in mmlu.evaluation.items)
    bbh = get_task("instruct", SMALL, seed=0).load(folder, "bbh")
    assert len(bbh.targets) == 12 and len(bbh.evaluation) == 8 and sorted(set(bbh.target_groups)) == sorted(BBH_TASKS)
    assert all(isinstance(e, ExactExample) for e in bbh.evaluation.items)
    assert bbh.targets[0].messages[1].content.startswith("Let's think step by step.")  # CoT exemplar
    assert np.array_equal(bbh.sources, mmlu.sources)  # one pool serves both target sets
    groups = task.candidate_groups(mmlu)
    assert set(groups) == {"source", "answer"} and set(groups["answer"]) <= {"right", "wrong", "none"}
    assert "wrong" in set(groups["answer"][mmlu.sources == "oasst1"])


def test_metrics_follow_the_target_set(small):
    _, _, folder = small
    task = get_task("instruct", SMALL, seed=0)
    task.target = "bbh"
    assert [m.name for m in task.metrics] == ["bbh_exact_match", "transfer_bbh_exact_match"]
    assert task.primary_metric.scale == 100.0 and task.higher_is_better
    task.target = "mmlu"
    assert task.metric == "mmlu_accuracy"
    assert task.architectures() == {"downstream": "llama-tiny", "transfer": "qwen-tiny"}
    with pytest.raises(TarotInputError, match="unknown target set 'gsm'"):
        task.load(folder, "gsm")


def test_proxy_parameters_are_exactly_the_trainable_lora_weights(small):
    task, _, _ = small
    model = task.proxy_model()
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    expected = task.options.proxy_parameters()
    assert list(trainable) == list(expected) and trainable == expected
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.fixture(scope="module")
def proxy(small, tmp_path_factory):
    task, data, _ = small
    out = tmp_path_factory.mktemp("proxy")
    return task.train_proxy(data, out), out


def test_proxy_checkpoints_hold_the_lora_state_and_its_adam_moments_only(small, proxy):
    task, _, _ = small
    ckpts, _ = proxy
    assert [c.epoch for c in ckpts] == [1, 2] and all(c.lr > 0 for c in ckpts)
    assert ckpts[0].extra["warmup_size"] == 10  # 10 % of the 100 pool records
    model = task.proxy_model()
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    for c in ckpts:
        state, opt = task.load_checkpoint(model, Path(c.path))
        assert set(state) == lora
        names = [n for g in opt["param_groups"] for n in g["param_names"]]
        assert sorted(names) == sorted(lora)
        assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in opt["state"].values())
    first, _ = task.load_checkpoint(model, Path(ckpts[0].path))
    last, _ = task.load_checkpoint(model, Path(ckpts[1].path))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the adapters trained
    blob = torch.load(ckpts[0].path, weights_only=True)
    assert blob["lr"] == pytest.approx(ckpts[0].lr)


def test_a_checkpoint_of_other_lora_settings_is_refused(small, proxy, tmp_path):
    task, _, _ = small
    ckpts, _ = proxy
    blob = torch.load(ckpts[0].path, weights_only=True)
    blob["model"] = {k: v for k, v in blob["model"].items() if ".layers.0." not in k}
    torch.save(blob, tmp_path / "partial.pt")
    with pytest.raises(TarotInputError, match="lacks the adapter .*layers.0"):
        task.load_checkpoint(task.proxy_model(), tmp_path / "partial.pt")


def test_gradient_batches_encode_in_index_order(small):
    task, data, _ = small
    subset = torch.utils.data.Subset(data.candidates, range(5, 12))
    batches = list(task.gradient_batches(subset, batch_size=3))
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 1]
    tok = task.tokenizer_for(task.options.proxy.model)
    first = tok.decode(batches[0]["input_ids"][1][batches[0]["attention_mask"][1].bool()])
    assert data.candidates[6].messages[-1].content.strip() in first
    loss = task.loss_fn(lambda **kw: task.proxy_model()(**kw), {k: v[:1] for k, v in batches[0].items()})
    assert loss.ndim == 0 and 0 < float(loss.detach()) < 20


def test_downstream_training_and_evaluation_with_a_transfer_model(small):
    _, _, folder = small
    for target, metric in (("mmlu", "mmlu_accuracy"), ("bbh", "bbh_exact_match")):
        unit = get_task("instruct", SMALL, seed=0)
        data = unit.load(folder, target)
        state = unit.train_downstream(data, "candidates", np.arange(0, 100, 10), np.full(10, 2), seed=1)
        assert set(state) == {"downstream", "transfer"}
        assert all(".lora_" in k for part in state.values() for k in part)
        metrics = unit.evaluate(data, state)
        for name in (metric, f"transfer_{metric}"):
            assert 0.0 <= metrics[name] <= 1.0
        subtasks = MMLU_SUBJECTS if target == "mmlu" else BBH_TASKS
        assert {f"{metric}.{s}" for s in subtasks} <= set(metrics)
        with pytest.raises(TarotInputError, match="no transfer model"):
            unit.evaluate(data, {"downstream": state["downstream"]})
    # the same seed trains the same adapters; the targets split trains too (target_only)
    again = unit.train_downstream(data, "candidates", np.arange(0, 100, 10), np.full(10, 2), seed=1)
    assert all(torch.equal(again["downstream"][k], state["downstream"][k]) for k in state["downstream"])
    assert set(unit.train_downstream(data, "targets", np.arange(3), None, seed=0)) == {"downstream", "transfer"}


# --------------------------------------------------------------------------- dataset less


def write_fake_less(root: Path) -> dict[str, str]:
    """A tiny LESS pool, MMLU and BBH folders and a saved tiny model with its tokenizer, in the real layouts."""
    pool = [
        Conversation(
            src, f"{src}_{i}", (Message("user", f"Question {i} of {src}?"), Message("assistant", f"Answer {i}."))
        )
        for src in ("flan_v2", "dolly")
        for i in range(6)
    ]
    for src in ("flan_v2", "dolly"):
        write_less_jsonl(root / "train" / src / f"{src}_data.jsonl", [c for c in pool if c.dataset == src])
    qs = [
        MCQuestion("astronomy", f"Which planet {i}?", ("Mars", "Venus", "Earth", "Moon"), "ABCD"[i % 4])
        for i in range(7)
    ]
    write_mmlu_split(root / "mmlu", "dev", {"astronomy": qs[:5]})
    write_mmlu_split(root / "mmlu", "test", {"astronomy": qs[5:]})
    write_bbh_task(root / "bbh", "navigate", [ExactExample("navigate", f"Step {i}?", "Yes") for i in range(5)])
    texts = [c.messages[0].content for c in pool] + ["Mars Venus Earth Moon Yes No"] * 5
    tok = lm.train_tokenizer(texts, 300)
    model = lm.build_model("llama-tiny", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    lm.save_local(model, root / "llama")
    lm.save_local(tok, root / "llama")
    return {
        "pool": str(root / "train"),
        "mmlu_root": str(root / "mmlu"),
        "bbh_root": str(root / "bbh"),
        "model": str(root / "llama"),
    }


def test_the_less_dataset_reads_your_folders_and_models(tmp_path):
    paths = write_fake_less(tmp_path / "fake")
    block = {
        "kind": "instruct",
        "dataset": "less",
        "pool": [paths["pool"]],
        "mmlu_root": paths["mmlu_root"],
        "bbh_root": paths["bbh_root"],
        "proxy": {"model": {"preset": None, "path": paths["model"]}, "lora": {"r": 2}},
    }
    task = get_task("instruct", block, seed=0)
    task.prepare(tmp_path / "data")
    data = task.load(tmp_path / "data", "mmlu")
    assert len(data.candidates) == 12 and len(data.targets) == 5 and len(data.evaluation) == 2
    bbh = get_task("instruct", block, seed=0).load(tmp_path / "data", "bbh")
    assert len(bbh.targets) == 3 and len(bbh.evaluation) == 2  # no CoT prompt: the first 3 examples are targets
    trainable = {n: tuple(p.shape) for n, p in task.proxy_model().named_parameters() if p.requires_grad}
    assert trainable == task.options.proxy_parameters()  # from the folder's config.json
    assert task.options.model_names() == {"downstream": "llama"}
