"""The segmentation task's mmsegmentation backend (``model.backend: mmseg``).

Needs mmseg with a compiled mmcv (``bash envs/mmseg.post-deploy.sh``). Without it these tests
skip, unless ``TAROT_REQUIRE_MMSEG=1`` (set by ``.ci/run``, which installs it): then they fail.
The settings checks at the end run everywhere.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tarot_select import TarotInputError
from tarot_select.tasks import get_task
from tarot_select.tasks.segmentation.labels import N_CLASSES
from tarot_select.tasks.segmentation.mmseg_model import MMSegNet, build_mmseg_model, mmseg_available
from tarot_select.tasks.segmentation.settings import SegmentationSettings

WHY = mmseg_available()


def needs_mmseg() -> None:
    if WHY is None:
        return
    if os.environ.get("TAROT_REQUIRE_MMSEG") == "1":
        pytest.fail(f"TAROT_REQUIRE_MMSEG=1 but {WHY}")
    pytest.skip(WHY)


# A DeepLabV3 of mmseg's own modules, small enough for a CPU test: ResNetV1c-18 with 8 base
# channels (output stride 8 by dilation, as R50-D8), an ASPP head, an auxiliary FCN head and
# SyncBN, like mmseg's Cityscapes configs; 7 classes, a pretrained URL that must not be used.
TINY_CONFIG = """
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                         std=[58.395, 57.12, 57.375], bgr_to_rgb={bgr_to_rgb}, pad_val=0, seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet18_v1c',
    backbone=dict(type='ResNetV1c', depth=18, base_channels=8, stem_channels=8, num_stages=4,
                  out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                  norm_cfg=norm_cfg, norm_eval=False, style='pytorch', contract_dilation=True),
    decode_head=dict(type='ASPPHead', in_channels=64, in_index=3, channels=16, dilations=(1, 2, 3, 4),
                     dropout_ratio=0.1, num_classes=7, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels=32, in_index=2, channels=8, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=7, norm_cfg=norm_cfg,
                        align_corners=False,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
"""

SMALL = {
    "kind": "segmentation",
    "image_size": [32, 64],
    "sources": ["day", "fog"],
    "per_source": 8,
    "target_styles": ["day"],
    "n_targets": 4,
    "n_evaluation": 8,
    "proxy": {"epochs": 2, "checkpoints": 1, "batch_size": 8, "lr": 0.003},
    "downstream": {"epochs": 1, "batch_size": 8},
}
BLOCK = {k: v for k, v in SMALL.items() if k != "kind"}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmseg") / "deeplabv3_tiny.py"
    path.write_text(TINY_CONFIG.format(bgr_to_rgb=True))
    return path


def _build(config: Path, checkpoint: Path | None = None, seed: int = 0) -> MMSegNet:
    torch.manual_seed(seed)
    return build_mmseg_model(config, checkpoint, N_CLASSES).eval()


def _pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_builds_the_configs_model_with_19_classes_no_aux_head_no_syncbn(tiny_config):
    needs_mmseg()
    net = _build(tiny_config)
    seg = net.segmentor
    assert type(seg).__name__ == "EncoderDecoder" and type(seg.backbone).__name__ == "ResNetV1c"
    assert seg.decode_head.num_classes == N_CLASSES
    assert not seg.with_auxiliary_head
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    x = _pixels()
    logits = net(x)
    assert logits.shape == (2, N_CLASSES, 32, 64)
    # pixels -> RGB normalisation with the config's mean/std -> mmseg's encode_decode
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    metas = [{"img_shape": (32, 64), "ori_shape": (32, 64), "pad_shape": (32, 64)}] * 2
    with torch.no_grad():
        want = seg.encode_decode((x.float() - mean) / std, metas)
        assert torch.allclose(net(x), want)


def test_a_model_that_expects_bgr_gets_the_channels_flipped(tmp_path):
    needs_mmseg()
    config = tmp_path / "bgr.py"
    config.write_text(TINY_CONFIG.format(bgr_to_rgb=False))
    net = _build(config)
    assert net.bgr
    x = _pixels()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    metas = [{"img_shape": (32, 64), "ori_shape": (32, 64), "pad_shape": (32, 64)}] * 2
    with torch.no_grad():
        want = net.segmentor.encode_decode((x.float().flip(1) - mean) / std, metas)
        assert torch.allclose(net(x), want)


def test_an_mmseg_checkpoint_loads_and_a_foreign_one_is_named(tiny_config, tmp_path):
    needs_mmseg()
    trained = _build(tiny_config, seed=1)
    state = {f"module.{k}": v for k, v in trained.segmentor.state_dict().items()}
    state["auxiliary_head.conv_seg.weight"] = torch.zeros(7, 8, 1, 1)  # the dropped head's weights
    ckpt = tmp_path / "iter_40000.pth"
    torch.save({"meta": {"CLASSES": ["road"] * 19}, "state_dict": state}, ckpt)
    loaded = _build(tiny_config, ckpt, seed=2)
    fresh = _build(tiny_config, seed=2)
    x = _pixels()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
        assert not torch.allclose(fresh(x), trained(x))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"backbone.stem.0.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(TarotInputError, match="does not fit the model of model.mmseg_config"):
        _build(tiny_config, foreign)
    with pytest.raises(TarotInputError, match="cannot read .*missing.pth"):
        _build(tiny_config, tmp_path / "missing.pth")


def test_a_config_without_an_encoder_decoder_is_refused(tmp_path):
    needs_mmseg()
    bad = tmp_path / "bad.py"
    bad.write_text("model = dict(type='ImageClassifier')\n")
    with pytest.raises(TarotInputError, match="must define model = dict\\(type='EncoderDecoder'"):
        build_mmseg_model(bad, None, N_CLASSES)
    broken = tmp_path / "broken.py"
    broken.write_text("model = dict(type=\n")
    with pytest.raises(TarotInputError, match="cannot read .*broken.py"):
        build_mmseg_model(broken, None, N_CLASSES)


def test_per_sample_gradients_of_the_task_loss(tiny_config):
    """vmap equals a per-sample loop, and the factored engine with identity factors is exact."""
    needs_mmseg()
    from tarot_select.factored import FactoredGradientFeaturizer
    from tarot_select.featurize import Checkpoint
    from tarot_select.gradients import per_sample_gradients, select_parameters

    task = get_task("segmentation", {**SMALL, "model": {"backend": "mmseg", "mmseg_config": str(tiny_config)}})
    model = task.proxy_model().double().eval()
    x = _pixels(3)
    y = torch.randint(0, N_CLASSES, (3, 32, 64), generator=torch.Generator().manual_seed(1))
    y[0, :8] = 255  # ignored pixels
    names = select_parameters(model, None)
    fast = per_sample_gradients(model, task.loss_fn, (x, y), names, "vmap")
    slow = per_sample_gradients(model, task.loss_fn, (x, y), names, "loop")
    for n in names:
        assert torch.allclose(fast[n], slow[n], rtol=1e-6, atol=1e-9), n
    assert all(fast[n].abs().sum() > 0 for n in names if "decode_head" in n)
    flat = torch.cat([fast[n].reshape(3, -1) for n in names], 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact = FactoredGradientFeaturizer(model, task.loss_fn, proj_kind="none")
    feats = torch.from_numpy(exact.featurize([(x, y)], [Checkpoint(state_dict=state)], progress=False)).double()
    assert torch.allclose(feats @ feats.T, flat @ flat.T, rtol=1e-4)


def test_the_task_trains_and_evaluates_an_mmseg_model(tiny_config, tmp_path):
    """One proxy training through the task (checkpoint with Adam state), then a downstream."""
    needs_mmseg()
    torch.set_num_threads(1)
    cfg = {**SMALL, "model": {"backend": "mmseg", "mmseg_config": str(tiny_config)}}
    task = get_task("segmentation", cfg, seed=0)
    task.prepare(tmp_path / "data")
    data = task.load(tmp_path / "data")
    before = {k: v.clone() for k, v in task.proxy_model().state_dict().items()}
    ckpts = task.train_proxy(data, tmp_path / "proxy")
    blob = torch.load(ckpts[-1].path, weights_only=True)
    assert blob["optimizer"]["state"]
    assert set(blob["model"]) == set(before)
    moved = [k for k, v in blob["model"].items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("segmentor.backbone.") for k in moved)
    assert any(k.startswith("segmentor.decode_head.") for k in moved)
    state = task.train_downstream(data, "candidates", np.arange(len(data.candidates)), None, seed=0)
    metrics = task.evaluate(data, state)
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0


def test_mmsegs_own_deeplabv3_r50_cityscapes_config_builds():
    """The config a segmentation user already has: mmseg's DeepLabV3 R50-D8 for Cityscapes."""
    needs_mmseg()
    spec = importlib.util.find_spec("mmseg")
    root = Path(spec.origin).parent / ".mim" / "configs" / "deeplabv3"
    config = root / "deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py"
    if not config.is_file():
        pytest.fail(f"mmseg ships no {config}")
    net = _build(config)
    n = sum(p.numel() for p in net.parameters())
    assert 60e6 < n < 70e6, n  # ResNetV1c-50 + ASPP head (the auxiliary FCN head dropped)
    with torch.no_grad():
        assert net(_pixels(1)).shape == (1, N_CLASSES, 32, 64)


# --------------------------------------------------------------------------- settings (no mmseg needed)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"backend": "mmseg"}, "model.mmseg_config: backend mmseg needs an mmseg config file"),
        ({"backend": "mmseg", "mmseg_config": "/nowhere/deeplabv3.py"}, "file not found: /nowhere/deeplabv3.py"),
        ({"mmseg_config": "x.py"}, "model.mmseg_config: only for backend mmseg"),
        ({"backend": "caffe"}, "backend"),
    ],
)
def test_bad_mmseg_settings_name_their_key(model, message):
    with pytest.raises(TarotInputError, match=message.replace("(", "\\(")):
        SegmentationSettings.from_config({**BLOCK, "model": model}, "tasks.s")


