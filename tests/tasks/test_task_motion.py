"""The motion task as a pipeline task: settings (errors name their key, parameter shapes
without torch), data preparation through ScenarioNet folders (sizes, determinism, the
2 Hz target resampled), per-sample gradients (vmap = loop), proxy checkpoints with Adam
state, downstream training that honours weights and learns (below constant velocity), the
evaluation records, the transfer metrics and the LDS outputs."""

from __future__ import annotations

import pickle
import shutil
import typing

import numpy as np
import pytest
import torch

from tarot_select import TarotInputError
from tarot_select.gradients import AdamPreconditioner, per_sample_gradients, select_parameters
from tarot_select.tasks import ModelOutputs, RunContext, get_spec, get_task
from tarot_select.tasks.motion import synthetic as syn
from tarot_select.tasks.motion.losses import wta_loss
from tarot_select.tasks.motion.models import MODEL_KINDS, PRESETS
from tarot_select.tasks.motion.sample import AGENT_SIN, AGENT_X, AGENT_Y
from tarot_select.tasks.motion.scenarionet import list_scenarios, read_scenario
from tarot_select.tasks.motion.settings import MODEL_PRESETS, Arch, MotionSettings
from tarot_select.tasks.motion.task import MotionDataset, batch_of

CUT = {"history": 4, "future": 10, "dt": 0.4, "agents": 4, "polylines": 8, "points": 5, "point_spacing": 2.0}
SMALL_PROXY = {"width": 16, "heads": 2, "ffn_mult": 1, "enc_layers": 1, "dec_layers": 1}
SMALL_DOWN = {"width": 32, "heads": 2, "num_latents": 4, "ffn_mult": 1, "enc_layers": 1, "dec_layers": 1}
# Four sources, a tiny pool, small models: every test but the learning one runs in seconds.
SMALL = {
    "kind": "motion",
    "sources": ["womd", "av2", "nuplan", "glitch"],
    "per_source": 6,
    "n_targets": 5,
    "n_evaluation": 8,
    "cut": CUT,
    "proxy": {"model": SMALL_PROXY, "epochs": 3, "checkpoints": 2, "batch_size": 8},
    "downstream": {
        "model": SMALL_DOWN,
        "epochs": 4,
        "batch_size": 8,
        "eval_every": 2,
        "also_proxy_arch": True,
    },
}


# conftest.py: ``small`` is SMALL prepared once, ``(task, data, folder)``
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- settings


def _fake_folder(root, style="womd", n=2):
    return syn.write_synthetic(root, style, n, seed=0, steps=20, workers=None)


@pytest.mark.parametrize(
    "block,message",
    [
        ({"target_style": "glitch"}, r"^t\.target_style: glitch cannot be the target"),
        ({"n_targets": None}, r"^t\.n_targets: needs a number for dataset synthetic"),
        ({"target_root": "/x"}, r"^t\.target_root: only for dataset scenarionet"),
        ({"sources": ["womd", "kitti"]}, r"^t\.sources\[1\]: must be one of"),
        ({"dataset": "scenarionet"}, r"^t\.candidate_roots: required for dataset scenarionet"),
        ({"proxy": {"epochs": 2, "checkpoints": 3}}, r"^t\.proxy\.checkpoints: 3 exceeds epochs=2"),
        ({"downstream": {"primary": "best"}}, r"^t\.downstream\.primary: best needs eval_every > 0"),
        ({"downstream": {"epochs": 3, "eval_every": 4}}, r"^t\.downstream\.eval_every: 4 exceeds epochs=3"),
        ({"proxy": {"model": {"width": 30}}}, r"^t\.proxy\.model\.width: width 30 is not a multiple of heads 4"),
        ({"proxy": {"model": {"num_latents": 8}}}, r"^t\.proxy\.model\.num_latents: only for arch wayformer"),
        ({"downstream": {"model": {"arch": "transformer"}}}, r"^t\.downstream\.model\.arch: must be one of"),
        ({"cut": {"points": 1}}, r"^t\.cut\.points: must be >= 2"),
        ({"cut": {"dt": 0.0}}, r"^t\.cut\.dt: must be > 0"),
    ],
)
def test_bad_settings_name_their_key(block, message):
    with pytest.raises(TarotInputError, match=message):
        MotionSettings.from_config(block, "t")


