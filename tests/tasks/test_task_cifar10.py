"""The cifar10_resnet9 task on a tiny fake CIFAR-10 folder in the exact pickle format.

Checks: the root checks, splits and manifest, reading without download (torchvision absent,
a stand-in torchvision, and the real one when installed), real learning of the synthetic
classes, seeding, the proxy checkpoints, and per-sample gradients with batch norm in eval
mode (vmap equals a loop of single-sample autograd).
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tarot_select import TarotInputError
from tarot_select.gradients import AdamPreconditioner, per_sample_gradients, select_parameters
from tarot_select.outputs import margin
from tarot_select.tasks import Metric, RunContext, TaskData, get_task
from tarot_select.tasks.cifar10 import SPEC
from tarot_select.tasks.cifar10 import data as cifar_data
from tarot_select.tasks.cifar10 import task as cifar_task
from tarot_select.tasks.cifar10.data import load_cifar10
from tarot_select.tasks.cifar10.settings import Cifar10Settings
from tarot_select.tasks.cifar10.task import Cifar10Task, ResNet9, count_parameters

PER_BATCH = 40  # images per training batch file (5 files) and in the test batch
LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
# Small, fast training that learns the synthetic classes (16 epochs: with 8, one or two of
# the ten classes were sometimes still confused, depending on the machine's rounding).
SMALL = {
    "width": 8,
    "downstream": {"epochs": 16, "lr": 0.2, "batch_size": 32, "lr_peak_epoch": 2},
    "proxy": {"epochs": 2, "lr": 0.003, "batch_size": 64, "lr_peak_epoch": 0, "checkpoints": 2},
}


def fake_images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """``(n, 3072)`` uint8 images: a class colour, a class stripe pattern, Gaussian noise."""
    palette = np.random.default_rng(99).integers(30, 226, size=(10, 3)).astype(np.float64)
    yy, xx = np.mgrid[0:32, 0:32]
    out = np.empty((len(labels), 3, 32, 32))
    for i, c in enumerate(labels):
        angle = np.pi * c / 10
        stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (0.4 + 0.05 * c))
        out[i] = palette[c][:, None, None] + 30.0 * stripes[None] + rng.normal(0.0, 25.0, size=(3, 32, 32))
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_fake_cifar(root: Path, seed: int = 0, str_keys: bool = False) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with 5 training batches and a test batch of PER_BATCH images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def key(name: str) -> str | bytes:
        return name if str_keys else name.encode()

    xs, ys = [], []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        labels = rng.permutation(np.arange(PER_BATCH) % 10)
        data = fake_images(rng, labels)
        entry = {
            key("batch_label"): f"batch {i}".encode(),
            key("labels"): [int(v) for v in labels],
            key("data"): data,
            key("filenames"): [f"img_{i}_{j}.png".encode() for j in range(PER_BATCH)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    meta = {key("label_names"): LABEL_NAMES, key("num_cases_per_batch"): PER_BATCH, key("num_vis"): 3072}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return {
        "x_train": np.concatenate(xs[:5]),
        "y_train": np.concatenate(ys[:5]),
        "x_test": xs[5],
        "y_test": ys[5],
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread_no_torchvision():
    """One torch thread; ``import torchvision`` fails, so the pickles are read directly
    (tests of the torchvision path install their own module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torchvision", None)
        mp.setitem(sys.modules, "torchvision.datasets", None)
        yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_cache():
    cifar_data._load_cached.cache_clear()
    yield
    cifar_data._load_cached.cache_clear()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_fake_cifar(root)


@pytest.fixture(scope="module")
def prepared(fake, tmp_path_factory) -> tuple[Cifar10Task, Path]:
    root, _ = fake
    out = tmp_path_factory.mktemp("prepared")
    task = get_task("cifar10_resnet9", {"root": str(root), **SMALL}, seed=0)
    task.prepare(out)
    return task, out


@pytest.fixture(scope="module")
def data(prepared):
    task, out = prepared
    return task.load(out)


@pytest.fixture(scope="module")
def trained(prepared, data):
    task, _ = prepared
    return task.train_downstream(data, "candidates", np.arange(len(data.candidates)), None, seed=0)


# --------------------------------------------------------------------------- root checks


def test_check_rejects_missing_root_and_missing_batch_files(fake, tmp_path):
    root, _ = fake
    with pytest.raises(TarotInputError, match=r"^cifar10_resnet9\.root: required key missing"):
        get_task("cifar10_resnet9", {}, seed=0)
    with pytest.raises(TarotInputError, match="required key missing"):  # also when only parsing
        get_task("cifar10_resnet9", {}, seed=0, check=False)
    absent = tmp_path / "no_such_cifar"
    with pytest.raises(TarotInputError, match=re.escape(f"folder not found: {absent}")):
        get_task("cifar10_resnet9", {"root": str(absent)})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        TarotInputError, match="empty/cifar-10-batches-py lacks .*data_batch_1.*test_batch.*batches.meta"
    ):
        get_task("cifar10_resnet9", {"root": str(empty)})
    # the batch folder itself instead of its parent: the message says so
    with pytest.raises(TarotInputError, match="not that folder itself"):
        get_task("cifar10_resnet9", {"root": str(root / "cifar-10-batches-py")})
    partial = tmp_path / "partial"
    write_fake_cifar(partial)
    (partial / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(TarotInputError, match="lacks the CIFAR-10 batch file\\(s\\) data_batch_4$"):
        get_task("cifar10_resnet9", {"root": str(partial)})
    with pytest.raises(TarotInputError, match="data_batch_4"):
        load_cifar10(str(partial))
    get_task("cifar10_resnet9", {"root": str(root)}).check()  # complete folder: fine
    # stage jobs that only parse their part of the block do not look at the folder
    assert get_task("cifar10_resnet9", {"root": str(absent)}, check=False).settings["root"] == str(absent)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"arch": "resnet18"}, r"cifar10_resnet9\.arch: must be one of 'trak', 'myrtle'"),
        ({"width": 0}, r"cifar10_resnet9\.width: must be >= 1"),
        ({"n_train": 0}, r"cifar10_resnet9\.n_train: must be >= 1"),
        ({"n_targets": 2.5}, r"cifar10_resnet9\.n_targets: must be an integer"),
        ({"n_evaluation": -1}, r"cifar10_resnet9\.n_evaluation: must be >= 0"),
        ({"augment": "yes"}, r"cifar10_resnet9\.augment: must be true or false"),
        ({"downstream": {"lr": 0}}, r"cifar10_resnet9\.downstream\.lr: must be > 0"),
        ({"downstream": {"momentum": 1.0}}, r"cifar10_resnet9\.downstream\.momentum: must be < 1"),
        ({"downstream": {"weight_decay": -1e-4}}, r"cifar10_resnet9\.downstream\.weight_decay: must be >= 0"),
        ({"downstream": {"epochs": 4, "lr_peak_epoch": 4}}, r"cifar10_resnet9\.downstream\.lr_peak_epoch: 4\.0 must"),
        ({"downstream": {"eval_every": -1}}, r"cifar10_resnet9\.downstream\.eval_every: must be >= 0"),
        ({"proxy": {"optimizer": "rmsprop"}}, r"cifar10_resnet9\.proxy\.optimizer: must be one of 'adam', 'sgd'"),
        ({"proxy": {"epochs": 2, "lr_peak_epoch": 1, "checkpoints": 3}}, r"proxy\.checkpoints: 3 exceeds epochs=2"),
        ({"proxy": {"momentum": float("nan")}}, r"cifar10_resnet9\.proxy\.momentum: must be a finite number"),
    ],
)
def test_settings_reject_bad_config(fake, config, match):
    root, _ = fake
    with pytest.raises(TarotInputError, match=match):
        get_task("cifar10_resnet9", {"root": str(root), **config}, seed=0)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"augmnet": True}, r"^cifar10_resnet9\.augmnet: unknown key \(did you mean 'augment'\?\)"),
        (
            {"proxy": {"optimiser": "sgd"}},
            r"^cifar10_resnet9\.proxy\.optimiser: unknown key \(did you mean 'optimizer'",
        ),
    ],
)
def test_unknown_key_names_the_key_and_suggests_one(fake, config, match):
    root, _ = fake
    with pytest.raises(TarotInputError, match=match):
        get_task("cifar10_resnet9", {"root": str(root), **config}, seed=0)