def test_a_missing_mmseg_names_the_install_script(tmp_path, monkeypatch):
    config = tmp_path / "m.py"
    config.write_text(TINY_CONFIG.format(bgr_to_rgb=True))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mmseg" else real(name, *a))
    with pytest.raises(TarotInputError, match="is not installed; run `bash envs/mmseg.post-deploy.sh`"):
        SegmentationSettings.from_config({**BLOCK, "model": {"backend": "mmseg", "mmseg_config": str(config)}}, "tasks.s")


def test_an_mmseg_task_runs_its_torch_jobs_in_the_mmseg_env():
    from tarot_select.experiments import plan

    root = Path(__file__).resolve().parents[2]
    config = {
        "tasks": {
            "seg": {**SMALL, "model": {"backend": "mmseg", "mmseg_config": "deeplabv3.py"}},
            "seg-tv": SMALL,
            "digits": {"kind": "digits"},
        }
    }
    envs = {task: plan.task_env(config, task) for task in config["tasks"]}
    assert envs == {"seg": "mmseg", "seg-tv": "torch", "digits": "torch"}
    for name in set(envs.values()):
        assert (root / "envs" / f"{name}.yaml").is_file()
    # Snakemake runs the env's post-deploy script (a copy of it): it must build mmcv itself
    assert "mmcv" in (root / "envs" / "mmseg.post-deploy.sh").read_text()