def test_scenarionet_folders_are_checked_before_any_job(tmp_path):
    womd, nus = _fake_folder(tmp_path / "womd"), _fake_folder(tmp_path / "nus", "nuscenes")
    val = _fake_folder(tmp_path / "val", "nuscenes")
    ok = {
        "dataset": "scenarionet",
        "candidate_roots": {"womd": str(womd)},
        "target_root": str(nus),
        "evaluation_root": str(val),
    }
    s = MotionSettings.from_config(ok, "t")
    assert s.split_sizes() is None and s.source_names() == ("womd",)
    for change, message in [
        ({"candidate_roots": {"womd": str(tmp_path / "nowhere")}}, r"^t\.candidate_roots\.womd: .*folder not found"),
        ({"candidate_roots": {"a/b": str(womd)}}, r"^t\.candidate_roots\.a/b: source names are"),
        ({"target_root": str(tmp_path)}, r"^t\.target_root: .*dataset_summary\.pkl: ScenarioNet summary file not"),
        ({"evaluation_root": str(nus)}, r"^t\.evaluation_root: .* is also target_root"),
        ({"evaluation_root": None}, r"^t\.evaluation_root: required for dataset scenarionet"),
        ({"per_source": 5, "target_root": str(nus), "n_candidates": 0}, r"^t\.n_candidates: must be >= 1"),
    ]:
        with pytest.raises(TarotInputError, match=message):
            MotionSettings.from_config({**ok, **change}, "t")


def test_settings_are_torch_free_and_read_the_models_presets():
    import subprocess
    import sys

    code = "import sys, tarot_select.tasks.motion.settings, tarot_select.tasks.motion; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    # one table (the torch-free presets module) for the settings and build_model
    assert MODEL_PRESETS is PRESETS and set(PRESETS) == set(typing.get_args(Arch)) == set(MODEL_KINDS)


@pytest.mark.parametrize(
    "model",
    [
        {"arch": "autobots"},
        {"arch": "wayformer"},
        {"arch": "autobots", "preset": "paper"},
        {"arch": "wayformer", "preset": "paper"},
        {"arch": "wayformer", "enc_layers": 3, "dec_layers": 1, "num_latents": 5, "num_modes": 3, "width": 24},
    ],
)
def test_proxy_parameters_match_the_model(model):
    """The settings' torch-free parameter shapes (from the presets) are those of the built model."""
    s = MotionSettings.from_config({"cut": CUT, "proxy": {"model": model}}, "t")
    net = get_task("motion", s).proxy_model()
    assert list(s.proxy_parameters().items()) == [(n, tuple(p.shape)) for n, p in net.named_parameters()]


def test_the_downstream_stage_gets_the_proxy_model_only_for_the_transfer_check():
    plain = MotionSettings.from_config({"proxy": {"epochs": 7}}, "t")
    assert "proxy" not in plain.for_stage("downstream")
    both = MotionSettings.from_config({"proxy": {"epochs": 7, "model": {"width": 64}}, **_transfer()}, "t")
    stage = both.for_stage("downstream")
    assert stage["proxy"] == {"model": both.to_dict()["proxy"]["model"]} and stage["proxy"]["model"]["width"] == 64
    # a downstream job builds its task from that part alone, and trains the configured proxy model
    task = get_task("motion", stage, check=False)
    assert task.options.proxy.model.width == 64 and task.options.proxy.epochs == 10  # epochs: not its business
    assert "proxy" not in both.for_stage("data") and both.for_stage("proxy")["proxy"]["epochs"] == 7


def _transfer():
    return {"downstream": {"also_proxy_arch": True}}


