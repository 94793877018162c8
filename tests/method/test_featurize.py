"""Tests for tarot_select.featurize (per-sample gradient features over checkpoints)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tarot_select.errors import TarotInputError
from tarot_select.featurize import Checkpoint, GradientFeaturizer, combine_checkpoints
from tarot_select.gradients import (
    AdamPreconditioner,
    flatten_gradients,
    per_sample_gradients,
    select_parameters,
)
from tarot_select.project import DenseProjector, IdentityProjector


class SmallCNN(nn.Module):
    """conv(1->4, 3x3) + relu + maxpool(2) + linear(36 -> 10), inputs 1x8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(h.flatten(1))


def ce_loss(fwd, s):
    return F.cross_entropy(fwd(s[0]), s[1])


def make_model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def make_data(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 1, 8, 8), generator=g), torch.randint(0, 10, (n,), generator=g)


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def manual_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Independent reference: autograd.grad of each single-sample loss, flattened (n, P)."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def perturbed_state(model: nn.Module, seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- gradients


def test_vmap_equals_loop_equals_manual() -> None:
    model = make_model()
    x, y = make_data(7)
    names = select_parameters(model)
    assert names == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    gv = per_sample_gradients(model, ce_loss, (x, y), names, mode="vmap")
    gl = per_sample_gradients(model, ce_loss, (x, y), names, mode="loop")
    for n in names:
        assert gv[n].shape == (7, *dict(model.named_parameters())[n].shape)
        torch.testing.assert_close(gv[n], gl[n], atol=1e-5, rtol=1e-4)
    flat = flatten_gradients(gv, names)
    assert flat.shape == (7, sum(p.numel() for p in model.parameters()))
    ref = manual_grads(model, x, y, names)
    torch.testing.assert_close(flat, ref, atol=1e-5, rtol=1e-4)
    # per-sample gradients differ between samples (not a batch mean)
    assert not torch.allclose(flat[0], flat[1])
    # their mean is the gradient of the batch-mean loss
    loss = F.cross_entropy(model(x), y)
    full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    torch.testing.assert_close(flat.mean(0), full, atol=1e-5, rtol=1e-4)


