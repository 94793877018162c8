"""Every task kind names its proxy's blocks for the infdist JVP embeddings
(:meth:`Task.embedding_blocks`, :meth:`Task.embedding_reduce`): the names exist, run in the
order given, and :class:`~tarot_select.embed.JVPEmbedder` on a few candidate batches of the
kind's small test config gives finite, varied rows of a fixed width that do not depend on how
the samples are batched. The configs are those of the kind's own test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from test_segmentation_mmseg import TINY_CONFIG as MMSEG_CONFIG
from test_task_cifar10 import SMALL as CIFAR_SMALL
from test_task_cifar10 import write_fake_cifar
from test_task_digits import TINY as DIGITS_TINY
from test_task_instruct import SMALL as INSTRUCT_SMALL
from test_task_motion import SMALL as MOTION_SMALL
from test_task_segmentation import SMALL as SEGMENTATION_SMALL

from tarot_select import TarotInputError
from tarot_select.embed import JVPEmbedder
from tarot_select.tasks import Task, get_task
from tarot_select.tasks.cifar10 import data as cifar_data
from tarot_select.tasks.segmentation.mmseg_model import mmseg_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_SAMPLES = 6  # candidates embedded per kind


@dataclass
class Case:
    task: Task
    model: torch.nn.Module
    batches: Callable[[int], list[Any]]  # batch size -> batches of the first N_SAMPLES candidates
    blocks: list[str]  # expected names
    width: int  # expected embedding width (2 tangents, n_blocks = min(4, #blocks), dim 4096)


def _candidate_batches(task: Task, data: Any) -> Callable[[int], list[Any]]:
    subset = torch.utils.data.Subset(data.candidates, range(N_SAMPLES))
    return lambda size: list(task.gradient_batches(subset, batch_size=size))


def _prepared(kind: str, block: dict, folder) -> tuple[Task, Any]:
    task = get_task(kind, {k: v for k, v in block.items() if k != "kind"}, seed=0)
    task.prepare(folder)
    return task, task.load(folder)


def _digits(tmp) -> Case:
    task, data = _prepared("digits", DIGITS_TINY, tmp)
    return Case(task, task.proxy_model(), _candidate_batches(task, data), ["conv1", "conv2", "fc1", "fc2"], 2 * 10)


def _mnist(tmp) -> Case:
    task, data = _prepared("mnist_mlp", {}, tmp)
    return Case(task, task.proxy_model(), _candidate_batches(task, data), ["net.0", "net.2", "net.4"], 2 * 10)


def _cifar10(tmp) -> Case:
    write_fake_cifar(tmp / "root")
    with pytest.MonkeyPatch.context() as mp:  # the fake files fail torchvision's md5 check: read the pickles
        mp.setitem(sys.modules, "torchvision", None)
        mp.setitem(sys.modules, "torchvision.datasets", None)
        cifar_data._load_cached.cache_clear()
        task, data = _prepared("cifar10_resnet9", {"root": str(tmp / "root"), **CIFAR_SMALL}, tmp / "data")
    cifar_data._load_cached.cache_clear()
    blocks = [f"features.{i}" for i in (0, 1, 2, 3, 5, 6)] + ["head"]
    # features.3: (B, 4 * 8, 16, 16) pooled to 8 x 8 -> 2048 per tangent, 4096 in all: no projection
    return Case(task, task.proxy_model(), _candidate_batches(task, data), blocks, 4096)


def _segmentation(tmp, model: dict | None = None) -> Case:
    pytest.importorskip("torchvision")
    block = {**SEGMENTATION_SMALL, **({"model": model} if model else {})}
    task, data = _prepared("segmentation", block, tmp)
    if model is None:  # small: backbone.3 is (B, 32, 4, 8) at 32 x 64 images (stride 8)
        return Case(
            task,
            task.proxy_model(),
            _candidate_batches(task, data),
            [*(f"backbone.{i}" for i in range(4)), "classifier"],
            2 * 32 * 4 * 8,
        )
    if model.get("backend") == "mmseg":  # ResNetV1c-18: stem, layer1..4; layer3 is (B, 32, 4, 8)
        blocks = ["segmentor.backbone.stem", *(f"segmentor.backbone.layer{i}" for i in range(1, 5))]
        return Case(task, task.proxy_model(), _candidate_batches(task, data), blocks, 2 * 32 * 4 * 8)
    # ResNet-50: layer1 is (B, 256, 8, 16), pooled to 8 x 8: 2 * 16384 numbers projected to 4096
    blocks = ["backbone.conv1", "backbone.bn1", *(f"backbone.layer{i}" for i in range(1, 5)), "classifier"]
    return Case(task, task.proxy_model(), _candidate_batches(task, data), blocks, 4096)


def _mmseg(tmp) -> Case:
    why = mmseg_available()
    if why is not None:
        if os.environ.get("TAROT_REQUIRE_MMSEG") == "1":
            pytest.fail(f"TAROT_REQUIRE_MMSEG=1 but {why}")
        pytest.skip(why)
    config = tmp / "deeplabv3_tiny.py"
    config.write_text(MMSEG_CONFIG.format(bgr_to_rgb=True))
    return _segmentation(tmp, {"backend": "mmseg", "mmseg_config": str(config)})


def _motion(tmp) -> Case:
    task, data = _prepared("motion", MOTION_SMALL, tmp)
    # AutoBots proxy, width 16, one encoder layer: focal agent's 4 steps x 16
    return Case(task, task.proxy_model(), _candidate_batches(task, data), ["agent_embed", "encoder.0"], 2 * 4 * 16)


def _motion_wayformer(tmp) -> Case:
    case = _motion(tmp)  # the downstream Wayformer of the same config: 4 latents x 32
    blocks = ["latent_cross", "latent_cross_ffn", "latent_self.0", "latent_ffn.0"]
    return Case(case.task, case.task.downstream_model(), case.batches, blocks, 2 * 4 * 32)


def _instruct(tmp) -> Case:
    task, data = _prepared("instruct", INSTRUCT_SMALL, tmp)
    blocks = [f"base_model.model.model.layers.{i}" for i in range(4)]
    return Case(task, task.proxy_model(), _candidate_batches(task, data), blocks, 2 * 96)  # llama-tiny, d = 96


BUILDERS = {
    "digits": _digits,
    "mnist_mlp": _mnist,
    "cifar10_resnet9": _cifar10,
    "segmentation": _segmentation,
    "segmentation_resnet50": lambda tmp: _segmentation(tmp, {"arch": "deeplabv3_resnet50"}),
    "segmentation_mmseg": _mmseg,
    "motion": _motion,
    "motion_wayformer": _motion_wayformer,
    "instruct": _instruct,
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> Case:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def test_blocks_exist_and_run_in_the_order_named(case):
    blocks = case.task.embedding_blocks(case.model)
    assert blocks == case.blocks
    modules = dict(case.model.named_modules())
    assert all(name in modules for name in blocks)
    order: list[str] = []
    handles = [modules[name].register_forward_hook(lambda m, a, o, name=name: order.append(name)) for name in blocks]
    model = case.model.eval()
    try:
        with torch.no_grad():
            case.task.loss_fn(lambda *a, **k: model(*a, **k), case.batches(N_SAMPLES)[0])
    finally:
        for h in handles:
            h.remove()
    first_calls = list(dict.fromkeys(order))
    assert first_calls == blocks  # every block runs, in the order given


def test_jvp_embeddings_are_finite_varied_fixed_width_and_batch_independent(case):
    blocks = case.task.embedding_blocks(case.model)
    emb = JVPEmbedder(
        case.model, case.task.loss_fn, blocks, n_blocks=min(4, len(blocks)), reduce=case.task.embedding_reduce
    )
    together = emb.embed(case.batches(N_SAMPLES), n_samples=N_SAMPLES)
    assert together.shape == (N_SAMPLES, case.width) and emb.out_dim == case.width
    assert np.isfinite(together).all()
    assert together.std(axis=0).max() > 0  # not constant over samples
    assert len({r.tobytes() for r in together}) == N_SAMPLES
    in_pairs = emb.embed(case.batches(2))  # other batches (other padding for instruct): the same rows
    scale = float(np.abs(together).max())
    np.testing.assert_allclose(in_pairs, together, rtol=1e-4, atol=1e-5 * scale)
    meta = emb.metadata()
    assert meta["blocks"] == blocks[: min(4, len(blocks))] and meta["out_dim"] == case.width
    assert meta["reduce"].endswith("embedding_reduce") and meta["n_params"] > 0


def test_a_task_without_blocks_refuses_clearly():
    class Bare(Task):
        name = "bare"
        prepare = load = proxy_model = train_proxy = loss_fn = train_downstream = evaluate = None  # type: ignore[assignment]

    bare = Bare.__new__(Bare)
    with pytest.raises(TarotInputError, match="task kind 'bare' does not name its model's blocks"):
        bare.embedding_blocks(torch.nn.Linear(2, 2))
    out = bare.embedding_reduce(torch.arange(24.0).reshape(2, 3, 4), None)
    assert out.shape == (2, 12) and torch.equal(out[1], torch.arange(12.0, 24.0))


def test_instruct_reduce_takes_each_rows_last_real_token():
    task = get_task("instruct", {k: v for k, v in INSTRUCT_SMALL.items() if k != "kind"}, seed=0)
    h = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = task.embedding_reduce(h, {"attention_mask": mask})
    assert torch.equal(out, torch.stack([h[0, 2], h[1, 4]]))
    assert torch.equal(task.embedding_reduce(h, {"input_ids": mask}), h[:, -1])


def test_segmentation_reduce_pools_maps_and_token_sequences():
    task = get_task("segmentation", {k: v for k, v in SEGMENTATION_SMALL.items() if k != "kind"}, seed=0)
    maps = torch.randn(2, 3, 16, 32)
    assert task.embedding_reduce(maps, None).shape == (2, 3 * 8 * 8)
    tokens = torch.randn(2, 128, 5)
    pooled = task.embedding_reduce(tokens, None)
    assert pooled.shape == (2, 64 * 5)
    torch.testing.assert_close(pooled.reshape(2, 64, 5)[:, 0], tokens[:, :2].mean(dim=1))


def test_motion_reduce_keeps_the_focal_agents_valid_steps():
    task = get_task("motion", {k: v for k, v in MOTION_SMALL.items() if k != "kind"}, seed=0)
    out = torch.randn(2, 3, 4, 5)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 0, :2] = False
    rows = task.embedding_reduce(out, {"agents_mask": mask}).reshape(2, 4, 5)
    assert torch.equal(rows[1], out[1, 0]) and torch.equal(rows[0, 2:], out[0, 0, 2:])
    assert not rows[0, :2].any()
    latents = torch.randn(2, 4, 6)
    assert torch.equal(task.embedding_reduce(latents, {"agents_mask": mask}), latents.flatten(1))