def test_registered_with_model_outputs():
    spec = get_spec("motion")
    assert spec.settings is MotionSettings and spec.model_outputs is True
    assert isinstance(get_task("motion", {}), ModelOutputs)
    assert MotionSettings.from_config({}).split_sizes() == {"candidates": 600, "targets": 100, "evaluation": 200}


# --------------------------------------------------------------------------- data


def test_prepare_writes_exact_splits_through_scenarionet_folders(small):
    task, data, folder = small
    assert (len(data.candidates), len(data.targets), len(data.evaluation)) == (24, 5, 8)
    assert task.options.split_sizes() == {"candidates": 24, "targets": 5, "evaluation": 8}
    assert list(data.sources) == [s for s in ("womd", "av2", "nuplan", "glitch") for _ in range(6)]
    assert set(data.targets.groups) == set(data.evaluation.groups) == {"nuscenes"}
    # the data went through real ScenarioNet folders, each style in its converter's layout
    entries = list_scenarios(folder / "scenarionet" / "targets-nuscenes")
    scene = read_scenario(entries[0])
    assert scene.dataset == "nuscenes" and scene.dt == pytest.approx(0.5)  # 2 Hz, resampled to 2.5 Hz
    with open(entries[0].path, "rb") as fh:
        raw = pickle.load(fh)
    assert next(iter(raw["tracks"].values()))["state"]["valid"].dtype.kind == "f"
    assert read_scenario(list_scenarios(folder / "scenarionet" / "candidates-nuplan")[0]).dt == pytest.approx(0.05)
    # items: the model's batch plus the future, in the focal agent's frame
    item = data.candidates[7]
    assert {k: tuple(v.shape) for k, v in item.items()} == {
        "agents": (4, 4, 9),
        "agents_mask": (4, 4),
        "map": (8, 5, 8),
        "map_mask": (8, 5),
        "future": (10, 2),
        "future_mask": (10,),
    }
    assert item["agents"].dtype == torch.float32 and item["agents_mask"].dtype == torch.bool
    for split in ("candidates", "targets", "evaluation"):
        b = batch_of(data.split(split), np.arange(len(data.split(split))))
        assert b["agents_mask"][:, 0, -1].all() and b["future_mask"].all()
        assert torch.allclose(b["agents"][:, 0, -1][:, [AGENT_X, AGENT_Y, AGENT_SIN]], torch.zeros(3), atol=1e-3)
        # the focal agent moves forward (+x) in its own frame
        assert (b["future"][:, -1, 0] > b["future"][:, -1, 1].abs() - 1.0).float().mean() > 0.7


def test_prepare_is_deterministic_and_seeded(small, tmp_path):
    _, data, _ = small
    again = get_task("motion", SMALL, seed=0)
    again.prepare(tmp_path / "again")
    other = get_task("motion", SMALL, seed=1)
    other.prepare(tmp_path / "other")
    a, b = again.load(tmp_path / "again"), other.load(tmp_path / "other")
    for split in ("candidates", "targets", "evaluation"):
        x = batch_of(data.split(split), np.arange(len(data.split(split))))
        y = batch_of(a.split(split), np.arange(len(a.split(split))))
        assert all(torch.equal(x[k], y[k]) for k in x), split
    z = batch_of(b.candidates, np.arange(len(b.candidates)))
    assert not torch.equal(z["future"], batch_of(data.candidates, np.arange(24))["future"])


def test_a_damaged_part_is_named_when_loaded(small, tmp_path):
    task, _, folder = small
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / "targets" / "nuscenes-0000" / "future.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(TarotInputError, match=r"targets/nuscenes-0000/future\.npy"):
        task.load(copy)
    with pytest.raises(TarotInputError, match="prepare again"):
        get_task("motion", {**SMALL, "cut": {**CUT, "agents": 5}}).load(folder)


