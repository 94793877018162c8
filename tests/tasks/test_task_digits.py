"""The digits task: registry, deterministic domain-shifted splits, settings checks, training,
the per-epoch training log; and, for every built-in kind, the registry's ``model_outputs`` flag."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tarot_select import TarotInputError
from tarot_select.gradients import AdamPreconditioner, per_sample_gradients, select_parameters
from tarot_select.tasks import Metric, ModelOutputs, ProxyCheckpoint, RunContext, get_task, task_kinds
from tarot_select.tasks.digits import SPEC
from tarot_select.tasks.digits.data import ALL_SOURCES, base_images
from tarot_select.tasks.digits.settings import DigitsSettings
from tarot_select.tasks.digits.task import DigitsTask

TINY = {
    "per_source": 30,
    "n_targets": 20,
    "n_evaluation": 60,
    "proxy": {"epochs": 2, "checkpoints": 2},
    "downstream": {"epochs": 3},
}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / "data.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest and does not stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[DigitsTask, Path]:
    out = tmp_path_factory.mktemp("digits_tiny")
    task = get_task("digits", TINY, seed=0)
    task.prepare(out)
    return task, out


@pytest.fixture(scope="module")
def tiny_data(tiny):
    task, out = tiny
    return task.load(out)


# --------------------------------------------------------------------------- registry


def test_registry_builds_digits_and_rejects_unknown_kind():
    task = get_task("digits", {}, seed=0)
    assert isinstance(task, DigitsTask) and task.metric == "accuracy" and task.higher_is_better
    assert SPEC.kind == task.name == "digits" and SPEC.settings is DigitsTask.SETTINGS is DigitsSettings
    assert task.metrics == (Metric("accuracy", True, "%", 100.0),)
    assert isinstance(task.options, DigitsSettings) and task.options.proxy.checkpoints == 3
    assert task.settings["sources"] == list(ALL_SOURCES) and task.settings["proxy"]["checkpoints"] == 3
    task.check()
    merged = get_task("digits", {"proxy": {"epochs": 5}}, seed=0).settings["proxy"]
    assert merged["epochs"] == 5 and merged["lr"] == 0.003 and merged["checkpoints"] == 3
    with pytest.raises(TarotInputError, match="unknown task kind"):
        get_task("no_such_task", {}, seed=0)


# --------------------------------------------------------------------------- data


def test_prepare_is_deterministic_and_seed_dependent(tiny, tmp_path):
    _, out = tiny
    first = _arrays(out)
    get_task("digits", TINY, seed=0).prepare(tmp_path / "same")
    again = _arrays(tmp_path / "same")
    assert first.keys() == again.keys()
    for key in first:
        assert first[key].dtype == again[key].dtype and first[key].tobytes() == again[key].tobytes(), key
    get_task("digits", TINY, seed=1).prepare(tmp_path / "other")
    other = _arrays(tmp_path / "other")
    assert not np.array_equal(first["candidates_x"], other["candidates_x"])
    assert not np.array_equal(first["targets_base"], other["targets_base"])


def test_sizes_dtypes_and_summary(tiny):
    task, out = tiny
    a = _arrays(out)
    n_src = len(ALL_SOURCES)
    assert a["candidates_x"].shape == (30 * n_src, 1, 8, 8) and a["candidates_x"].dtype == np.float32
    assert a["candidates_y"].dtype == np.int64
    assert a["targets_x"].shape == (20, 1, 8, 8) and a["evaluation_x"].shape == (60, 1, 8, 8)
    for split in ("candidates", "targets", "evaluation"):
        assert a[f"{split}_x"].min() >= 0.0 and a[f"{split}_x"].max() <= 1.0
    src, n = np.unique(a["candidates_source"], return_counts=True)
    assert set(src) == set(ALL_SOURCES) and (n == 30).all()
    for split, total in (("targets", 20), ("evaluation", 60)):
        styles, n = np.unique(a[f"{split}_style"], return_counts=True)
        assert list(styles) == ["noisy", "rotated"] and (n == total // 2).all()
    meta = json.loads((out / "data.json").read_text())
    assert meta["seed"] == 0 and meta["candidates_per_source"]["rotated"] == 30
    assert meta["targets_per_style"] == {"noisy": 10, "rotated": 10} and meta["config"]["per_source"] == 30

    data = task.load(out)
    assert len(data.candidates) == 30 * n_src and len(data.targets) == 20 and len(data.evaluation) == 60
    assert np.array_equal(data.sources, a["candidates_source"])
    assert np.array_equal(data.target_groups, a["targets_style"])
    x, y = data.targets[3]
    assert x.shape == (1, 8, 8) and int(y) == int(a["targets_y"][3])


def test_no_base_image_shared_between_candidates_and_heldout(tiny):
    a = _arrays(tiny[1])
    held = np.concatenate([a["targets_base"], a["evaluation_base"]])
    assert len(np.unique(held)) == len(held)
    assert not np.intersect1d(a["candidates_base"], held).size
    for source in ALL_SOURCES:  # without replacement within a source
        base = a["candidates_base"][a["candidates_source"] == source]
        assert len(np.unique(base)) == len(base)


def test_transforms_match_hand_computation(tiny):
    a = _arrays(tiny[1])
    images, labels = base_images()
    src, base = a["candidates_source"], a["candidates_base"]

    def rows(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = src == name
        return a["candidates_x"][m, 0], a["candidates_y"][m], base[m]

    x, y, b = rows("clean")
    assert np.array_equal(x, images[b]) and np.array_equal(y, labels[b])
    assert np.allclose(x, _load_raw()[b] / 16.0)
    x, y, b = rows("inverted")
    assert np.allclose(x, 1.0 - _load_raw()[b] / 16.0, atol=1e-6) and np.array_equal(y, labels[b])
    x, _, b = rows("blurred")
    assert np.allclose(x, ndimage.gaussian_filter(images[b].astype(np.float64), sigma=(0, 0.8, 0.8)), atol=1e-6)
    x, y, b = rows("label_noise")
    assert np.array_equal(x, images[b]) and (y != labels[b]).all() and ((y >= 0) & (y < 10)).all()
    x, _, b = rows("noisy")
    assert 0.15 < np.std(x - images[b]) < 0.35  # σ = 0.3, shrunk a little by clipping
    x, _, b = rows("shifted")  # integer shift, zero fill: every pixel value is an original one or 0
    assert all(np.isin(xi, np.append(images[bi], 0.0)).all() for xi, bi in zip(x, b))
    assert not any(np.array_equal(xi, images[bi]) for xi, bi in zip(x, b))
    x, _, b = rows("rotated")  # a rotation, not the identity; mass is roughly kept away from the border
    assert np.abs(x - images[b]).mean() > 0.05
    # target labels are always the true labels, whatever the style
    assert np.array_equal(a["targets_y"], labels[a["targets_base"]])
    assert np.array_equal(a["evaluation_y"], labels[a["evaluation_base"]])


def _load_raw() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sources": ["clean", "sepia"]}, r"digits\.sources\[1\]: must be one of .*got 'sepia'"),
        ({"sources": ["clean", "noisy"], "target_styles": ["rotated"]}, "not among the sources"),
        ({"target_styles": ["rotated", "label_noise"]}, "cannot be a target style"),
        ({"target_styles": ["warped"]}, r"digits\.target_styles\[0\]: must be one of"),
        ({"n_targets": 1000, "n_evaluation": 700}, "held-out"),
        ({"per_source": 1500}, "held-out"),
        ({"per_source": 0}, r"digits\.per_source: must be >= 1"),
        ({"per_source": -3}, r"digits\.per_source: must be >= 1"),
        ({"n_targets": 1}, "fewer than the 2 target styles"),
        ({"proxy": {"checkpoints": 9}}, r"digits\.proxy\.checkpoints: 9 exceeds epochs=8"),
        ({"proxy": {"lr": 0.0}}, r"digits\.proxy\.lr: must be > 0"),
        ({"downstream": {"batch_size": 2.5}}, r"digits\.downstream\.batch_size: must be an integer"),
        ({"downstream": 3}, "must be a mapping"),
        ({"sources": "clean"}, "must be a list"),
        ({"sources": []}, "must not be empty"),
    ],
)
def test_settings_reject_bad_config(config, message):
    with pytest.raises(TarotInputError, match=message):
        get_task("digits", config, seed=0)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"per_sorce": 30}, r"^digits\.per_sorce: unknown key \(did you mean 'per_source'\?\)"),
        ({"proxy": {"epoch": 3}}, r"^digits\.proxy\.epoch: unknown key \(did you mean 'epochs'\?\)"),
    ],
)
def test_unknown_key_names_the_key_and_suggests_one(config, message):
    with pytest.raises(TarotInputError, match=message):
        get_task("digits", config, seed=0)


def test_bad_settings_fail_before_prepare(tmp_path):
    with pytest.raises(TarotInputError):
        get_task("digits", {"per_source": 0}, seed=0).prepare(tmp_path)
    assert not (tmp_path / "data.npz").exists()


# --------------------------------------------------------------------------- training


def test_train_proxy_writes_adam_checkpoints(tiny, tiny_data, tmp_path):
    task, _ = tiny
    ckpts = task.train_proxy(tiny_data, tmp_path)
    assert [c.epoch for c in ckpts] == [1, 2] and all(isinstance(c, ProxyCheckpoint) for c in ckpts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1.pt", "ckpt_2.pt"]
    assert ckpts[0].lr == pytest.approx(0.003) and 0 < ckpts[1].lr < ckpts[0].lr
    model = task.proxy_model()
    for c in ckpts:
        saved = torch.load(c.path, weights_only=True)
        model.load_state_dict(saved["model"])
        state = saved["optimizer"]["state"]
        assert len(state) == len(list(model.parameters()))
        assert all("exp_avg" in s and "exp_avg_sq" in s for s in state.values())
        names = select_parameters(model, "fc*")  # what LESS reads back from a checkpoint
        pre = AdamPreconditioner.from_optimizer_state(saved["optimizer"], model, names)
        assert set(pre.exp_avg) == set(names) and pre.exp_avg["fc2.weight"].shape == (10, 64)
    a, b = (torch.load(c.path, weights_only=True)["model"] for c in ckpts)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_loss_fn_gradients_vmap_equal_loop(tiny, tiny_data):
    task, _ = tiny
    model = task.proxy_model().eval()
    batch = next(iter(task.gradient_batches(tiny_data.candidates, batch_size=6)))
    names = select_parameters(model)
    fast = per_sample_gradients(model, task.loss_fn, batch, names, mode="vmap")
    slow = per_sample_gradients(model, task.loss_fn, batch, names, mode="loop")
    for name in names:
        assert fast[name].shape[0] == 6
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-6)
    x, y = batch
    with torch.no_grad():
        loss = task.loss_fn(model, (x[:1], y[:1]))
        expected = torch.nn.functional.cross_entropy(model(x[:1]), y[:1])
    assert loss.ndim == 0 and float(loss) == pytest.approx(float(expected))


def test_train_downstream_evaluate_and_determinism(tiny, tiny_data):
    task, _ = tiny
    idx = np.arange(50)
    state = task.train_downstream(tiny_data, "candidates", idx, None, seed=3)
    metrics = task.evaluate(tiny_data, state)
    assert set(metrics) == {"accuracy", "accuracy_noisy", "accuracy_rotated"}
    # each accuracy by hand: the trained model's predictions on that style's evaluation rows
    model = task.downstream_model()
    model.load_state_dict(state)
    model.eval()
    x, y = tiny_data.evaluation.tensors
    with torch.no_grad():
        correct = (model(x.float()).argmax(1) == y.long()).numpy()
    styles = np.asarray(tiny_data.evaluation.styles)
    assert metrics["accuracy"] == pytest.approx(correct.mean())
    for style in ("noisy", "rotated"):
        assert (styles == style).any()
        assert metrics[f"accuracy_{style}"] == pytest.approx(correct[styles == style].mean())
    same = task.train_downstream(tiny_data, "candidates", idx, None, seed=3)
    assert all(torch.equal(state[k], same[k]) for k in state)
    other = task.train_downstream(tiny_data, "candidates", idx, None, seed=4)
    assert any(not torch.equal(state[k], other[k]) for k in state)


def test_weights_change_training(tiny, tiny_data):
    task, _ = tiny
    idx = np.arange(40)
    plain = task.train_downstream(tiny_data, "candidates", idx, None, seed=0)
    counts = np.ones(40, dtype=np.int64)
    counts[0] = 2
    repeated = task.train_downstream(tiny_data, "candidates", idx, counts, seed=0)
    assert any(not torch.equal(plain[k], repeated[k]) for k in plain)
    ones = task.train_downstream(tiny_data, "candidates", idx, np.ones(40, dtype=np.int64), seed=0)
    assert all(torch.equal(plain[k], ones[k]) for k in plain)  # unit counts = uniform
    masses = np.linspace(0.0, 1.0, 40)
    a = task.train_downstream(tiny_data, "targets", np.arange(20), masses[:20], seed=0)
    b = task.train_downstream(tiny_data, "targets", np.arange(20), masses[:20], seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_downstream_rejects_bad_input(tiny, tiny_data):
    task, _ = tiny
    with pytest.raises(TarotInputError, match="non-empty"):
        task.train_downstream(tiny_data, "candidates", np.array([], dtype=np.int64), None, seed=0)
    with pytest.raises(TarotInputError, match="lie in"):
        task.train_downstream(tiny_data, "targets", np.array([0, 20]), None, seed=0)
    with pytest.raises(TarotInputError, match="unknown split"):
        task.train_downstream(tiny_data, "train", np.array([0]), None, seed=0)
    with pytest.raises(TarotInputError, match="shape"):
        task.train_downstream(tiny_data, "targets", np.array([0, 1]), np.array([1]), seed=0)
    with pytest.raises(TarotInputError, match="non-negative"):
        task.train_downstream(tiny_data, "targets", np.array([0, 1]), np.array([1, -1]), seed=0)
    with pytest.raises(TarotInputError, match="does not fit"):
        task.evaluate(tiny_data, {"conv1.weight": torch.zeros(1)})


def test_downstream_learns_clean_digits(tmp_path):
    config = {
        "sources": ["clean"],
        "target_styles": ["clean"],
        "per_source": 300,
        "n_targets": 20,
        "n_evaluation": 200,
        "downstream": {"epochs": 15},
    }
    task = get_task("digits", config, seed=0)
    task.prepare(tmp_path)
    data = task.load(tmp_path)
    state = task.train_downstream(data, "candidates", np.arange(len(data.candidates)), None, seed=0)
    metrics = task.evaluate(data, state)
    assert metrics["accuracy"] > 0.8 and metrics["accuracy"] == metrics["accuracy_clean"]


def test_local_images_file_replaces_the_bundled_copy(tmp_path):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # a "larger" local set: the bundled images twice, as the full UCI optdigits would be
    np.savez(tmp_path / "optdigits.npz", images=np.concatenate([bunch.images] * 2), labels=np.tile(bunch.target, 2))
    cfg = {"images": str(tmp_path / "optdigits.npz"), "per_source": 500, "n_targets": 400, "n_evaluation": 1600}
    task = get_task("digits", cfg, seed=0)
    task.check()  # 2,000 held out + 500 per source only fits the 3,594-image file
    with pytest.raises(TarotInputError, match="held-out images leave"):
        get_task("digits", {k: v for k, v in cfg.items() if k != "images"}, seed=0).check()
    task.prepare(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "data.json").read_text())
    assert meta["n_base_images"] == 3594


def test_missing_images_file_is_reported(tmp_path):
    with pytest.raises(TarotInputError, match="images: file not found"):
        get_task("digits", {"images": str(tmp_path / "nope.npz")}, seed=0).check()
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(TarotInputError, match="cannot read"):
        get_task("digits", {"images": str(tmp_path / "bad.npz")}, seed=0).check()


# --------------------------------------------------------------------------- training log

_LINE = re.compile(
    r"^digits (?P<stage>proxy|downstream) epoch (?P<epoch>\d+)/(?P<epochs>\d+): loss \d+\.\d{4}, lr [0-9.e-]+"
    r"(?P<metric>, accuracy [0-9.]+ %)?, \d+\.\d{2} s$"
)


def _epoch_lines(caplog: pytest.LogCaptureFixture, stage: str) -> list[re.Match[str]]:
    found = [_LINE.match(r.getMessage()) for r in caplog.records if r.levelno == logging.INFO]
    return [m for m in found if m is not None and m["stage"] == stage]


def test_downstream_training_logs_one_line_per_epoch(tiny, tiny_data, caplog):
    task, _ = tiny
    caplog.set_level(logging.INFO, logger="tarot_select.tasks.digits.task")
    task.train_downstream(tiny_data, "candidates", np.arange(50), None, seed=3)
    lines = _epoch_lines(caplog, "downstream")
    assert [(int(m["epoch"]), int(m["epochs"])) for m in lines] == [(1, 3), (2, 3), (3, 3)]
    assert all(m["metric"] for m in lines)  # the evaluation accuracy, every epoch


def test_proxy_training_logs_one_line_per_epoch(tiny, tiny_data, caplog, tmp_path):
    task, _ = tiny
    caplog.set_level(logging.INFO, logger="tarot_select.tasks.digits.task")
    task.train_proxy(tiny_data, tmp_path)
    lines = _epoch_lines(caplog, "proxy")
    assert [int(m["epoch"]) for m in lines] == [1, 2] and not any(m["metric"] for m in lines)


def test_per_epoch_evaluation_leaves_training_unchanged(tiny, tiny_data, caplog):
    task, _ = tiny
    idx, masses = np.arange(40), np.linspace(0.1, 1.0, 40)
    caplog.set_level(logging.WARNING, logger="tarot_select.tasks.digits.task")
    quiet = task.train_downstream(tiny_data, "candidates", idx, masses, seed=2)
    assert not _epoch_lines(caplog, "downstream")
    caplog.set_level(logging.INFO, logger="tarot_select.tasks.digits.task")
    logged = task.train_downstream(tiny_data, "candidates", idx, masses, seed=2)
    assert len(_epoch_lines(caplog, "downstream")) == 3
    assert all(torch.equal(quiet[k], logged[k]) for k in quiet)


def test_context_progress_shows_a_bar(tiny_data, capsys):
    task = get_task("digits", TINY, seed=0, context=RunContext(progress=True))
    task.train_downstream(tiny_data, "targets", np.arange(20), None, seed=0, progress=False)
    assert "digits downstream" in capsys.readouterr().err  # the context decides, not the argument


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_and_evaluates_on_the_context_device(tiny_data, tmp_path):
    task = get_task("digits", TINY, seed=0, context=RunContext(device="cuda"))
    state = task.train_downstream(tiny_data, "candidates", np.arange(50), None, seed=3)
    assert all(v.device.type == "cpu" for v in state.values())
    assert 0.0 <= task.evaluate(tiny_data, state)["accuracy"] <= 1.0
    saved = torch.load(task.train_proxy(tiny_data, tmp_path)[-1].path, weights_only=True)
    moments = [t for st in saved["optimizer"]["state"].values() for t in st.values() if isinstance(t, torch.Tensor)]
    assert moments and all(t.device.type == "cpu" for t in [*saved["model"].values(), *moments])


# --------------------------------------------------------------------------- every built-in kind

#: Keys without a default, per kind (the rest of a block may be empty).
_REQUIRED = {"cifar10_resnet9": {"root": "/unused"}}


def test_spec_model_outputs_matches_the_task_class():
    builtin = {k: s for k, s in task_kinds().items() if s.task.startswith("tarot_select.tasks.")}
    assert {"digits", "mnist_mlp", "cifar10_resnet9"} <= set(builtin)
    for kind, spec in builtin.items():
        task = get_task(kind, _REQUIRED.get(kind, {}), seed=0, check=False)
        assert type(task).SETTINGS is spec.settings and task.name == kind
        assert spec.model_outputs == isinstance(task, ModelOutputs), kind


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_a_damaged_data_file_is_named_where_it_is_read(tiny, tmp_path, damage):
    task, out = tiny
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    path = copy / "data.npz"
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # the size stays: only the checksum recorded in data.json can tell
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TarotInputError, match=f"{re.escape(str(path))}: truncated or changed since it was written"):
        task.load(copy)
    side = json.loads((copy / "data.json").read_text())  # the summary is the arrays' sidecar
    assert side["integrity"]["bytes"] == (out / "data.npz").stat().st_size and side["counts"]["targets"] == 20
