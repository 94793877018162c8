"""Pipeline stages: jobs build their task from params alone, the gradient engine comes from
config, a selection maps to the task's training examples, run records carry the metric spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tarot_select.errors import TarotInputError
from tarot_select.experiments import plan, stages
from tarot_select.factored import FactoredGradientFeaturizer
from tarot_select.featurize import GradientFeaturizer
from tarot_select.io import load_features
from tarot_select.result import Selection

DIGITS = {
    "kind": "digits",
    "sources": ["clean", "rotated"],
    "per_source": 20,
    "target_styles": ["rotated"],
    "n_targets": 10,
    "n_evaluation": 20,
    "proxy": {"epochs": 2, "checkpoints": 1, "width": 4},
    "downstream": {"epochs": 1, "width": 4},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    config = {"seed": 2, "device": "cpu", "tasks": {"digits": DIGITS}}
    job = {**plan.stage_params(config, "digits", "proxy"), "device": "cpu", "target": None}
    task = stages.job_task(job, threads=1)
    root = tmp_path_factory.mktemp("stages")
    stages.prepare_data(task, root / "data")
    stages.train_proxy(task, root / "data", root / "proxy")
    return config, task, root


def test_a_job_builds_its_task_from_its_params_with_the_run_context(prepared):
    config, task, _ = prepared
    assert task.seed == 2 and task.context.device == "cpu" and task.context.threads == 1
    assert task.options.proxy.epochs == 2 and task.target is None
    job = {**plan.stage_params(config, "digits", "data"), "device": "auto", "target": None}
    assert "proxy" not in job["task"] and stages.job_task(job).context.device in ("cpu", "cuda")


@pytest.mark.parametrize(
    "engine,cls", [("vmap", GradientFeaturizer), ("loop", GradientFeaturizer), ("factored", FactoredGradientFeaturizer)]
)
def test_the_gradient_engine_comes_from_the_features_block(prepared, tmp_path, engine, cls):
    _, task, root = prepared
    features = {"proj_dim": 8, "batch_size": 16, "engine": engine}
    featurizer = stages.make_featurizer(task.proxy_model(), task.loss_fn, features)
    assert type(featurizer) is cls
    out = tmp_path / "t.npy"
    stages.dump_gradients(task, root / "data", root / "proxy", "targets", out, features)
    feats = load_features(out)
    assert feats.array.shape == (10, 8) and np.isfinite(feats.array).all()
    assert feats.meta["mode"] == ("factored" if engine == "factored" else engine)
    with pytest.raises(TarotInputError, match="features.engine"):
        stages.make_featurizer(task.proxy_model(), task.loss_fn, {**features, "engine": "jax"})


def test_a_selection_trains_on_the_examples_its_candidates_stand_for(prepared, tmp_path, monkeypatch):
    _, task, root = prepared
    csv = tmp_path / "sel.csv"
    Selection(indices=np.array([0, 3]), method="toy", n_candidates=40, budget=2).to_csv(
        csv, extra_meta={"split": "candidates", "ratio_label": "5%", "requested_ratio": 0.05}
    )
    seen = {}

    def expand(indices, weights):  # e.g. a scene stands for its agents
        return np.concatenate([indices, indices + 1]), weights

    def train(data, split, indices, weights, seed, progress=False):
        seen["indices"] = indices
        return {}

    monkeypatch.setattr(task, "training_examples", expand)
    monkeypatch.setattr(task, "train_downstream", train)
    stages.train_downstream(task, root / "data", csv, 0, tmp_path / "m.pt")
    assert seen["indices"].tolist() == [0, 3, 1, 4]


def test_run_records_carry_the_primary_metric_spec(prepared, tmp_path):
    _, task, root = prepared
    csv = tmp_path / "sel.csv"
    Selection(indices=np.arange(10), method="random", n_candidates=40, budget=10).to_csv(
        csv, extra_meta={"split": "candidates", "ratio_label": "25%", "requested_ratio": 0.25}
    )
    stages.train_downstream(task, root / "data", csv, 0, tmp_path / "m.pt")
    record = stages.evaluate_model(task, root / "data", tmp_path / "m.pt", csv, 0, tmp_path / "r.json")
    assert record["metric_spec"] == {
        "name": "accuracy",
        "label": "accuracy",
        "unit": "%",
        "scale": 100.0,
        "higher_is_better": True,
    }
    assert json.loads((tmp_path / "r.json").read_text())["metric"] == "accuracy"


@pytest.fixture(scope="module")
def feature_files(prepared):
    _, task, root = prepared
    features = {"proj_dim": 8, "batch_size": 16}
    f = root / "features"
    for split, adam in (("candidates", False), ("targets", False), ("candidates", True)):
        name = f"{split}_adam" if adam else split
        stages.dump_gradients(task, root / "data", root / "proxy", split, f / f"{name}.npy", features, adam=adam)
    stages.whiten_features(
        f / "candidates.npy",
        f / "targets.npy",
        f / "wfd_candidates.npy",
        f / "wfd_targets.npy",
        out_neighbors=f / "nb.npz",
    )
    files = {
        k: str(f / f"{k}.npy") for k in ("candidates", "targets", "candidates_adam", "wfd_candidates", "wfd_targets")
    }
    return {**files, "wfd_neighbors": str(f / "nb.npz"), "data": str(root / "data")}


SETTINGS = {"seed": 0, "repeat": 2.0, "folds": 3, "patience": 1, "ot_method": "auto", "reg": 0.01}


def test_random_is_drawn_once_per_downstream_seed(prepared, feature_files, tmp_path):
    _, task, _ = prepared
    config = {"seeds": [0, 1], "methods": ["random", "tarot"], "ratios": [0.25]}
    config |= {"weighting": {"enabled": False}, "otm": {"enabled": False}, "references": []}
    assert plan.selections(config) == ["random-s0.r0.25", "random-s1.r0.25", "tarot.r0.25"]
    assert plan.runs(config) == [("random-s0.r0.25", 0), ("random-s1.r0.25", 1), ("tarot.r0.25", 0), ("tarot.r0.25", 1)]
    draws = [
        stages.select_for_job(task, name, feature_files, tmp_path / f"{name}.csv", SETTINGS).indices
        for name in ("random-s0.r0.25", "random-s1.r0.25", "random-s0.r0.25")
    ]
    assert not np.array_equal(draws[0], draws[1]) and np.array_equal(draws[0], draws[2])
    meta = json.loads((tmp_path / "random-s1.r0.25.json").read_text())
    assert meta["method"] == "random" and meta["ratio_label"] == "25%"


def test_every_method_at_a_ratio_trains_on_as_many_samples_per_epoch(prepared, feature_files, tmp_path):
    _, task, root = prepared
    config = {"weighting": {"enabled": True, "repeat": 2.0}}
    seen = {}
    for name in ("tarot.r0.25", "tarot_weighted.r0.25", "dsdm.r0.25"):
        csv = tmp_path / f"{name}.csv"
        stages.select_for_job(task, name, feature_files, csv, SETTINGS)
        repeat = plan.repeat_factor(config, name)
        stages.train_downstream(task, root / "data", csv, 0, tmp_path / f"{name}.pt", repeat=repeat)
        seen[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)["samples_per_epoch"]
    assert plan.repeat_factor(config, "tarot_weighted.r0.25") == 1.0 and plan.repeat_factor(config, "otm") == 1.0
    assert len(set(seen.values())) == 1 and seen["tarot.r0.25"] == 2 * 10, seen


def test_a_selection_records_its_source_and_class_composition(prepared, feature_files, tmp_path):
    _, task, _ = prepared
    sel = stages.select_for_job(task, "less.r0.25", feature_files, tmp_path / "less.csv", SETTINGS)
    meta = json.loads((tmp_path / "less.json").read_text())
    for kind in ("source", "class"):
        assert sum(meta["composition"][kind].values()) == sel.size
    labels = stages.load_data(task, feature_files["data"]).candidates.tensors[1].numpy()
    assert meta["group_totals"] == {"source": 2, "class": len(np.unique(labels))}
    assert len(meta["composition"]["class"]) <= meta["group_totals"]["class"]


def test_dsdm_scores_trak_datamodels_of_the_margin_when_the_task_has_outputs(prepared, feature_files, tmp_path):
    _, task, root = prepared
    f = tmp_path / "out"
    features = {"proj_dim": 8, "batch_size": 16}
    for split in ("candidates", "targets"):
        stages.dump_gradients(task, root / "data", root / "proxy", split, f / f"{split}_output.npy", features, output=True)
    assert load_features(f / "candidates_output.npy").meta["gradient_of"] == "model output"
    q = stages.proxy_train_weights(task, stages.load_data(task, root / "data"), root / "proxy")
    assert q.shape == (40, 1) and ((q > 0) & (q < 1)).all()
    files = {**feature_files, "proxy": str(root / "proxy")}
    files |= {f"{s}_output": str(f / f"{s}_output.npy") for s in ("candidates", "targets")}
    with_q = stages.select_for_job(task, "dsdm.r0.25", files, tmp_path / "m.csv", SETTINGS)
    plain = stages.select_for_job(task, "dsdm.r0.25", feature_files, tmp_path / "l.csv", SETTINGS)
    assert "margin" in json.loads((tmp_path / "m.json").read_text())["dsdm_features"]
    assert "loss gradients" in json.loads((tmp_path / "l.json").read_text())["dsdm_features"]
    assert with_q.size == plain.size == 10