def test_scenarionet_folders_are_cut_with_seeded_caps(tmp_path):
    roots = {s: str(syn.write_synthetic(tmp_path / s, s, 6, seed=3, steps=60, split="x")) for s in ("womd", "av2")}
    nus = syn.write_synthetic(tmp_path / "nus", "nuscenes", 6, seed=3, steps=60, split="x")
    val = syn.write_synthetic(tmp_path / "val", "nuscenes", 4, seed=3, steps=60, split="y")
    block = {
        "dataset": "scenarionet",
        "candidate_roots": roots,
        "target_root": str(nus),
        "evaluation_root": str(val),
        "n_candidates": 3,
        "n_targets": None,
        "n_evaluation": None,
        "cut": CUT,
    }
    task = get_task("motion", block, seed=0)
    task.prepare(tmp_path / "data")
    data = task.load(tmp_path / "data")
    assert list(data.sources) == ["womd"] * 3 + ["av2"] * 3  # the cap: 3 per source
    assert len(data.targets) >= 6 and len(data.evaluation) >= 4  # every scenario, at least one sample each
    assert set(data.targets.groups) == {"target"} and set(data.evaluation.groups) == {"evaluation"}
    other = get_task("motion", block, seed=5)
    other.prepare(tmp_path / "data5")
    a = batch_of(data.candidates, np.arange(6))["future"]
    b = batch_of(other.load(tmp_path / "data5").candidates, np.arange(6))["future"]
    assert not torch.equal(a, b)  # another seed, another order of scenarios
    # two threads cut in a pool of forked processes: the same samples in the same order
    pooled = get_task("motion", block, seed=0, context=RunContext(threads=2))
    pooled.prepare(tmp_path / "pooled")
    same = pooled.load(tmp_path / "pooled")
    for split in ("candidates", "targets", "evaluation"):
        x, y = data.split(split), same.split(split)
        assert len(x) == len(y)
        assert torch.equal(batch_of(x, np.arange(len(x)))["agents"], batch_of(y, np.arange(len(y)))["agents"])


# --------------------------------------------------------------------------- gradients and proxy


def test_per_sample_gradients_by_vmap_equal_the_loop(small):
    task, data, _ = small
    model = task.proxy_model().eval()
    batch = batch_of(data.candidates, np.array([0, 7, 13, 20]))
    names = select_parameters(model)
    fast = per_sample_gradients(model, task.loss_fn, batch, names, "vmap")
    slow = per_sample_gradients(model, task.loss_fn, batch, names, "loop")
    for name in names:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-5)
    assert any(float(fast[n].abs().sum()) > 0 for n in names)
    # the output of the LDS protocol is the negative loss: its gradients are the loss's, negated
    out = per_sample_gradients(model, task.output_fn, batch, names[:3], "vmap")
    for name in names[:3]:
        torch.testing.assert_close(out[name], -fast[name])


def test_train_proxy_saves_the_last_checkpoints_with_adam_state(small, tmp_path):
    task, data, _ = small
    ckpts = task.train_proxy(data, tmp_path)
    assert [c.epoch for c in ckpts] == [2, 3]
    assert [c.lr for c in ckpts] == pytest.approx([0.001 * 0.5 * (1 + np.cos(np.pi * e / 3)) for e in (1, 2)])
    model = task.proxy_model()
    state, opt = task.load_checkpoint(model, tmp_path / "ckpt_3.pt")
    model.load_state_dict(state)
    names = [n for n, _ in model.named_parameters()]
    assert opt["param_groups"][0]["param_names"] == names
    assert all({"exp_avg", "exp_avg_sq"} <= set(st) for st in opt["state"].values())
    pre = AdamPreconditioner.from_optimizer_state(opt, model, names)
    assert set(pre.exp_avg) == set(names)
    # deterministic: the same seed trains the same proxy
    again = task.train_proxy(data, tmp_path / "again")
    s2, _ = task.load_checkpoint(task.proxy_model(), again[-1].path)
    assert all(torch.equal(state[k], s2[k]) for k in state)