def test_settings_defaults_and_spec(fake):
    root, _ = fake
    task = get_task("cifar10_resnet9", {"root": str(root), "device": "cpu"}, seed=0)
    assert SPEC.kind == task.name == "cifar10_resnet9" and SPEC.settings is Cifar10Task.SETTINGS is Cifar10Settings
    assert task.metrics == (Metric("accuracy", True, "%", 100.0), Metric("mean_margin", True, "", 1.0))
    s = task.settings
    data_keys = {k: s[k] for k in ("n_train", "n_targets", "n_evaluation", "arch", "width", "augment")}
    assert data_keys == {
        "n_train": None,
        "n_targets": None,
        "n_evaluation": 0,
        "arch": "trak",
        "width": 64,
        "augment": False,
    }
    assert s["device"] == "cpu"  # the common per-task device key, resolved into the context by the stage
    assert s["proxy"] == {
        "epochs": 24,
        "lr": 0.001,
        "batch_size": 512,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "lr_peak_epoch": 5.0,
        "optimizer": "adam",
        "checkpoints": 3,
    }
    assert s["downstream"] == {
        "epochs": 24,
        "lr": 0.4,
        "batch_size": 512,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "lr_peak_epoch": 5.0,
        "eval_every": 0,
    }


# --------------------------------------------------------------------------- reading and splits