def test_dict_batch_and_kwargs_forward() -> None:
    model = make_model(1)
    x, y = make_data(4)
    names = select_parameters(model, ["fc.*"])

    def loss(fwd, s):
        return F.cross_entropy(fwd(x=s["img"]), s["label"])

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    wrapped = Wrap(model).eval()
    wnames = ["inner." + n for n in names]
    gv = per_sample_gradients(wrapped, loss, {"img": x, "label": y}, wnames, mode="vmap")
    gl = per_sample_gradients(wrapped, loss, {"img": x, "label": y}, wnames, mode="loop")
    ref = manual_grads(model, x, y, names)
    torch.testing.assert_close(flatten_gradients(gv, wnames), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(flatten_gradients(gl, wnames), ref, atol=1e-5, rtol=1e-4)


def test_select_parameters_patterns_and_frozen() -> None:
    model = make_model()
    model.conv.bias.requires_grad_(False)
    assert select_parameters(model) == ["conv.weight", "fc.weight", "fc.bias"]
    assert select_parameters(model, ["fc.*"]) == ["fc.weight", "fc.bias"]
    assert select_parameters(model, ["*.weight"]) == ["conv.weight", "fc.weight"]
    assert select_parameters(model, "conv.*") == ["conv.weight"]  # frozen bias excluded
    with pytest.raises(TarotInputError, match="attn"):
        select_parameters(model, ["attn.*"])


def test_bad_gradient_inputs() -> None:
    model = make_model()
    x, y = make_data(3)
    with pytest.raises(TarotInputError):
        per_sample_gradients(model, ce_loss, (x, y), ["nope.weight"])
    with pytest.raises(TarotInputError):
        per_sample_gradients(model, ce_loss, (x, y), ["fc.bias"], mode="jit")
    with pytest.raises(TarotInputError):
        per_sample_gradients(model, ce_loss, (x, y[:2]), ["fc.bias"])

    def per_sample_loss(fwd, s):
        return F.cross_entropy(fwd(s[0]), s[1], reduction="none").expand(2)

    with pytest.raises(TarotInputError):
        per_sample_gradients(model, per_sample_loss, (x, y), ["fc.bias"], mode="loop")
    with pytest.raises(TarotInputError):
        flatten_gradients({"a": torch.zeros(2, 3)}, ["a", "b"])


# ----------------------------------------------------------------------------- Adam


def test_adam_preconditioner_formula() -> None:
    m = {"w": torch.tensor([[0.1, -0.2], [0.0, 0.3]]), "b": torch.tensor([0.5])}
    v = {"w": torch.tensor([[0.01, 0.04], [0.0, 0.09]]), "b": torch.tensor([0.25])}
    pre = AdamPreconditioner(m, v, betas=(0.8, 0.9), eps=1e-3)
    g = {
        "w": torch.tensor([[[1.0, 2.0], [-1.0, 0.0]], [[0.0, 0.5], [3.0, -2.0]]]),
        "b": torch.tensor([[1.0], [-4.0]]),
    }
    out = pre(g)
    for name in ("w", "b"):
        for i in range(2):
            gi = g[name][i]
            m2 = 0.8 * m[name] + 0.2 * gi
            v2 = 0.9 * v[name] + 0.1 * gi**2
            torch.testing.assert_close(out[name][i], m2 / (v2 + 1e-3).sqrt())
    # a hand-computed entry: w[0,0,0]: m'=0.8*0.1+0.2*1=0.28, v'=0.9*0.01+0.1=0.109
    assert out["w"][0, 0, 0].item() == pytest.approx(0.28 / math.sqrt(0.109 + 1e-3), rel=1e-6)  # LESS: sqrt(v+eps)
    with pytest.raises(TarotInputError):
        pre({"other": torch.zeros(1, 1)})
    with pytest.raises(TarotInputError):
        AdamPreconditioner(m, {"w": v["w"]})
    with pytest.raises(TarotInputError):
        AdamPreconditioner(m, v, betas=(1.0, 0.9))
    with pytest.raises(TarotInputError):
        AdamPreconditioner(m, v, eps=0.0)


def test_from_optimizer_state_maps_names_after_steps() -> None:
    model = make_model()
    model.conv.bias.requires_grad_(False)  # frozen params are not in the optimizer
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.85, 0.99), eps=1e-6)
    x, y = make_data(8)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    names = ["conv.weight", "fc.bias"]
    pre = AdamPreconditioner.from_optimizer_state(opt.state_dict(), model, names)
    params = dict(model.named_parameters())
    for n in names:
        torch.testing.assert_close(pre.exp_avg[n], opt.state[params[n]]["exp_avg"])
        torch.testing.assert_close(pre.exp_avg_sq[n], opt.state[params[n]]["exp_avg_sq"])
    assert pre.betas == (0.85, 0.99) and pre.eps == pytest.approx(1e-6)
    # a frozen parameter has no Adam state
    with pytest.raises(TarotInputError):
        AdamPreconditioner.from_optimizer_state(opt.state_dict(), model, ["conv.bias"])
    # optimizer built over a different parameter list -> refused, not silently misnamed
    other = torch.optim.Adam([model.fc.weight], lr=1e-2)
    F.cross_entropy(model(x), y).backward()
    other.step()
    with pytest.raises(TarotInputError):
        AdamPreconditioner.from_optimizer_state(other.state_dict(), model, ["fc.weight"])


def test_from_optimizer_state_with_named_parameters() -> None:
    model = make_model()
    try:
        opt = torch.optim.Adam(list(model.named_parameters()), lr=1e-2)
    except (TypeError, ValueError):  # pragma: no cover - old torch without named params
        pytest.skip("this torch does not accept named parameters in optimizers")
    x, y = make_data(8)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    pre = AdamPreconditioner.from_optimizer_state(opt.state_dict(), model, ["fc.weight"])
    torch.testing.assert_close(pre.exp_avg["fc.weight"], opt.state[model.fc.weight]["exp_avg"])


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_validation(tmp_path) -> None:
    sd = make_model().state_dict()
    with pytest.raises(TarotInputError):
        Checkpoint()
    with pytest.raises(TarotInputError):
        Checkpoint(state_dict=sd, path=str(tmp_path / "a.pt"))
    for w in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(TarotInputError):
            Checkpoint(state_dict=sd, weight=w)
    with pytest.raises(TarotInputError):
        Checkpoint(path=str(tmp_path / "missing.pt")).load()