# --------------------------------------------------------------------------- downstream


def test_weights_are_repeat_counts_and_the_state_loads_into_the_downstream_model(small):
    task, data, _ = small
    counts = task.train_downstream(data, "candidates", np.array([3, 9, 15]), np.array([2, 1, 3]), seed=4)
    listed = task.train_downstream(data, "candidates", np.array([3, 3, 9, 15, 15, 15]), None, seed=4)
    assert counts.keys() == listed.keys() and all(torch.equal(counts[k], listed[k]) for k in counts)
    model = task.downstream_model()
    model.load_state_dict(counts, strict=True)  # the LDS stages load it as a plain state dict
    record = counts["eval_record"]
    assert record.shape == (2, 5) and record[:, 0].tolist() == [2.0, 4.0] and torch.isfinite(record).all()
    assert counts["proxy_arch_record"][:, 0].tolist() == [2.0, 4.0]
    other = task.train_downstream(data, "candidates", np.array([3, 9, 15]), np.array([2, 1, 3]), seed=5)
    assert not torch.equal(other["latents"], counts["latents"])
    with pytest.raises(TarotInputError, match="indices must lie in"):
        task.train_downstream(data, "targets", np.array([5]), None, seed=0)


def test_evaluate_reports_final_best_transfer_and_baseline(small):
    task, data, _ = small
    state = task.train_downstream(data, "candidates", np.arange(24), None, seed=0)
    out = task.evaluate(data, state)
    assert task.metric == "brier_min_fde" and not task.higher_is_better
    assert {m.name for m in task.metrics} <= set(out)
    assert out["best_brier_min_fde"] <= out["brier_min_fde"] + 1e-9
    record = state["eval_record"].numpy()
    # the training evaluated its last epoch: evaluate reuses it, and a second pass agrees
    assert record[-1, 1] == out["brier_min_fde"]
    forgotten = {**state, "eval_record": state["eval_record"].clone()}
    forgotten["eval_record"][-1] = float("nan")
    again = task.evaluate(data, forgotten)
    for m in ("brier_min_fde", "min_ade", "min_fde", "miss_rate"):
        assert again[m] == pytest.approx(out[m], rel=1e-6), m
    assert out["best_brier_min_fde"] == pytest.approx(min(record[:, 1].min(), out["brier_min_fde"]))
    assert out["proxy_arch_brier_min_fde"] == pytest.approx(float(state["proxy_arch_record"][-1, 1]))
    assert out["min_fde"] <= out["brier_min_fde"] <= out["min_fde"] + 1.0
    assert 0.0 <= out["miss_rate"] <= 1.0 and out["constant_velocity_brier_min_fde"] > 0
    best = get_task("motion", {**SMALL, "downstream": {**SMALL["downstream"], "primary": "best"}}, seed=0)
    assert best.metric == "best_brier_min_fde"
    with pytest.raises(TarotInputError, match="does not fit"):
        get_task("motion", {**SMALL, "downstream": {**SMALL["downstream"], "also_proxy_arch": False}}).evaluate(
            data, state
        )


def test_records_name_both_architectures_for_the_transfer_table():
    both = get_task("motion", {**SMALL, "downstream": {**SMALL["downstream"], "also_proxy_arch": True}})
    assert both.architectures() == {"downstream": "wayformer", "proxy_arch": "autobots"}
    one = get_task("motion", {**SMALL, "downstream": {**SMALL["downstream"], "also_proxy_arch": False}})
    assert one.architectures() == {"downstream": "wayformer"}
    assert "Q = I" in both.output_description  # what DsDm scored, quoted by the tables


