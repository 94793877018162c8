"""Pipeline stages: jobs build their task from params alone, the gradient engine comes from
config, a selection maps to the task's training examples, run records carry the metric spec;
bad input stops a job with one line and exit 2, and every file a job reads from an earlier
one (checkpoints, models, statistics, neighbour lists, selections, LDS arrays) is named when
it is damaged."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tarot_select.errors import TarotInputError
from tarot_select.experiments import lds_stages, plan, stages
from tarot_select.factored import FactoredGradientFeaturizer
from tarot_select.featurize import Checkpoint, GradientFeaturizer
from tarot_select.io import load_features, save_npz
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


def test_otm_weighted_is_otms_selection_with_ot_potential_repeat_counts(prepared, feature_files, tmp_path):
    _, task, root = prepared
    config = {"seeds": [0], "methods": ["tarot"], "ratios": [0.25], "references": []}
    config |= {"weighting": {"enabled": False, "repeat": 2.0}, "otm": {"enabled": True, "weighted": True}}
    assert plan.selections(config)[-2:] == ["otm", "otm_weighted"]
    config["otm"] |= {"folds": 3, "patience": 1}
    config |= {"seed": 0, "ot": {"method": "auto", "reg": 0.01}}
    assert plan.select_settings(config, "otm_weighted") == {**plan.select_settings(config, "otm"), "repeat": 2.0}
    plain = stages.select_for_job(task, "otm", feature_files, tmp_path / "otm.csv", SETTINGS)
    weighted = stages.select_for_job(task, "otm_weighted", feature_files, tmp_path / "otm_weighted.csv", SETTINGS)
    # the same OTM subset; integer repeat counts >= 1 that sum to R x |S|
    assert np.array_equal(np.sort(plain.indices), np.sort(weighted.indices))
    counts = np.asarray(weighted.weights)
    assert counts.min() >= 1 and counts.sum() == round(2.0 * weighted.size) and len(np.unique(counts)) > 1
    meta = json.loads((tmp_path / "otm_weighted.json").read_text())
    assert meta["ratio_label"] == "OTM" and meta["weighting"] == "potential"
    stages.train_downstream(task, root / "data", tmp_path / "otm_weighted.csv", 0, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["samples_per_epoch"] == counts.sum()


def test_otm_runs_its_folds_on_the_jobs_threads(prepared, feature_files, tmp_path, monkeypatch):
    """The select job's threads become OTM's fold workers (forked processes), with the same
    selection as one process; other methods ignore them."""
    import dataclasses

    _, task, _ = prepared
    asked = []
    real = stages.select
    monkeypatch.setattr(stages, "select", lambda *a, **k: asked.append((a[0], k["workers"])) or real(*a, **k))
    one = stages.select_for_job(task, "otm", feature_files, tmp_path / "one.csv", SETTINGS)
    monkeypatch.setattr(task, "context", dataclasses.replace(task.context, threads=2))
    two = stages.select_for_job(task, "otm", feature_files, tmp_path / "two.csv", SETTINGS)
    stages.select_for_job(task, "tarot.r0.25", feature_files, tmp_path / "tarot.csv", SETTINGS)
    assert asked == [("otm", 1), ("otm", 2), ("tarot", 1)]
    np.testing.assert_array_equal(one.indices, two.indices)
    assert one.ot_trace == two.ot_trace


def test_infdist_reads_embeddings_and_the_landmarks_gradients_only(prepared, feature_files, tmp_path):
    from tarot_select.infdist import choose_landmarks

    _, task, root = prepared
    features = {"proj_dim": 8, "batch_size": 16}
    # the landmarks' features are the pool's Adam features at the drawn rows, computed for those rows only
    stages.dump_gradients(
        task, root / "data", root / "proxy", "landmarks", tmp_path / "landmarks_adam.npy", features,
        adam=True, landmarks={"count": 12, "seed": 3},
    )  # fmt: skip
    land = load_features(tmp_path / "landmarks_adam.npy")
    chosen = choose_landmarks(40, 12, 3)
    assert land.meta["landmarks"]["indices"] == chosen.tolist() and land.meta["landmarks"]["n_candidates"] == 40
    pool = load_features(feature_files["candidates_adam"]).array
    np.testing.assert_allclose(land.array, pool[chosen], rtol=1e-5, atol=1e-6)
    settings = {"blocks": 1, "tangents": 2, "dim": 16, "seed": 0, "batch_size": 16, "proj_kind": "rademacher"}
    stages.embed_candidates(task, root / "data", root / "proxy", tmp_path / "embeddings.npy", settings)
    emb = load_features(tmp_path / "embeddings.npy")
    assert emb.array.shape[0] == 40 and np.isfinite(emb.array).all() and emb.array.std(axis=0).max() > 0
    assert emb.meta["embedding"]["n_blocks"] == 1 and emb.meta["checkpoint"].startswith("ckpt_")
    files = {
        "embeddings": str(tmp_path / "embeddings.npy"),
        "landmarks": str(tmp_path / "landmarks_adam.npy"),
        **{k: feature_files[k] for k in ("targets", "wfd_candidates", "wfd_targets", "data")},
    }
    config = {
        "seed": 0,
        "ot": {"method": "auto", "reg": 0.01},
        "infdist": {"kernel": "rbf", "bandwidth": None, "damping": 0.01, "strategy": "round_robin"},
    }
    settings = plan.select_settings(config, "infdist.r0.25")
    sel = stages.select_for_job(task, "infdist.r0.25", files, tmp_path / "infdist.csv", settings)
    assert sel.method == "infdist" and sel.size == 10 and len(np.unique(sel.indices)) == 10
    meta = json.loads((tmp_path / "infdist.json").read_text())
    assert meta["ot_distance"] > 0 and sum(meta["composition"]["source"].values()) == 10
    # its settings reach only its own select jobs
    edited = {**config, "infdist": {**config["infdist"], "damping": 0.5}}
    assert plan.select_settings(edited, "infdist.r0.25") != settings
    for other in ("tarot.r0.25", "less.r0.25", "random-s0.r0.25"):
        assert plan.select_settings(edited, other) == plan.select_settings(config, other)
    # landmarks drawn from another pool are refused, naming the file
    other = dict(land.meta)
    other["landmarks"] = {**land.meta["landmarks"], "n_candidates": 41}
    from tarot_select.io import save_features

    save_features(tmp_path / "bad.npy", np.asarray(land.array), meta=other)
    with pytest.raises(TarotInputError, match="bad.npy"):
        stages.select_for_job(task, "infdist.r0.25", {**files, "landmarks": str(tmp_path / "bad.npy")},
                              tmp_path / "x.csv", settings)  # fmt: skip


def test_a_selection_records_its_source_and_class_composition(prepared, feature_files, tmp_path):
    _, task, _ = prepared
    sel = stages.select_for_job(task, "less.r0.25", feature_files, tmp_path / "less.csv", SETTINGS)
    meta = json.loads((tmp_path / "less.json").read_text())
    for kind in ("source", "class"):
        assert sum(meta["composition"][kind].values()) == sel.size
    labels = stages.load_data(task, feature_files["data"]).candidates.tensors[1].numpy()
    assert meta["group_totals"] == {"source": 2, "class": len(np.unique(labels))}
    assert len(meta["composition"]["class"]) <= meta["group_totals"]["class"]
    groups = task.candidate_groups(stages.load_data(task, feature_files["data"]))
    for kind, labels in groups.items():
        values, counts = np.unique(labels, return_counts=True)
        assert meta["group_sizes"][kind] == {str(v): int(c) for v, c in zip(values, counts)}
        assert all(meta["composition"][kind][g] <= meta["group_sizes"][kind][g] for g in meta["composition"][kind])
        # the groups of the selected rows themselves
        values, counts = np.unique(labels[sel.indices], return_counts=True)
        assert meta["composition"][kind] == {str(v): int(c) for v, c in zip(values, counts)}


def test_dsdm_scores_trak_datamodels_of_the_margin_when_the_task_has_outputs(
    prepared, feature_files, tmp_path, monkeypatch
):
    _, task, root = prepared
    f = tmp_path / "out"
    features = {"proj_dim": 8, "batch_size": 16}
    for split in ("candidates", "targets"):
        stages.dump_gradients(
            task, root / "data", root / "proxy", split, f / f"{split}_output.npy", features, output=True
        )
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
    # the margin selection is TRAK's datamodel scores of the output gradients, weighted by Q
    from tarot_select.baselines import dsdm_scores, top_budget

    c_out, t_out = (load_features(f / f"{s}_output.npy") for s in ("candidates", "targets"))
    scores = dsdm_scores(c_out.array, t_out.array, checkpoint_dims=c_out.checkpoint_dims, train_weights=q)
    assert with_q.indices.tolist() == top_budget(scores, 10).tolist()
    # the proxy's Q is close to uniform here; a far-from-uniform one shows that the job passes it on
    strong = np.linspace(0.02, 1.0, 40)[::-1].reshape(40, 1).copy()
    monkeypatch.setattr(stages, "proxy_train_weights", lambda *args: strong)
    with_strong = stages.select_for_job(task, "dsdm.r0.25", files, tmp_path / "s.csv", SETTINGS)
    strong_scores = dsdm_scores(c_out.array, t_out.array, checkpoint_dims=c_out.checkpoint_dims, train_weights=strong)
    assert with_strong.indices.tolist() == top_budget(strong_scores, 10).tolist()
    assert set(with_strong.indices.tolist()) != set(with_q.indices.tolist())


# ---------------------------------------------------------------- damaged files and one-line errors


@pytest.fixture
def restore_logging():
    """``stage`` reconfigures the root logger and the thread pools; put them back afterwards."""
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    torch.set_num_threads(threads)


def test_bad_input_stops_a_job_with_one_line_and_exit_2(tmp_path, capsys, restore_logging):
    log = tmp_path / "logs" / "job.log"
    message = f"{tmp_path}/stats.npz: truncated or changed since it was written;\ndelete it and rerun"
    with pytest.raises(SystemExit) as stopped, stages.stage(log):
        raise TarotInputError(message)
    assert stopped.value.code == stages.INPUT_ERROR_STATUS == 2
    one_line = " ".join(message.split())
    assert capsys.readouterr().err.splitlines() == [f"error: {one_line}"]
    text = log.read_text()
    assert "Traceback" not in text and text.count("stats.npz") == 1
    assert next(ln for ln in text.splitlines() if " ERROR " in ln).endswith(one_line)


def test_a_bug_in_a_job_keeps_its_traceback(tmp_path, capsys, restore_logging):
    log = tmp_path / "job.log"
    with pytest.raises(ZeroDivisionError), stages.stage(log):
        _ = 1 / 0
    assert "Traceback (most recent call last)" in log.read_text() and "ZeroDivisionError" in log.read_text()
    assert capsys.readouterr().err == ""  # Snakemake prints the traceback the process dies with


def test_a_job_process_stopped_by_bad_input_exits_2_without_a_traceback(tmp_path):
    script = (
        "from tarot_select.errors import TarotInputError\n"
        "from tarot_select.experiments import stages\n"
        f"with stages.stage({str(tmp_path / 'job.log')!r}):\n"
        "    raise TarotInputError('/r/digits/features/wfd_neighbors.npz: truncated; delete it and rerun')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: /r/digits/features/wfd_neighbors.npz: truncated; delete it and rerun"
    ]
    assert "Traceback" not in (tmp_path / "job.log").read_text()


DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "garbage": lambda b: b"\x00not a torch file" * 8,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoints_and_models_are_named_in_one_line(prepared, tmp_path, damage):
    _, task, root = prepared
    proxy = tmp_path / "proxy"
    shutil.copytree(root / "proxy", proxy)
    ckpt = proxy / json.loads((proxy / "checkpoints.json").read_text())["checkpoints"][0]["file"]
    ckpt.write_bytes(DAMAGE[damage](ckpt.read_bytes()))
    in_workflow = f"; delete the folder {re.escape(str(proxy))} and rerun train_proxy$"  # a directory output
    checks = [
        (lambda: task.load_checkpoint(task.proxy_model(), ckpt), in_workflow),
        (
            lambda: stages.dump_gradients(task, root / "data", proxy, "targets", tmp_path / "t.npy", {"proj_dim": 4}),
            in_workflow,
        ),
        (lambda: Checkpoint(path=ckpt).load(), "; delete it and rerun$"),  # the library: any checkpoint file
    ]
    for check, fix in checks:
        with pytest.raises(TarotInputError, match=f"^{re.escape(str(ckpt))}: .*(empty|truncated or damaged).*{fix}"):
            check()
    assert not (tmp_path / "t.npy").exists()
    # the downstream model a job trained, damaged before evaluation
    csv = tmp_path / "sel.csv"
    Selection(indices=np.arange(10), method="random", n_candidates=40, budget=10).to_csv(
        csv, extra_meta={"split": "candidates", "ratio_label": "25%", "requested_ratio": 0.25}
    )
    model = tmp_path / "m.pt"
    stages.train_downstream(task, root / "data", csv, 0, model)
    model.write_bytes(DAMAGE[damage](model.read_bytes()))
    with pytest.raises(TarotInputError, match=f"{re.escape(str(model))}: downstream model .*delete it and rerun"):
        stages.evaluate_model(task, root / "data", model, csv, 0, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("text", ["", '{"task": "digits", "checkpoints": [{"file": "ckpt', "[]"])
def test_a_damaged_checkpoint_list_is_named(prepared, tmp_path, text):
    _, task, root = prepared
    proxy = tmp_path / "proxy"
    shutil.copytree(root / "proxy", proxy)
    (proxy / "checkpoints.json").write_text(text)
    with pytest.raises(TarotInputError, match=r"proxy/checkpoints\.json: .*rerun train_proxy"):
        stages.dump_gradients(task, root / "data", proxy, "targets", tmp_path / "t.npy", {"proj_dim": 4})


def test_whitening_statistics_and_neighbour_lists_are_checked_where_they_are_read(prepared, feature_files, tmp_path):
    _, task, root = prepared
    features = {"proj_dim": 8, "batch_size": 16}
    stats = []
    for split in ("candidates", "targets"):
        stats.append(tmp_path / f"{split}.stats.npz")
        stages.dump_gradients(
            task, root / "data", root / "proxy", split, tmp_path / f"{split}.npy", features, stats_path=stats[-1]
        )
        assert json.loads(stats[-1].with_suffix(".json").read_text())["integrity"]["bytes"] == stats[-1].stat().st_size
    outs = [tmp_path / n for n in ("wc.npy", "wt.npy")]
    nb = tmp_path / "nb.npz"
    stages.whiten_features(tmp_path / "candidates.npy", tmp_path / "targets.npy", *outs, stats=stats, out_neighbors=nb)
    side = json.loads(nb.with_suffix(".json").read_text())  # one sidecar: what it is and its checksum
    assert side["k"] == 16 and side["n_candidates"] == 40 and "integrity" in side and side["features"] == str(outs[0])
    stats[0].write_bytes(stats[0].read_bytes()[:-100])
    with pytest.raises(TarotInputError, match=f"{re.escape(str(stats[0]))}: truncated or changed"):
        stages.whiten_features(tmp_path / "candidates.npy", tmp_path / "targets.npy", *outs, stats=stats)
    nb.write_bytes(nb.read_bytes()[: nb.stat().st_size // 2])
    files = {**feature_files, "wfd_neighbors": str(nb)}
    with pytest.raises(TarotInputError, match=f"{re.escape(str(nb))}: truncated or changed"):
        stages.select_for_job(task, "tarot.r0.25", files, tmp_path / "s.csv", SETTINGS)
    assert not (tmp_path / "s.csv").exists()


def test_a_selection_cut_to_half_its_rows_is_refused_before_training(prepared, tmp_path):
    _, task, root = prepared
    csv = tmp_path / "sel.csv"
    Selection(indices=np.arange(10), method="random", n_candidates=40, budget=10).to_csv(
        csv, extra_meta={"split": "candidates", "ratio_label": "25%", "requested_ratio": 0.25}
    )
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:6]))  # the header and 5 of the 10 rows: still a valid CSV
    with pytest.raises(TarotInputError, match=f"{re.escape(str(csv))}: truncated or changed"):
        stages.train_downstream(task, root / "data", csv, 0, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_damaged_lds_files_are_named(tmp_path):
    masks, outputs = tmp_path / "masks.npy", tmp_path / "outputs.npy"
    lds_stages._save_array(masks, np.eye(4, 6, dtype=bool), {})
    lds_stages._save_array(outputs, np.ones((4, 3)), {})
    member = tmp_path / "member0.npz"
    save_npz(member, {"train": np.ones((6, 2)), "targets": np.ones((3, 2)), "weights": np.ones(6)})
    member.write_bytes(member.read_bytes()[:-10])
    with pytest.raises(TarotInputError, match=f"{re.escape(str(member))}: truncated or changed"):
        lds_stages.lds_evaluate(masks, outputs, [member], ["grad_dot"], [1], tmp_path / "lds.json")
    masks.write_bytes(b"")
    with pytest.raises(TarotInputError, match=f"masks: {re.escape(str(masks))}: truncated or changed"):
        lds_stages.read_lds_array(masks, "masks")
    assert not (tmp_path / "lds.json").exists()