def test_checkpoint_combination_is_weighted_trajectory_inner_product(
    tmp_path,
) -> None:
    model = make_model()
    x, y = make_data(9)
    s1, s2 = perturbed_state(model, 1), perturbed_state(model, 2)
    torch.save(s2, tmp_path / "ckpt2.pt")
    w1, w2 = 0.5, 2.0
    ckpts = [
        Checkpoint(state_dict=s1, weight=w1, name="a"),
        Checkpoint(path=str(tmp_path / "ckpt2.pt"), weight=w2),
    ]
    names = select_parameters(model)
    n_params = sum(p.numel() for p in model.parameters())
    feat = GradientFeaturizer(model, ce_loss, IdentityProjector(n_params))
    phi = feat.featurize(batches_of(x, y, 4), ckpts, progress=False)
    assert phi.shape == (9, 2 * n_params) and phi.dtype == np.float32

    ref_model = make_model()
    ref_model.load_state_dict(s1)
    g1 = manual_grads(ref_model, x, y, names).double()
    ref_model.load_state_dict(s2)
    g2 = manual_grads(ref_model, x, y, names).double()
    gram = torch.from_numpy(phi).double() @ torch.from_numpy(phi).double().T
    expected = w1 * g1 @ g1.T + w2 * g2 @ g2.T
    torch.testing.assert_close(gram, expected, rtol=1e-4, atol=1e-5)
    # and block by block: sqrt(w_t) g_t
    torch.testing.assert_close(torch.from_numpy(phi[:, :n_params]).double(), math.sqrt(w1) * g1, rtol=1e-4, atol=1e-5)
    # the checkpoints really differ (the test would be vacuous otherwise)
    assert not torch.allclose(g1, g2, atol=1e-3)


def test_projected_features_shapes_and_loop_mode_agree() -> None:
    model = make_model()
    x, y = make_data(10)
    ckpts = [
        Checkpoint(state_dict=perturbed_state(model, 3)),
        Checkpoint(state_dict=perturbed_state(model, 4)),
    ]
    fv = GradientFeaturizer(model, ce_loss, proj_dim=32, proj_kind="gaussian", seed=1)
    fl = GradientFeaturizer(model, ce_loss, proj_dim=32, proj_kind="gaussian", seed=1, mode="loop")
    a = fv.featurize(batches_of(x, y, 3), ckpts, progress=False)
    b = fl.featurize(lambda: iter(batches_of(x, y, 4)), ckpts, n_samples=10, progress=False)
    assert a.shape == (10, 64)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # projection of the exact identity features with the same projector
    fid = GradientFeaturizer(model, ce_loss, proj_kind="none")
    full = fid.featurize(batches_of(x, y), ckpts[:1], progress=False)
    z = fv.projector.project(torch.from_numpy(full)).numpy()
    np.testing.assert_allclose(a[:, :32], z, atol=1e-5, rtol=1e-4)