def test_splits_sizes_dtypes_labels_and_manifest(fake, prepared, data):
    root, arrays = fake
    task, out = prepared
    assert isinstance(task, Cifar10Task) and task.metric == "accuracy" and task.higher_is_better
    assert len(data.candidates) == 5 * PER_BATCH and len(data.targets) == len(data.evaluation) == PER_BATCH
    x, y = data.candidates.tensors
    assert x.shape == (5 * PER_BATCH, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), arrays["x_train"])  # file order, CHW layout
    np.testing.assert_array_equal(y.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(data.targets.tensors[0].numpy(), arrays["x_test"])
    np.testing.assert_array_equal(data.targets.tensors[1].numpy(), arrays["y_test"])
    assert data.evaluation is data.targets  # n_evaluation = 0: evaluation = targets
    assert data.sources.shape == (5 * PER_BATCH,)
    # the manifest copies no image
    assert sorted(p.name for p in out.iterdir()) == ["data.json", "indices.json", "indices.npz"]
    assert sum(p.stat().st_size for p in out.iterdir()) < 20_000
    with np.load(out / "indices.npz") as z:
        np.testing.assert_array_equal(z["candidates_index"], np.arange(5 * PER_BATCH))
    # the same images as the red / green / blue planes of the pickle rows
    with open(root / "cifar-10-batches-py" / "data_batch_2", "rb") as fh:
        row = pickle.load(fh, encoding="bytes")[b"data"][3]
    np.testing.assert_array_equal(x[PER_BATCH + 3, 1].numpy().ravel(), row[1024:2048])


def test_smaller_and_disjoint_splits(fake, tmp_path):
    root, arrays = fake
    cfg = {"root": str(root), "n_train": 120, "n_targets": 25, "n_evaluation": 15}
    task = get_task("cifar10_resnet9", cfg, seed=3)
    task.prepare(tmp_path / "p")
    d = task.load(tmp_path / "p")
    assert [len(d.candidates), len(d.targets), len(d.evaluation)] == [120, 25, 15]
    np.testing.assert_array_equal(d.targets.tensors[1].numpy(), arrays["y_test"][:25])
    np.testing.assert_array_equal(d.evaluation.tensors[0].numpy(), arrays["x_test"][25:40])
    # n_targets None: all test images not used for evaluation
    d2_task = get_task("cifar10_resnet9", {"root": str(root), "n_evaluation": 10}, seed=0)
    d2_task.prepare(tmp_path / "q")
    d2 = d2_task.load(tmp_path / "q")
    assert [len(d2.targets), len(d2.evaluation)] == [30, 10]
    with pytest.raises(TarotInputError, match="n_train=500 exceeds the 200 training images"):
        get_task("cifar10_resnet9", {"root": str(root), "n_train": 500}).prepare(tmp_path / "r")
    with pytest.raises(TarotInputError, match="at most the 40 test images"):
        get_task("cifar10_resnet9", {"root": str(root), "n_targets": 30, "n_evaluation": 20}).prepare(tmp_path / "s")


@pytest.mark.parametrize("str_keys", [False, True])
def test_pickles_read_without_network(tmp_path, monkeypatch, str_keys):
    arrays = write_fake_cifar(tmp_path, seed=5, str_keys=str_keys)

    def no_network(*args, **kwargs):
        raise AssertionError("the CIFAR-10 reader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    x_tr, y_tr, x_te, y_te = load_cifar10(str(tmp_path))
    np.testing.assert_array_equal(x_tr, arrays["x_train"])
    np.testing.assert_array_equal(x_te, arrays["x_test"])
    np.testing.assert_array_equal(y_te, arrays["y_test"])
    assert x_tr.dtype == np.uint8 and y_tr.dtype == np.int64 and not x_tr.flags.writeable


def test_uses_torchvision_with_download_false(tmp_path, monkeypatch):
    arrays = write_fake_cifar(tmp_path, seed=6)
    calls = []

    class StandInCIFAR10:
        """Records its arguments; reads the pickles like torchvision (HWC images, list labels)."""

        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            calls.append({"root": root, "train": train, "download": download})
            names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
            parts = [cifar_data._read_batch(Path(root) / "cifar-10-batches-py" / n) for n in names]
            self.data = np.concatenate([p[0] for p in parts]).transpose(0, 2, 3, 1)
            self.targets = np.concatenate([p[1] for p in parts]).tolist()

    package = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = StandInCIFAR10
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    x_tr, y_tr, x_te, _ = load_cifar10(str(tmp_path))
    assert calls == [
        {"root": str(tmp_path), "train": True, "download": False},
        {"root": str(tmp_path), "train": False, "download": False},
    ]
    np.testing.assert_array_equal(x_tr, arrays["x_train"])
    np.testing.assert_array_equal(x_te, arrays["x_test"])
    np.testing.assert_array_equal(y_tr, arrays["y_train"])


def test_real_torchvision_refuses_fake_files_without_downloading(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision")
    monkeypatch.delitem(sys.modules, "torchvision.datasets")
    pytest.importorskip("torchvision")
    write_fake_cifar(tmp_path)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network access"))
    with pytest.raises(TarotInputError, match="md5"):  # the fake files fail torchvision's md5 check
        load_cifar10(str(tmp_path))


class _Payload:
    """Pickles as ``fn(*args)``: what a crafted batch file holds."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict[str, tuple[_Payload, str]]:
    """Payloads that create ``marker`` when unpickled, and the name of the global each pickle names."""
    import os
    import subprocess

    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (_Payload(os.system, f"touch '{marker}'"), "system"),
        "builtins.exec": (_Payload(exec, code), "exec"),
        # protocol 2 writes Python 2 names: subprocess.check_call is pickled as commands.check_call
        "subprocess.check_call": (_Payload(subprocess.check_call, ["touch", str(marker)]), "check_call"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.check_call"])
@pytest.mark.parametrize("where", ["the whole file", "a value of the batch dict"])
def test_a_crafted_batch_file_is_refused_and_its_payload_never_runs(tmp_path, payload, where):
    write_fake_cifar(tmp_path)
    marker = tmp_path / "PAYLOAD_RAN"
    obj, global_name = _payloads(marker)[payload]
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    if where == "the whole file":
        crafted = pickle.dumps(obj, protocol=2)
    else:
        entry = pickle.loads(batch.read_bytes(), encoding="bytes")
        crafted = pickle.dumps({**entry, b"labels": obj}, protocol=2)
    batch.write_bytes(crafted)
    with pytest.raises(
        TarotInputError, match=rf"{re.escape(str(batch))}: refused to unpickle: it names [\w.]+\.{global_name}, "
    ):
        load_cifar10(str(tmp_path))
    assert not marker.exists()
    # the crafted bytes are live: an unrestricted pickle.load runs them
    pickle.loads(crafted)
    assert marker.exists()


@pytest.mark.parametrize("numpy_path", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_real_format_batches_load_under_either_numpy_module_path(tmp_path, numpy_path):
    """numpy 1 pickles name ``numpy.core.multiarray._reconstruct``, numpy 2 ``numpy._core...``."""
    arrays = write_fake_cifar(tmp_path, seed=7)
    for path in (tmp_path / "cifar-10-batches-py").glob("*_batch*"):
        raw = path.read_bytes()
        for old in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
            raw = raw.replace(old, numpy_path.encode())
        assert numpy_path.encode() + b"\n_reconstruct" in raw
        path.write_bytes(raw)
    x_tr, y_tr, x_te, y_te = load_cifar10(str(tmp_path))
    np.testing.assert_array_equal(x_tr, arrays["x_train"])
    np.testing.assert_array_equal(y_tr, arrays["y_train"])
    np.testing.assert_array_equal(x_te, arrays["x_test"])
    np.testing.assert_array_equal(y_te, arrays["y_test"])


def test_the_restricted_unpickler_refuses_what_a_batch_never_needs(tmp_path):
    from tarot_select.tasks._safe_pickle import NUMPY_ARRAY_GLOBALS, safe_load

    ok = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2], b"s": {1}, b"n": np.int64(3)}
    for protocol in range(6):
        got = safe_load(pickle.dumps(ok, protocol=protocol), NUMPY_ARRAY_GLOBALS, origin="b")
        np.testing.assert_array_equal(got[b"data"], ok[b"data"])
        assert got[b"labels"] == [1, 2] and got[b"s"] == {1} and got[b"n"] == 3
    with pytest.raises(
        TarotInputError, match=r"^b: refused to unpickle: it names numpy\._core\.multiarray\._reconstruct, "
    ):
        safe_load(pickle.dumps(ok, protocol=2), {("_codecs", "encode")}, origin="b")
    with pytest.raises(TarotInputError, match="^b: not a readable pickle .*latin-1"):
        safe_load(b"c_codecs\nencode\n(X\x01\x00\x00\x00xX\x0a\x00\x00\x00zlib_codectR.", origin="b")
    with pytest.raises(TarotInputError, match="^b: not a readable pickle"):
        safe_load(pickle.dumps(ok, protocol=2)[:-7], origin="b")


def test_a_damaged_index_file_is_named(fake, prepared, tmp_path):
    task, out = prepared
    copy = tmp_path / "p"
    shutil.copytree(out, copy)
    index = copy / "indices.npz"
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(TarotInputError, match=f"{re.escape(str(index))}: truncated or changed"):
        task.load(copy)


def test_load_notices_changed_root(tmp_path):
    root = tmp_path / "copy"
    write_fake_cifar(root, seed=0)
    task = get_task("cifar10_resnet9", {"root": str(root)}, seed=0)
    task.prepare(tmp_path / "p")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    write_fake_cifar(tmp_path / "other", seed=1)
    (tmp_path / "other" / "cifar-10-batches-py" / "test_batch").rename(root / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(TarotInputError, match="changed since prepare"):
        task.load(tmp_path / "p")


# --------------------------------------------------------------------------- model


def test_default_model_size_and_shapes():
    trak, myrtle = ResNet9(), ResNet9(arch="myrtle")
    assert 2_000_000 <= count_parameters(trak) <= 7_000_000
    assert 2_000_000 <= count_parameters(myrtle) <= 7_000_000
    assert count_parameters(trak) == 2_274_880 and count_parameters(myrtle) == 6_573_120
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert trak.eval()(x).shape == myrtle.eval()(x).shape == (2, 10)
    assert "pixel_mean" not in trak.state_dict()  # normalisation constants are not weights
    task = get_task("cifar10_resnet9", {"root": "/unused", "width": 4, "arch": "myrtle"}, check=False)
    assert isinstance(task.downstream_model(), ResNet9) and task.downstream_model().arch == "myrtle"


def test_augment_crops_and_flips():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    rng = np.random.default_rng(0)
    out = cifar_task._augment(x, rng)
    assert out.shape == x.shape
    # replay the draws: every output is a shifted (and maybe flipped) window of the zero-padded input
    rng = np.random.default_rng(0)
    oy, ox, flip = rng.integers(0, 9, 2), rng.integers(0, 9, 2), rng.random(2) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        want = padded[i, :, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        torch.testing.assert_close(out[i], want.flip(2) if flip[i] else want)


# --------------------------------------------------------------------------- training and hooks


def test_short_training_learns_synthetic_classes(prepared, data, trained):
    task, _ = prepared
    metrics = task.evaluate(data, trained)
    assert set(metrics) == {"accuracy", "mean_margin"} and metrics["mean_margin"] > 0.0
    # 400 fresh images of the same classes (40 per class): chance is 0.1 (about 40 ± 6 right),
    # a model that has not learned one of the classes stays at or below about 0.9
    labels = np.arange(400) % 10
    fresh = torch.utils.data.TensorDataset(
        torch.from_numpy(fake_images(np.random.default_rng(1234), labels).reshape(-1, 3, 32, 32)),
        torch.from_numpy(labels.astype(np.int64)),
    )
    held_out = task.evaluate(TaskData(data.candidates, data.targets, fresh, data.sources), trained)
    assert held_out["accuracy"] > 0.9, held_out
    assert any(k.endswith("running_mean") for k in trained)  # batch-norm statistics are part of the state


def test_training_is_seeded_and_honours_weights(prepared, data):
    task = get_task(
        "cifar10_resnet9",
        {**prepared[0].config, "downstream": {"epochs": 1, "batch_size": 64, "lr_peak_epoch": 0}},
        seed=0,
    )
    idx = np.arange(0, 200, 2)
    a = task.train_downstream(data, "candidates", idx, None, seed=1)
    b = task.train_downstream(data, "candidates", idx, None, seed=1)
    c = task.train_downstream(data, "candidates", idx, None, seed=2)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["head.weight"], c["head.weight"])
    counts = task.train_downstream(data, "candidates", idx, np.full(len(idx), 2), seed=1)
    masses = task.train_downstream(data, "candidates", idx, np.linspace(0.1, 1.0, len(idx)), seed=1)
    assert not torch.equal(counts["head.weight"], a["head.weight"])
    assert not torch.equal(masses["head.weight"], a["head.weight"])
    aug = get_task("cifar10_resnet9", {**task.config, "augment": True}, seed=0)
    augmented = aug.train_downstream(data, "candidates", idx, None, seed=1)
    assert not torch.equal(augmented["head.weight"], a["head.weight"])


def test_proxy_checkpoints_carry_adam_state(prepared, data, tmp_path):
    task, _ = prepared
    ckpts = task.train_proxy(data, tmp_path)
    assert [c.epoch for c in ckpts] == [1, 2] and all(Path(c.path).is_file() for c in ckpts)
    assert ckpts[0].lr > ckpts[1].lr > 0  # lr_peak_epoch 0: linear decay from the peak
    blob = torch.load(ckpts[-1].path, map_location="cpu", weights_only=True)
    model = task.proxy_model()
    model.load_state_dict(blob["model"])
    pre = AdamPreconditioner.from_optimizer_state(blob["optimizer"], model, select_parameters(model))
    assert set(pre.exp_avg) == {n for n, _ in model.named_parameters()}
    sgd = get_task("cifar10_resnet9", {**task.config, "proxy": {**SMALL["proxy"], "optimizer": "sgd"}}, seed=0)
    (tmp_path / "sgd").mkdir()
    blob = torch.load(sgd.train_proxy(data, tmp_path / "sgd")[-1].path, map_location="cpu", weights_only=True)
    assert all("momentum_buffer" in st for st in blob["optimizer"]["state"].values())


def test_output_gradients_vmap_equal_single_sample_autograd(prepared, data, trained):
    task, _ = prepared
    # float64: in float32, a batched and a single-sample convolution round differently, and a
    # ReLU pre-activation within ~1e-6 of zero can switch sides (a kink of the network, seen
    # for 1 of the 40 fake test images); in float64 both paths agree to rounding.
    model = ResNet9(SMALL["width"]).double()
    model.load_state_dict(trained)
    model.eval()  # batch norm on its running statistics
    names = select_parameters(model)
    params = [p for _, p in model.named_parameters()]
    x, y = data.targets.tensors
    fast = per_sample_gradients(model, task.output_fn, (x, y), names, mode="vmap")
    feats = torch.cat([fast[name].reshape(len(y), -1) for name in names], dim=1)
    assert feats.shape == (PER_BATCH, sum(p.numel() for p in params))
    rows = []
    for i in range(len(y)):
        f = task.output_fn(model, (x[i : i + 1], y[i : i + 1]))
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)]))
    want = torch.stack(rows)
    assert float(want.abs().max()) > 1e-2  # not trivially zero
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-5)
    # the training loss as well, through per_sample_gradients (vmap vs the loop reference)
    batch = (x[:8], y[:8])
    fast = per_sample_gradients(model, task.loss_fn, batch, names, mode="vmap")
    slow = per_sample_gradients(model, task.loss_fn, batch, names, mode="loop")
    for name in names:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-5)


def test_outputs_are_margins_and_train_weights_one_minus_p(prepared, data, trained):
    task, _ = prepared
    out = task.outputs(data, trained, "targets")
    q = task.train_weights(data, trained, "targets")
    assert out.shape == q.shape == (PER_BATCH,) and out.dtype == np.float64
    model = task.downstream_model()
    model.load_state_dict(trained)
    model.eval()
    x, y = data.targets.tensors
    with torch.no_grad():
        logits = model(x).double()
    np.testing.assert_allclose(out, margin(logits, y).numpy(), rtol=1e-4, atol=1e-4)
    p_y = torch.softmax(logits, 1)[torch.arange(len(y)), y].numpy()
    np.testing.assert_allclose(q, 1.0 - p_y, rtol=1e-4, atol=1e-6)


def test_train_downstream_rejects_bad_input(prepared, data):
    task, _ = prepared
    with pytest.raises(TarotInputError, match="indices"):
        task.train_downstream(data, "candidates", np.array([0, 200]), None, seed=0)
    with pytest.raises(TarotInputError, match="split"):
        task.train_downstream(data, "nope", np.arange(3), None, seed=0)
    with pytest.raises(TarotInputError, match="weights"):
        task.train_downstream(data, "candidates", np.arange(3), np.array([1.0, -1.0, 1.0]), seed=0)
    with pytest.raises(TarotInputError, match="does not fit"):
        task.evaluate(data, {"head.weight": torch.zeros(10, 16)})


# --------------------------------------------------------------------------- training log


def _epoch_lines(caplog: pytest.LogCaptureFixture, stage: str) -> list[re.Match[str]]:
    line = re.compile(
        rf"^cifar10_resnet9 {stage} epoch (\d+)/(\d+): loss \d+\.\d{{4}}, lr [0-9.e-]+"
        r"(, accuracy [0-9.]+ %)?, \d+\.\d{2} s$"
    )
    found = [line.match(r.getMessage()) for r in caplog.records if r.levelno == logging.INFO]
    return [m for m in found if m is not None]


def test_downstream_log_and_evaluation_every_k_epochs_leave_training_unchanged(prepared, data, caplog):
    """``eval_every`` adds the accuracy to every k-th line; evaluating in eval mode does not
    touch the batch-norm statistics, so the trained state is bit-identical."""
    base = {**prepared[0].config, "downstream": {"epochs": 3, "batch_size": 64, "lr_peak_epoch": 1}}
    idx = np.arange(0, 200, 2)
    caplog.set_level(logging.INFO, logger="tarot_select.tasks.cifar10.task")
    plain = get_task("cifar10_resnet9", base, seed=0).train_downstream(data, "candidates", idx, None, seed=1)
    lines = _epoch_lines(caplog, "downstream")
    assert [(int(m[1]), int(m[2])) for m in lines] == [(1, 3), (2, 3), (3, 3)] and not any(m[3] for m in lines)
    caplog.clear()
    every = {**base, "downstream": {**base["downstream"], "eval_every": 2}}
    evaluated = get_task("cifar10_resnet9", every, seed=0).train_downstream(data, "candidates", idx, None, seed=1)
    lines = _epoch_lines(caplog, "downstream")
    assert [bool(m[3]) for m in lines] == [False, True, False]
    for key in plain:
        torch.testing.assert_close(evaluated[key], plain[key], rtol=0, atol=0)


def test_proxy_training_logs_one_line_per_epoch(prepared, data, caplog, tmp_path):
    task, _ = prepared
    caplog.set_level(logging.INFO, logger="tarot_select.tasks.cifar10.task")
    task.train_proxy(data, tmp_path)
    assert [int(m[1]) for m in _epoch_lines(caplog, "proxy")] == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_and_evaluates_on_the_context_device(prepared, data, tmp_path):
    cfg = {**prepared[0].config, "downstream": {"epochs": 2, "batch_size": 64, "lr_peak_epoch": 1, "eval_every": 1}}
    task = get_task("cifar10_resnet9", cfg, seed=0, context=RunContext(device="cuda"))
    state = task.train_downstream(data, "candidates", np.arange(100), None, seed=1)
    assert all(v.device.type == "cpu" for v in state.values())
    assert 0.0 <= task.evaluate(data, state)["accuracy"] <= 1.0
    saved = torch.load(task.train_proxy(data, tmp_path)[-1].path, weights_only=True)
    moments = [t for st in saved["optimizer"]["state"].values() for t in st.values() if isinstance(t, torch.Tensor)]
    assert moments and all(t.device.type == "cpu" for t in [*saved["model"].values(), *moments])