def test_model_outputs_are_the_negative_per_sample_loss(small):
    task, data, _ = small
    state = task.train_downstream(data, "candidates", np.arange(8), None, seed=1)
    out = task.outputs(data, state, "targets")
    assert out.shape == (5,) and out.dtype == np.float64
    model = task.downstream_model()
    model.load_state_dict(state)
    model.eval()
    b = batch_of(data.targets, np.arange(5))
    with torch.no_grad():
        want = -wta_loss(model(b), b["future"], b["future_mask"]).double().numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert np.all(out < 0)  # the loss is positive here (NLL of metre-scale errors)
    w = task.train_weights(data, state, "candidates", model=task.proxy_model())
    assert w.shape == (24,) and np.all(w == 1.0)


def test_dataset_items_and_batches_agree():
    rng = np.random.default_rng(0)
    from tarot_select.tasks.motion.sample import MotionSamples

    def part(n, source):
        return MotionSamples(
            agents=rng.normal(size=(n, 2, 3, 9)),
            agents_mask=rng.random((n, 2, 3)) > 0.3,
            map=rng.normal(size=(n, 2, 4, 8)),
            map_mask=rng.random((n, 2, 4)) > 0.3,
            future=rng.normal(size=(n, 5, 2)),
            future_mask=rng.random((n, 5)) > 0.2,
            source=source,
            scenario_id=[f"s{i}" for i in range(n)],
            track_id=[str(i) for i in range(n)],
        )

    ds = MotionDataset([part(3, "a"), part(4, "b")])
    assert len(ds) == 7 and list(ds.groups) == ["a"] * 3 + ["b"] * 4
    idx = np.array([6, 0, 3, 3, 2])
    b = ds.batch(idx)
    for j, i in enumerate(idx):
        assert all(torch.equal(b[k][j], ds[int(i)][k]) for k in b)
    sub = torch.utils.data.Subset(ds, [5, 1])
    assert torch.equal(batch_of(sub, np.array([1, 0]))["future"], ds.batch(np.array([1, 5]))["future"])
    with pytest.raises(IndexError):
        ds[7]


# --------------------------------------------------------------------------- learning


LEARN = {
    "kind": "motion",
    "sources": ["nuscenes"],  # candidates of the target's style (other scenes than targets and evaluation)
    "per_source": 160,
    "n_targets": 4,
    "n_evaluation": 100,
    "cut": {"history": 6, "future": 15, "dt": 0.4, "agents": 6, "polylines": 16, "points": 8, "point_spacing": 2.0},
    "downstream": {
        "model": {"arch": "wayformer", "width": 64, "num_latents": 8, "ffn_mult": 2},
        "epochs": 15,
        "lr": 0.002,
        "batch_size": 32,
    },
}


def test_the_downstream_wayformer_learns_better_than_constant_velocity(tmp_path):
    task = get_task("motion", LEARN, seed=0)
    task.prepare(tmp_path)
    data = task.load(tmp_path)
    state = task.train_downstream(data, "candidates", np.arange(160), None, seed=0)
    out = task.evaluate(data, state)
    # 6 s ahead: constant velocity misses turns and stops (about 8 m); trained: well below
    assert out["constant_velocity_brier_min_fde"] > 6.0
    assert out["brier_min_fde"] < 0.75 * out["constant_velocity_brier_min_fde"], out


@pytest.mark.slow
def test_the_glitch_source_hurts(tmp_path):
    """Trained on glitch logs (target-like roads, implausible futures), the Wayformer does
    worse on the target than trained on as many samples of the other sources."""
    block = {
        **LEARN,
        "sources": ["womd", "nuplan", "glitch"],
        "per_source": 120,
        "downstream": {**LEARN["downstream"], "epochs": 20},
    }
    task = get_task("motion", block, seed=0)
    task.prepare(tmp_path)
    data = task.load(tmp_path)
    clean = np.flatnonzero(data.sources != "glitch")[::2]
    glitch = np.flatnonzero(data.sources == "glitch")
    good = task.evaluate(data, task.train_downstream(data, "candidates", clean, None, seed=0))
    bad = task.evaluate(data, task.train_downstream(data, "candidates", glitch, None, seed=0))
    assert bad["brier_min_fde"] > good["brier_min_fde"] + 0.5, (good, bad)