def test_param_subset_restricts_features() -> None:
    model = make_model()
    x, y = make_data(6)
    feat = GradientFeaturizer(model, ce_loss, proj_kind="none", params=["fc.*"])
    assert feat.param_names == ["fc.weight", "fc.bias"]
    assert feat.n_params == 36 * 10 + 10 and feat.projector.in_dim == 370
    phi = feat.featurize(batches_of(x, y), [Checkpoint(state_dict=model.state_dict())], progress=False)
    assert phi.shape == (6, 370)
    ref = manual_grads(model, x, y, ["fc.weight", "fc.bias"]).numpy()
    np.testing.assert_allclose(phi, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(TarotInputError):
        GradientFeaturizer(model, ce_loss, DenseProjector(371, 8), params=["fc.*"])


def test_preconditioner_applied_before_projection() -> None:
    model = make_model()
    x, y = make_data(5)
    names = select_parameters(model, ["fc.*"])
    g = torch.Generator().manual_seed(0)
    m = {n: 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if n in names}
    v = {n: 1e-4 * torch.rand(p.shape, generator=g) for n, p in model.named_parameters() if n in names}
    pre = AdamPreconditioner(m, v, betas=(0.9, 0.999), eps=1e-8)
    feat = GradientFeaturizer(model, ce_loss, proj_dim=16, seed=3, params=["fc.*"])
    phi = feat.featurize(
        batches_of(x, y),
        [Checkpoint(state_dict=model.state_dict(), preconditioner=pre, weight=4.0)],
        progress=False,
    )
    raw = manual_grads(model, x, y, names)
    parts, start = [], 0
    for n in names:
        k = m[n].numel()
        gi = raw[:, start : start + k].reshape(len(x), *m[n].shape)
        mm = 0.9 * m[n] + 0.1 * gi
        vv = 0.999 * v[n] + 0.001 * gi**2
        parts.append((mm / (vv + 1e-8).sqrt()).reshape(len(x), -1))
        start += k
    expected = 2.0 * feat.projector.project(torch.cat(parts, 1)).numpy()  # sqrt(4) = 2
    np.testing.assert_allclose(phi, expected, rtol=1e-3, atol=1e-4)


def test_model_state_and_mode_restored() -> None:
    model = make_model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    x, y = make_data(4)
    feat = GradientFeaturizer(model, ce_loss, proj_dim=8)
    feat.featurize(batches_of(x, y), [Checkpoint(state_dict=perturbed_state(model, 5))], progress=False)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # also after a failure half way (wrong n_samples)
    with pytest.raises(TarotInputError):
        feat.featurize(
            batches_of(x, y),
            [Checkpoint(state_dict=perturbed_state(model, 6))],
            n_samples=3,
            progress=False,
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training


def test_a_partial_checkpoint_loads_over_the_model_and_saves_only_what_it_overwrites(monkeypatch) -> None:
    """Adapter-style checkpoints: only the differentiated parameters (here ``fc``) are in the
    checkpoint; the rest of the model keeps its own weights, and the restore copies only ``fc``."""
    model = make_model()
    x, y = make_data(6)
    before = copy.deepcopy(model.state_dict())
    partial = {k: v for k, v in perturbed_state(model, 4).items() if k.startswith("fc.")}
    feat = GradientFeaturizer(model, ce_loss, proj_kind="none", params=["fc.*"])
    copied = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if kwargs.get("copy"):
            copied.append(tuple(self.shape))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    phi = feat.featurize(batches_of(x, y), [Checkpoint(state_dict=partial)], progress=False)
    monkeypatch.undo()
    assert sorted(copied) == sorted(tuple(v.shape) for v in partial.values())  # not the conv weights
    reference = make_model()
    reference.load_state_dict({**before, **partial})
    np.testing.assert_allclose(phi, manual_grads(reference, x, y, ["fc.weight", "fc.bias"]).numpy(), atol=1e-5, rtol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(TarotInputError, match="lacks differentiated parameters"):
        GradientFeaturizer(model, ce_loss, proj_dim=8).featurize(
            batches_of(x, y), [Checkpoint(state_dict=partial)], progress=False
        )
    with pytest.raises(TarotInputError, match="unexpected keys"):
        feat.featurize(batches_of(x, y), [Checkpoint(state_dict={**partial, "lora.A": torch.zeros(2)})], progress=False)


def test_checkpoint_aliasing_the_live_model_keeps_its_values() -> None:
    model = make_model()
    x, y = make_data(5)
    other = perturbed_state(model, 9)
    feat = GradientFeaturizer(model, ce_loss, proj_dim=8)
    snapshot = copy.deepcopy(model.state_dict())
    aliased = [Checkpoint(state_dict=other), Checkpoint(state_dict=model.state_dict())]
    copied = [Checkpoint(state_dict=other), Checkpoint(state_dict=snapshot)]
    a = feat.featurize(batches_of(x, y), aliased, progress=False)
    b = feat.featurize(batches_of(x, y), copied, progress=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, :8], a[:, 8:])


def test_batches_must_be_replayable_and_ordered() -> None:
    model = make_model()
    x, y = make_data(6)
    feat = GradientFeaturizer(model, ce_loss, proj_dim=8)
    ckpts = [Checkpoint(state_dict=model.state_dict()), Checkpoint(state_dict=model.state_dict())]
    with pytest.raises(TarotInputError, match="one-shot"):
        feat.featurize(iter(batches_of(x, y)), ckpts, progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True)
    with pytest.raises(TarotInputError, match="shuffles"):
        feat.featurize(loader, ckpts, progress=False)
    ordered = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    phi = feat.featurize(ordered, ckpts, progress=False)
    # identical checkpoints give identical blocks
    np.testing.assert_array_equal(phi[:, :8], phi[:, 8:])
    with pytest.raises(TarotInputError):
        feat.featurize(batches_of(x, y), [], progress=False)


# ----------------------------------------------------------------------------- files


def test_featurize_to_file(tmp_path) -> None:
    model = make_model()
    x, y = make_data(11)
    ckpts = [
        Checkpoint(state_dict=perturbed_state(model, 7), weight=1e-3, name="epoch1"),
        Checkpoint(state_dict=perturbed_state(model, 8), weight=5e-4, name="epoch2"),
    ]
    feat = GradientFeaturizer(model, ce_loss, proj_dim=16, proj_kind="rademacher", seed=2, params=["conv.*", "fc.bias"])
    out = tmp_path / "feats" / "train.npy"
    fs = feat.featurize_to_file(
        out, lambda: batches_of(x, y, 4), 11, ckpts, extra_meta={"split": "train"}, progress=False
    )
    assert fs.array.shape == (11, 32) and fs.array.dtype == np.float32
    in_mem = feat.featurize(batches_of(x, y, 4), ckpts, progress=False)
    np.testing.assert_allclose(np.asarray(fs.array), in_mem, rtol=1e-6, atol=1e-7)
    meta = json.loads((tmp_path / "feats" / "train.json").read_text())
    assert meta["shape"] == [11, 32] and meta["dtype"] == "float32"
    assert meta["projector"]["kind"] == "rademacher" and meta["projector"]["dim"] == 16
    assert meta["projector"]["seed"] == 2 and meta["projector"]["in_dim"] == 36 + 4 + 10
    assert meta["param_names"] == ["conv.weight", "conv.bias", "fc.bias"] and meta["n_params"] == 50
    assert meta["checkpoints"] == [
        {"name": "epoch1", "weight": 1e-3, "dim": 16, "path": None, "preconditioner": None},
        {"name": "epoch2", "weight": 5e-4, "dim": 16, "path": None, "preconditioner": None},
    ]
    assert meta["combine"] == "concat_sqrt_weight" and meta["mode"] == "vmap" and meta["split"] == "train"
    assert fs.checkpoint_dims == [16, 16]
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.json", "train.npy"]

    # float16 storage
    fs16 = feat.featurize_to_file(
        tmp_path / "f16.npy", lambda: batches_of(x, y), 11, ckpts, dtype="float16", progress=False
    )
    assert fs16.array.dtype == np.float16
    np.testing.assert_allclose(np.asarray(fs16.array, dtype=np.float32), in_mem, rtol=2e-3, atol=1e-6)

    # wrong n_samples: nothing is left behind, not even temporary files
    bad = tmp_path / "bad" / "x.npy"
    with pytest.raises(TarotInputError):
        feat.featurize_to_file(bad, lambda: batches_of(x, y), 12, ckpts, progress=False)
    assert list(bad.parent.iterdir()) == []
    with pytest.raises(TarotInputError):
        feat.featurize_to_file(bad, lambda: batches_of(x, y), 11, ckpts, dtype="int8", progress=False)
    with pytest.raises(TarotInputError):
        feat.featurize_to_file(bad, lambda: batches_of(x, y), 11, ckpts, extra_meta={"n_params": 1}, progress=False)


def test_sum_combination_equals_the_projection_of_the_summed_checkpoint_gradients() -> None:
    """Eq. 4 then Eq. 6: sum_t P g_t = P sum_t g_t, rebuilt from the stored sqrt(w_t)-scaled blocks."""
    model = make_model()
    x, y = make_data(7)
    states = [perturbed_state(model, 11), perturbed_state(model, 12)]
    ckpts = [Checkpoint(state_dict=s, weight=w) for s, w in zip(states, (0.3, 0.05))]
    feat = GradientFeaturizer(model, ce_loss, proj_dim=16, seed=5)
    stored = feat.featurize(batches_of(x, y), ckpts, progress=False)
    names = feat.param_names
    grads = []
    for s in states:
        m = make_model()
        m.load_state_dict(s)
        grads.append(manual_grads(m, x, y, names))
    by_hand = feat.projector.project(grads[0] + grads[1]).numpy()
    np.testing.assert_allclose(combine_checkpoints(stored, [16, 16], [0.3, 0.05], "sum"), by_hand, rtol=1e-4, atol=1e-5)
    lr_sum = feat.projector.project(0.3 * grads[0] + 0.05 * grads[1]).numpy()
    np.testing.assert_allclose(
        combine_checkpoints(stored, [16, 16], [0.3, 0.05], "lr_sum"), lr_sum, rtol=1e-4, atol=1e-6
    )
    assert combine_checkpoints(stored, [16, 16], [0.3, 0.05], "concat") is stored
    with pytest.raises(TarotInputError, match="different widths"):
        combine_checkpoints(stored, [10, 22], [0.3, 0.05], "sum")
    with pytest.raises(TarotInputError, match="unknown checkpoint combination"):
        combine_checkpoints(stored, [16, 16], [0.3, 0.05], "mean")
