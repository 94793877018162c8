"""The segmentation task: metrics against a hand-computed case, the synthetic scenes, the
settings, the small DeepLabV3 (parameter list, real learning, seeding, checkpoints), the
per-sample loss and gradients (vmap = loop, factored = exact on dilated convolutions) and
torchvision's DeepLabV3-ResNet-50.

Tests that build a model need torchvision and skip without it.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tarot_select import TarotInputError
from tarot_select.tasks import ModelOutputs, RunContext, get_spec, get_task
from tarot_select.tasks.segmentation import data as scenes
from tarot_select.tasks.segmentation.labels import IGNORE, N_CLASSES
from tarot_select.tasks.segmentation.metrics import confusion_matrix, scores_from_confusion
from tarot_select.tasks.segmentation.settings import SegmentationSettings
from tarot_select.tasks.segmentation.task import _batches_of_order, pixel_losses

# A task small enough to train in seconds: 32x64 scenes, three styles, a narrow model.
SMALL = {
    "kind": "segmentation",
    "image_size": [32, 64],
    "sources": ["day", "fog", "mislabelled"],
    "per_source": 24,
    "target_styles": ["day", "fog"],
    "n_targets": 12,
    "n_evaluation": 40,
    "model": {"width": 8, "aspp_channels": 16},
    "proxy": {"epochs": 3, "checkpoints": 2, "batch_size": 16},
    "downstream": {"epochs": 20, "lr": 0.01, "batch_size": 8},
}


def needs_torchvision():
    pytest.importorskip("torchvision")


# conftest.py: ``small`` is SMALL prepared once, ``(task, data, folder)``
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- metrics


def test_miou_of_a_hand_computed_case():
    # 2x3 image, classes 0, 1, 2; the ignored pixel (255) is predicted 0 and must not count
    gt = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    conf = confusion_matrix(pred, gt)
    assert conf.shape == (N_CLASSES, N_CLASSES) and int(conf.sum()) == 5
    assert conf[:3, :3].tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    s = scores_from_confusion(conf)
    # IoU: class 0 = 1/(1+0+1) = 1/2, class 1 = 2/(2+2+0) = 1/2, class 2 = 0/(0+0+1) = 0;
    # the 16 classes absent from both are left out: mIoU = 1/3; pixel accuracy = 3/5
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["pixel_accuracy"] == pytest.approx(0.6)
    assert s["iou"][:3].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert np.isnan(s["iou"][3:]).all()
    # a class only predicted counts with IoU 0: predicting 5 on the first pixel
    pred2 = pred.clone()
    pred2[0, 0] = 5
    s2 = scores_from_confusion(confusion_matrix(pred2, gt))
    assert s2["iou"][5] == 0.0 and s2["miou"] == pytest.approx((0 + 0.5 + 0 + 0) / 4)


def test_confusion_is_summed_over_images_not_averaged():
    a, b = torch.tensor([[0, 0]]), torch.tensor([[1, 1, 1, 1]])
    total = confusion_matrix(a, a) + confusion_matrix(torch.zeros_like(b), b)
    s = scores_from_confusion(total)
    assert s["iou"][0] == pytest.approx(2 / 6) and s["iou"][1] == 0.0  # per-image mean would differ
    with pytest.raises(TarotInputError, match="no evaluated pixel"):
        scores_from_confusion(confusion_matrix(torch.tensor([1]), torch.tensor([IGNORE])))
    with pytest.raises(TarotInputError, match="labels outside"):
        confusion_matrix(torch.tensor([1]), torch.tensor([19]))


# --------------------------------------------------------------------------- scenes


def test_scene_class_ids_are_the_official_train_ids():
    pytest.importorskip("cityscapesscripts")
    from tarot_select.tasks.segmentation.labels import train_id_names

    names = train_id_names()
    assert {name: names.index(name) for name in scenes.SCENE_CLASSES} == scenes.SCENE_CLASSES


def test_scenes_are_deterministic_per_image_and_seed_dependent():
    a, la = scenes.synthesize(["day", "fog", "day"], (32, 64), seed=3, stream=1, real=False)
    b, lb = scenes.synthesize(["day", "fog", "day"], (32, 64), seed=3, stream=1, real=False)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    c, _ = scenes.synthesize(["day"], (32, 64), seed=4, stream=1, real=False)
    assert not np.array_equal(a[0], c[0])
    # an image depends on its style and index only, not on the other images of the call
    d, ld = scenes.synthesize(["fog"], (32, 64), seed=3, stream=1, real=False)
    assert np.array_equal(d[0], a[1]) and np.array_equal(ld[0], la[1])
    assert a.dtype == np.uint8 and a.shape == (3, 3, 32, 64) and la.shape == (3, 32, 64)


def test_styles_labels_and_the_mislabelled_swap():
    size = (48, 96)
    classes = set(scenes.SCENE_CLASSES.values())
    for style in scenes.ALL_STYLES:
        _, labels = scenes.synthesize([style] * 8, size, seed=0, stream=1, real=False)
        assert set(np.unique(labels).tolist()) <= classes, style  # candidates: no ignore pixel
        if style == "desert":
            assert scenes.VEGETATION not in labels
    # mislabelled renders exactly as day and swaps road/sidewalk, building/sky, car/person
    img_day, lab_day = scenes.render_scene("day", size, np.random.default_rng(5))
    img_bad, lab_bad = scenes.render_scene("mislabelled", size, np.random.default_rng(5))
    assert np.array_equal(img_day, img_bad)
    swap = np.arange(256)
    for a, b in scenes.MISLABEL.items():
        swap[a] = b
    assert np.array_equal(swap[lab_day], lab_bad) and not np.array_equal(lab_day, lab_bad)


def test_the_target_camera_is_none_of_the_sources():
    size = (48, 96)
    cand, _ = scenes.synthesize(["day"] * 6, size, seed=0, stream=1, real=False)
    real, labels = scenes.synthesize(["day"] * 6, size, seed=0, stream=1, real=True)
    # same scenes, other camera: the bonnet is ignored, colours are paler, pixels differ
    assert (labels[:, -1, size[1] // 2] == IGNORE).all() and not (labels[:, 0] == IGNORE).any()

    def saturation(x):
        x = x.astype(float)
        return np.abs(x - x.mean(axis=1, keepdims=True)).mean()

    assert saturation(real) < 0.9 * saturation(cand)
    assert np.abs(real.astype(float) - cand).mean() > 10.0


def test_prepare_writes_balanced_mixtures_and_load_maps_them(small):
    task, data, folder = small
    assert (len(data.candidates), len(data.targets), len(data.evaluation)) == (72, 12, 40)
    assert task.options.split_sizes() == {"candidates": 72, "targets": 12, "evaluation": 40}
    assert [str(s) for s in np.unique(data.sources)] == ["day", "fog", "mislabelled"]
    assert sorted(np.unique(data.evaluation.groups, return_counts=True)[1].tolist()) == [20, 20]
    assert (data.targets.labels == IGNORE).any() and not (data.candidates.labels == IGNORE).any()
    x, y = data.candidates[3]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 64) and y.dtype == torch.int64
    other = get_task("segmentation", SMALL, seed=1)
    other.prepare(folder.parent / "seed1")
    assert not np.array_equal(other.load(folder.parent / "seed1").candidates.images, data.candidates.images)


def test_a_damaged_array_is_named_when_loaded(small, tmp_path):
    import shutil

    task, _, folder = small
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / "targets_labels.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TarotInputError, match=r"targets_labels\.npy"):
        task.load(copy)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "block,message",
    [
        ({"target_styles": ["day", "mislabelled"]}, r"t\.target_styles: \['mislabelled'\] cannot be a target"),
        ({"image_size": [48]}, r"t\.image_size: must be \[height, width\]"),
        ({"n_targets": None}, r"t\.n_targets: needs a number for dataset synthetic"),
        ({"n_evaluation": 2}, r"t\.n_evaluation: 2 is fewer than the 3 target styles"),
        ({"proxy": {"epochs": 2, "checkpoints": 4}}, r"t\.proxy\.checkpoints: 4 exceeds epochs=2"),
        ({"model": {"output_stride": 16}}, r"t\.model\.output_stride: must be one of 4, 8"),
        ({"model": {"arch": "deeplabv3_resnet50", "backbone_weights": "/nope.pt"}}, r"backbone_weights: file not"),
        ({"model": {"backbone_weights": "/nope.pt"}}, r"backbone_weights: only for arch deeplabv3_resnet50"),
        ({"downstream": {"momentum": 1.0}}, r"t\.downstream\.momentum: must be < 1"),
        ({"downstream": {"primary": "last"}}, r"t\.downstream\.primary: must be one of"),
        ({"sources": ["day", "snow"]}, r"t\.sources\[1\]: must be one of"),
    ],
)
def test_bad_settings_name_their_key(block, message):
    with pytest.raises(TarotInputError, match=message):
        SegmentationSettings.from_config(block, "t")


def test_registered_without_model_outputs():
    spec = get_spec("segmentation")
    assert spec.settings is SegmentationSettings and spec.model_outputs is False
    task = get_task("segmentation", {})
    assert not isinstance(task, ModelOutputs)
    assert [m.name for m in task.metrics] == ["miou", "best_miou", "pixel_accuracy"]
    assert task.primary_metric.unit == "%" and task.primary_metric.scale == 100.0 and task.higher_is_better
    best = get_task("segmentation", {"downstream": {"primary": "best"}})
    assert best.metric == "best_miou"
    assert SegmentationSettings.from_config({}).split_sizes() == {"candidates": 360, "targets": 60, "evaluation": 120}


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    "model",
    [{}, {"output_stride": 4, "atrous_rates": [1, 3], "aspp_channels": 8, "width": 4}],
)
def test_proxy_parameters_match_the_model(model):
    needs_torchvision()
    from torchvision.models.segmentation.deeplabv3 import ASPP

    task = get_task("segmentation", {"model": model})
    net = task.proxy_model()
    assert {n: tuple(p.shape) for n, p in net.named_parameters()} == task.options.proxy_parameters()
    assert list(dict(net.named_parameters())) == list(task.options.proxy_parameters())
    assert isinstance(net.classifier[0], ASPP)  # torchvision's ASPP head
    x = torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8)
    assert net.eval()(x).shape == (2, N_CLASSES, 24, 40)


def test_batches_never_hold_a_single_sample():
    assert [len(b) for b in _batches_of_order(np.arange(9), 4)] == [4, 5]
    assert [len(b) for b in _batches_of_order(np.arange(8), 4)] == [4, 4]
    assert [b.tolist() for b in _batches_of_order(np.array([7]), 4)] == [[7, 7]]


# --------------------------------------------------------------------------- loss and gradients


def test_pixel_losses_are_the_mean_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(3, N_CLASSES, 4, 5)
    labels = torch.randint(0, N_CLASSES, (3, 4, 5))
    labels[0, :2] = IGNORE
    labels[2] = IGNORE
    per = pixel_losses(logits, labels)
    assert per[0] == pytest.approx(float(F.cross_entropy(logits[:1], labels[:1], ignore_index=IGNORE)), rel=1e-6)
    assert per[1] == pytest.approx(float(F.cross_entropy(logits[1:2], labels[1:2])), rel=1e-6)
    assert per[2] == 0.0  # no valid pixel: no loss


def test_per_sample_gradients_vmap_equal_loop_and_factored_is_exact(small):
    needs_torchvision()
    from tarot_select.factored import FactoredGradientFeaturizer
    from tarot_select.featurize import Checkpoint
    from tarot_select.gradients import per_sample_gradients, select_parameters

    task, data, _ = small
    model = task.proxy_model().double().eval()
    x, y = data.targets.batch(np.arange(4))  # targets: some ignored pixels
    names = select_parameters(model, None)
    fast = per_sample_gradients(model, task.loss_fn, (x, y), names, "vmap")
    slow = per_sample_gradients(model, task.loss_fn, (x, y), names, "loop")
    for n in names:
        assert torch.allclose(fast[n], slow[n], rtol=1e-6, atol=1e-9), n
    flat = torch.cat([fast[n].reshape(4, -1) for n in names], 1)
    # the factored engine with identity factors gives the exact gradients (dilated ASPP convolutions included)
    exact = FactoredGradientFeaturizer(model, task.loss_fn, proj_kind="none")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats = torch.from_numpy(exact.featurize([(x, y)], [Checkpoint(state_dict=state)], progress=False)).double()
    assert torch.allclose(feats @ feats.T, flat @ flat.T, rtol=1e-4)
    # and the count sketch used by the configs runs on the same model
    sketch = FactoredGradientFeaturizer(model, task.loss_fn, proj_dim=32, proj_kind="countsketch")
    assert sketch.featurize([(x, y)], [Checkpoint(state_dict=state)], progress=False).shape == (4, 32)


def test_gradient_batches_are_the_items_in_order(small):
    _, data, _ = small
    task = get_task("segmentation", SMALL)
    subset = torch.utils.data.Subset(data.candidates, range(5, 12))
    batches = list(task.gradient_batches(subset, batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, torch.stack([data.candidates[i][0] for i in range(5, 12)]))


# --------------------------------------------------------------------------- training


def test_train_proxy_writes_adam_checkpoints_of_the_last_epochs(small, tmp_path):
    needs_torchvision()
    task, data, _ = small
    ckpts = task.train_proxy(data, tmp_path)
    assert [c.epoch for c in ckpts] == [2, 3]
    assert ckpts[0].lr > ckpts[1].lr > 0  # poly decay
    blob = torch.load(ckpts[-1].path, weights_only=True)
    assert set(blob) == {"model", "optimizer"} and blob["optimizer"]["state"]
    assert set(blob["model"]) == set(task.proxy_model().state_dict())


def test_downstream_learns_and_is_deterministic(small, caplog):
    needs_torchvision()
    task = get_task("segmentation", {**SMALL, "downstream": {**SMALL["downstream"], "eval_every": 5}}, seed=0)
    _, data, _ = small
    clean = np.flatnonzero(data.sources != "mislabelled")
    untrained = task.evaluate(data, {"model": task.downstream_model().state_dict(), "history": {}})
    with caplog.at_level(logging.INFO, logger="tarot_select.tasks.segmentation.task"):
        state = task.train_downstream(data, "candidates", clean, None, seed=0)
    lines = [r.getMessage() for r in caplog.records if "segmentation downstream epoch" in r.getMessage()]
    assert len(lines) == 20 and sum("miou" in line for line in lines) == 4
    assert state["history"]["epoch"] == [5.0, 10.0, 15.0, 20.0]
    m = task.evaluate(data, state)
    # eight classes in the scenes: a constant or random prediction has an mIoU near 0.05
    assert untrained["miou"] < 0.12 and untrained["best_miou"] == untrained["miou"]
    assert m["miou"] > 0.25 and m["pixel_accuracy"] > 0.6, m
    assert m["best_miou"] >= m["miou"] and m["best_epoch"] in (5.0, 10.0, 15.0, 20.0)
    assert m["miou"] == pytest.approx(state["history"]["miou"][-1])
    assert {"miou_day", "miou_fog", "iou_road", "iou_sky"} <= set(m)
    # the last epoch's evaluation is reused by evaluate(): the same numbers as a second pass
    assert state["history"]["final_confusion"].shape == (N_CLASSES, N_CLASSES)
    recompute = {**state, "history": {k: v for k, v in state["history"].items() if not k.startswith("final_")}}
    assert task.evaluate(data, recompute) == pytest.approx(m)
    again = task.train_downstream(data, "candidates", clean, None, seed=0)
    assert all(torch.equal(again["model"][k], state["model"][k]) for k in state["model"])
    other = task.train_downstream(data, "candidates", clean[:6], np.full(6, 2), seed=0)  # repeat counts
    assert not torch.equal(other["model"]["classifier.4.weight"], state["model"]["classifier.4.weight"])


def test_single_sample_selection_and_bad_input(small):
    needs_torchvision()
    task = get_task("segmentation", {**SMALL, "downstream": {"epochs": 1, "batch_size": 8}}, seed=0)
    _, data, _ = small
    state = task.train_downstream(data, "targets", np.array([3]), None, seed=1)
    assert 0.0 <= task.evaluate(data, state)["miou"] <= 1.0
    with pytest.raises(TarotInputError, match="indices must lie in"):
        task.train_downstream(data, "targets", np.array([99]), None, seed=0)
    with pytest.raises(TarotInputError, match="unknown split"):
        task.train_downstream(data, "pool", np.array([0]), None, seed=0)
    with pytest.raises(TarotInputError, match="does not fit the downstream model"):
        task.evaluate(data, {"model": {"nope": torch.zeros(1)}})


def test_trains_on_the_context_device(small):
    needs_torchvision()
    task = get_task("segmentation", {**SMALL, "downstream": {"epochs": 1}}, context=RunContext(device="meta"))
    _, data, _ = small
    # everything goes to the (data-less) meta device: the first loss read back is a meta tensor
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        task.train_downstream(data, "targets", np.arange(4), None, seed=0)


@pytest.mark.slow
def test_the_mislabelled_source_hurts():
    """Training on the whole mini pool is worse than on the pool without the mislabelled style."""
    needs_torchvision()
    task = get_task("segmentation", {"per_source": 40, "downstream": {"epochs": 20}}, seed=0)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        task.prepare(folder)
        data = task.load(folder)
        full = task.evaluate(data, task.train_downstream(data, "candidates", np.arange(240), None, seed=0))
        clean = np.flatnonzero(data.sources != "mislabelled")
        without = task.evaluate(data, task.train_downstream(data, "candidates", clean, None, seed=0))
    assert without["miou"] > full["miou"] + 0.03, (full["miou"], without["miou"])


# --------------------------------------------------------------------------- paper scale


def test_deeplabv3_resnet50_is_torchvisions_with_19_classes(tmp_path):
    needs_torchvision()
    from torchvision.models import resnet50

    resnet = resnet50(weights=None)
    torch.nn.init.constant_(resnet.layer1[0].conv1.weight, 0.5)
    torch.save(resnet.state_dict(), tmp_path / "r50.pth")
    block = {"model": {"arch": "deeplabv3_resnet50", "backbone_weights": str(tmp_path / "r50.pth")}}
    task = get_task("segmentation", block)
    assert task.options.proxy_parameters() is None
    net = task.proxy_model().eval()
    assert net.classifier[4].out_channels == N_CLASSES and net.classifier[0].convs[1][0].dilation == (12, 12)
    assert (net.backbone.layer1[0].conv1.weight == 0.5).all()  # the local backbone file was loaded
    assert 39_000_000 < sum(p.numel() for p in net.parameters()) < 40_500_000
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 48, dtype=torch.uint8)).shape == (1, N_CLASSES, 32, 48)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(TarotInputError, match=r"bad\.pth is not a torchvision ResNet-50 state dict"):
        get_task(
            "segmentation", {"model": {**block["model"], "backbone_weights": str(tmp_path / "bad.pth")}}
        ).proxy_model()
