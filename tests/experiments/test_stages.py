"""Pipeline stages: jobs build their task from params alone, the gradient engine comes from
config, a selection maps to the task's training examples, run records carry the metric spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
