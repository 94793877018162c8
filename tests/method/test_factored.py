"""Tests for tarot_select.factored (per-layer Kronecker-factored gradient projections)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tarot_select.errors import TarotInputError
from tarot_select.factored import FactoredGradientFeaturizer, FactoredLayer, factor_dims
from tarot_select.featurize import Checkpoint
from tarot_select.gradients import AdamPreconditioner, per_sample_gradients

# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8)
        self.l2 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))


class CNN(nn.Module):
    """conv(bias) - BN - relu(inplace) - conv(stride 2, no bias) - relu - linear; inputs 2x6x6."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.c1(x)))
        h = F.relu(self.c2(h))
        return self.fc(h.flatten(1))


class SeqNet(nn.Module):
    """Conv1d, then a Linear applied twice on every position (repeated call), mean-pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).transpose(1, 2)  # (B, L, 4)
        h = torch.tanh(self.mix(torch.tanh(self.mix(h))))
        return self.head(h.mean(1))


class PadNet(nn.Module):
    """Convolutions with "same"/reflect, circular and dilated padding, and a Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect", dilation=2)
        self.b = nn.Conv2d(3, 4, (2, 3), stride=(2, 1), padding=(1, 0), padding_mode="circular")
        self.c = nn.Conv1d(4, 5, 3, padding="same")
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.b(torch.tanh(self.a(x)))).mean(2)
        return self.fc(torch.tanh(self.c(h)).mean(2))


def ce_loss(fwd, s):
    return F.cross_entropy(fwd(s[0]), s[1])


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = cls().double()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return m.eval()


def data(cls: type[nn.Module], n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = {MLP: (6,), CNN: (2, 6, 6), SeqNet: (2, 10), PadNet: (2, 7, 7)}[cls]
    return torch.randn((n, *shape), generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


def exact_in_layout(fz: FactoredGradientFeaturizer, model: nn.Module, batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Exact per-sample gradients: per layer (B, n_out, n_in) with the bias as last column; small group (B, n)."""
    names = list(fz.param_names)
    g = per_sample_gradients(model, ce_loss, batch, names, mode="loop")
    n = batch[0].shape[0]
    layers = []
    for layer in fz.layers:
        w = g[layer.param_names[0]].reshape(n, layer.n_out, -1)
        if layer.has_bias:
            w = torch.cat([w, g[layer.param_names[1]].reshape(n, layer.n_out, 1)], dim=2)
        layers.append(w)
    small = (
        torch.cat([g[p].reshape(n, -1) for p in fz.small.param_names], dim=1)
        if fz.small is not None
        else torch.zeros((n, 0), dtype=torch.float64)
    )
    return layers, small


# ----------------------------------------------------------------------------- (a) exactness


@pytest.mark.parametrize("cls", [MLP, CNN, SeqNet, PadNet])
def test_identity_factors_give_exact_per_sample_gradients(cls) -> None:
    model = seeded(cls)
    batch = data(cls)
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_kind="none")
    assert fz.layout == "concat" and fz.dim == fz.n_params
    z = fz.project_batch(batch)
    assert z.dtype == torch.float64 and z.shape == (7, fz.n_params)
    layers, small = exact_in_layout(fz, model, batch)
    ref = torch.cat([w.reshape(7, -1) for w in layers] + [small], dim=1)
    torch.testing.assert_close(z, ref, atol=1e-10, rtol=1e-8)
    assert ref.abs().max() > 1e-3  # not trivially zero


def test_cnn_layout_covers_every_parameter() -> None:
    model = seeded(CNN)
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=64)
    assert [layer.module for layer in fz.layers] == ["c1", "c2", "fc"]
    assert [layer.param_names for layer in fz.layers] == [
        ("c1.weight", "c1.bias"),
        ("c2.weight",),
        ("fc.weight", "fc.bias"),
    ]
    assert fz.small is not None and fz.small.param_names == ("bn.weight", "bn.bias")
    covered = sum(layer.n_params for layer in fz.layers) + fz.small.n_params
    assert covered == fz.n_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cls", [CNN, SeqNet])
@pytest.mark.parametrize("layout", ["sum", "concat"])
def test_random_factors_equal_kronecker_map_of_exact_gradient(cls, layout) -> None:
    """The hook computation equals (U_j ⊗ V_j) vec(exact gradient), block by block."""
    model = seeded(cls)
    batch = data(cls)
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=40, layout=layout, factor_dim=(3, 2), seed=3)
    z = fz.project_batch(batch)
    layers, small = exact_in_layout(fz, model, batch)
    ref = torch.zeros_like(z)
    for layer, x in zip(fz.layers, layers, strict=True):
        u, v = (t.double() for t in fz.factors(layer))
        u = u.reshape(layer.n_blocks, -1, layer.n_out)
        v = v.reshape(layer.n_blocks, -1, layer.n_in)
        blocks = torch.einsum("jao,nok,jbk->njab", u, x, v).reshape(7, -1)[:, : layer.width]
        ref[:, layer.offset : layer.offset + layer.width] += layer.scale * blocks
    if fz.small is not None:
        s = small if fz._small_projector is None else fz._small_projector.project(small).double()
        ref[:, fz.small.offset : fz.small.offset + fz.small.dim] += s
    torch.testing.assert_close(z, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [CNN, SeqNet, PadNet])
def test_countsketch_equals_hash_of_exact_gradient(cls) -> None:
    model = seeded(cls)
    batch = data(cls)
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=50, proj_kind="countsketch", seed=2)
    assert fz.layout == "sum" and fz.dim == 50
    z = fz.project_batch(batch)
    layers, small = exact_in_layout(fz, model, batch)
    ref = torch.zeros_like(z)
    for layer, x in zip(fz.layers, layers, strict=True):
        buckets, signs = fz._hash(layer, torch.device("cpu"))
        assert buckets.shape == (layer.n_params,) and int(buckets.max()) < 50
        ref.index_add_(1, buckets, x.reshape(7, -1) * signs.double())
    if fz.small is not None:
        ref += fz._small_projector.project(small).double()
    torch.testing.assert_close(z, ref, atol=1e-10, rtol=1e-8)


def test_factor_dims_rule() -> None:
    # 10-class head keeps its output side whole; a layer that fits is exact; total <= dim
    dims, d_small = factor_dims([(10, 128), (4, 5), (256, 2304)], 100, 1000)
    assert dims[1] == (4, 5)
    assert dims[0][0] == 10
    assert d_small == 100
    total = sum(a * b for a, b in dims) + d_small
    assert 990 <= total <= 1000
    with pytest.raises(TarotInputError, match="smaller than the number"):
        factor_dims([(3, 3), (3, 3)], 0, 1)


# ----------------------------------------------------------------------------- (b) JL scaling


@pytest.mark.parametrize(
    ("layout", "kind"), [("sum", "rademacher"), ("sum", "gaussian"), ("concat", "rademacher"), ("sum", "countsketch")]
)
def test_inner_products_preserved_in_expectation(layout, kind) -> None:
    model = seeded(CNN).float()
    x, y = data(CNN, n=8)
    x = x.float()
    exact = FactoredGradientFeaturizer(model, ce_loss, proj_kind="none").project_batch((x, y)).double()
    gram = exact @ exact.T
    ratios, errors = [], []
    for seed in range(24):
        fz = FactoredGradientFeaturizer(
            model, ce_loss, proj_dim=64, proj_kind=kind, layout=layout, factor_dim=4, seed=seed
        )
        z = fz.project_batch((x, y)).double()
        g_hat = z @ z.T
        ratios.append((torch.diag(g_hat) / torch.diag(gram)).mean().item())
        errors.append((torch.linalg.norm(g_hat - gram) / torch.linalg.norm(gram)).item())
    # a missing 1/sqrt(d) or sqrt(blocks) factor would be off by >= 2x
    assert abs(np.mean(ratios) - 1.0) < 0.1
    assert np.mean(errors) < 0.6


def test_more_dimensions_means_smaller_error() -> None:
    model = seeded(CNN)
    batch = data(CNN, n=8)
    exact = FactoredGradientFeaturizer(model, ce_loss, proj_kind="none").project_batch(batch)
    gram = exact @ exact.T

    def err(d: int) -> float:
        out = []
        for seed in range(6):
            z = FactoredGradientFeaturizer(model, ce_loss, proj_dim=d, factor_dim=4, seed=seed).project_batch(batch)
            out.append((torch.linalg.norm(z @ z.T - gram) / torch.linalg.norm(gram)).item())
        return float(np.mean(out))

    assert err(1024) < 0.5 * err(32)


# ----------------------------------------------------------------------------- (c) determinism


def test_same_seed_same_features_and_batch_size_invariance() -> None:
    model = seeded(CNN).float()
    x, y = data(CNN, n=11)
    x = x.float()
    ckpt = [Checkpoint(state_dict=model.state_dict())]
    a = FactoredGradientFeaturizer(model, ce_loss, proj_dim=50, seed=5)
    b = FactoredGradientFeaturizer(model, ce_loss, proj_dim=50, seed=5)
    whole = a.featurize([(x, y)], ckpt, progress=False)
    in_threes = b.featurize([(x[i : i + 3], y[i : i + 3]) for i in range(0, 11, 3)], ckpt, progress=False)
    singles = a.featurize([(x[i : i + 1], y[i : i + 1]) for i in range(11)], ckpt, progress=False)
    assert whole.shape == (11, 50) and whole.dtype == np.float32
    np.testing.assert_allclose(in_threes, whole, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(singles, whole, rtol=1e-4, atol=1e-6)
    other = FactoredGradientFeaturizer(model, ce_loss, proj_dim=50, seed=6).featurize([(x, y)], ckpt, progress=False)
    assert not np.allclose(other, whole)


def test_checkpoint_weights_and_file_output(tmp_path) -> None:
    model = seeded(MLP).float()
    x, y = data(MLP, n=6)
    x = x.float()
    other = {k: v + 0.1 for k, v in model.state_dict().items()}
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=24, seed=1)
    one = fz.featurize([(x, y)], [Checkpoint(state_dict=model.state_dict())], progress=False)
    ckpts = [Checkpoint(state_dict=model.state_dict(), weight=4.0), Checkpoint(state_dict=other, name="b")]
    both = fz.featurize([(x, y)], ckpts, progress=False)
    assert both.shape == (6, 48)
    np.testing.assert_allclose(both[:, :24], 2.0 * one, rtol=1e-5, atol=1e-7)
    assert not np.allclose(both[:, 24:], one)
    fs = fz.featurize_to_file(tmp_path / "f.npy", lambda: [(x[:4], y[:4]), (x[4:], y[4:])], 6, ckpts, progress=False)
    np.testing.assert_allclose(np.asarray(fs.array), both, rtol=1e-5, atol=1e-7)
    meta = json.loads((tmp_path / "f.json").read_text())
    assert meta["mode"] == "factored"
    assert meta["projector"]["kind"] == "factored-rademacher"
    assert meta["projector"]["layout"] == "sum"
    assert [entry["module"] for entry in meta["projector"]["layers"]] == ["l1", "l2"]
    # weights restored afterwards
    torch.testing.assert_close(model.state_dict()["l1.weight"], seeded(MLP).float().state_dict()["l1.weight"])


def test_layer_dataclass_and_dims() -> None:
    model = seeded(CNN)
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=100, factor_dim=(3, 5))
    assert fz.dim == 100
    c1 = fz.layers[0]
    assert isinstance(c1, FactoredLayer)
    assert (c1.n_out, c1.n_in, c1.d_out, c1.d_in) == (3, 2 * 9 + 1, 3, 5)
    assert c1.n_blocks == math.ceil(100 / 15) and c1.width == 100
    concat = FactoredGradientFeaturizer(model, ce_loss, proj_dim=100, layout="concat")
    assert concat.dim <= 100
    assert concat.dim == sum(layer.width for layer in concat.layers) + concat.small.dim


# ----------------------------------------------------------------------------- (d) errors


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, groups=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x)) * self.scale


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_unsupported_layers_and_params() -> None:
    with pytest.raises(TarotInputError, match="groups=2"):
        FactoredGradientFeaturizer(Grouped(), ce_loss, proj_dim=16)
    FactoredGradientFeaturizer(Grouped(), ce_loss, proj_dim=16, params=["fc.*", "conv.bias"])  # bias alone is fine
    with pytest.raises(TarotInputError, match=r"unsupported selected parameter.*norm\.weight"):
        FactoredGradientFeaturizer(WithLayerNorm(), ce_loss, proj_dim=16)
    fz = FactoredGradientFeaturizer(WithLayerNorm().eval(), ce_loss, proj_dim=16, params=["fc.*"])
    assert fz.param_names == ["fc.weight", "fc.bias"]
    with pytest.raises(TarotInputError, match="shared"):
        FactoredGradientFeaturizer(Tied(), ce_loss, proj_dim=16)
    with pytest.raises(TarotInputError, match="not supported by factored|shared"):
        FactoredGradientFeaturizer(Tied(), ce_loss, proj_dim=16, params=["b.*", "a.weight"])
    conv3d = nn.Sequential(nn.Conv3d(1, 2, 2), nn.Flatten(), nn.Linear(2, 5))
    FactoredGradientFeaturizer(conv3d, ce_loss, proj_dim=16)  # Kronecker kinds take any ConvNd
    with pytest.raises(TarotInputError, match="countsketch.*Conv2d"):
        FactoredGradientFeaturizer(conv3d, ce_loss, proj_dim=16, proj_kind="countsketch")
    bn = CNN()
    bn.bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(TarotInputError, match="running statistics"):
        FactoredGradientFeaturizer(bn, ce_loss, proj_dim=16)


def test_bad_arguments() -> None:
    model = seeded(MLP)
    with pytest.raises(TarotInputError, match="needs proj_dim"):
        FactoredGradientFeaturizer(model, ce_loss)
    with pytest.raises(TarotInputError, match="unknown factored projection kind"):
        FactoredGradientFeaturizer(model, ce_loss, proj_dim=8, proj_kind="dense")
    with pytest.raises(TarotInputError, match="layout 'sum'"):
        FactoredGradientFeaturizer(model, ce_loss, proj_dim=8, proj_kind="countsketch", layout="concat")
    with pytest.raises(TarotInputError, match="layout 'concat'"):
        FactoredGradientFeaturizer(model, ce_loss, proj_kind="none", layout="sum")
    with pytest.raises(TarotInputError, match="keeps all"):
        FactoredGradientFeaturizer(model, ce_loss, proj_kind="none", proj_dim=3)
    with pytest.raises(TarotInputError, match="unknown factored layout"):
        FactoredGradientFeaturizer(model, ce_loss, proj_dim=8, layout="stack")
    with pytest.raises(TarotInputError, match="factor_dim"):
        FactoredGradientFeaturizer(model, ce_loss, proj_dim=8, factor_dim=0)
    with pytest.raises(TarotInputError, match="factor_dim"):
        FactoredGradientFeaturizer(model, ce_loss, proj_dim=8, factor_dim=(2, 2, 2))


def test_adam_preconditioner_is_refused() -> None:
    model = seeded(MLP)
    x, y = data(MLP)
    names = [n for n, _ in model.named_parameters()]
    pre = AdamPreconditioner(
        {n: torch.zeros_like(p) for n, p in model.named_parameters()},
        {n: torch.ones_like(p) for n, p in model.named_parameters()},
    )
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=8, params=names)
    ckpt = Checkpoint(state_dict=model.state_dict(), preconditioner=pre)
    with pytest.raises(TarotInputError, match="Adam preconditioning cannot be applied"):
        fz.featurize([(x, y)], [ckpt], progress=False)
    with pytest.raises(TarotInputError, match="Adam preconditioning cannot be applied"):
        fz.metadata([ckpt])


def test_countsketch_applies_adam_preconditioner_to_exact_gradients() -> None:
    model = seeded(CNN)
    batch = data(CNN)
    g = torch.Generator().manual_seed(4)
    named = dict(model.named_parameters())
    pre = AdamPreconditioner(
        {n: 0.01 * torch.randn(p.shape, generator=g) for n, p in named.items()},
        {n: 1e-4 * torch.rand(p.shape, generator=g) for n, p in named.items()},
    )
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=40, proj_kind="countsketch", seed=1)
    ckpt = Checkpoint(state_dict=model.state_dict(), preconditioner=pre, weight=0.25)
    z = fz.featurize([batch], [ckpt], progress=False)
    grads = pre(per_sample_gradients(model, ce_loss, batch, list(fz.param_names), mode="loop"))
    ref = torch.zeros((7, 40), dtype=torch.float64)
    for layer in fz.layers:
        w = grads[layer.param_names[0]].reshape(7, layer.n_out, -1)
        if layer.has_bias:
            w = torch.cat([w, grads[layer.param_names[1]].reshape(7, layer.n_out, 1)], dim=2)
        buckets, signs = fz._hash(layer, torch.device("cpu"))
        ref.index_add_(1, buckets, w.reshape(7, -1).double() * signs.double())
    small = torch.cat([grads[p].reshape(7, -1) for p in fz.small.param_names], dim=1)
    ref += fz._small_projector.project(small).double()
    np.testing.assert_allclose(z, 0.5 * ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert fz.metadata([ckpt])["checkpoints"][0]["preconditioner"] == "adam"


def test_training_mode_batch_norm_and_bad_loss_fns() -> None:
    model = seeded(CNN)
    batch = data(CNN)
    fz = FactoredGradientFeaturizer(model, ce_loss, proj_dim=16)
    model.train()
    with pytest.raises(TarotInputError, match="training mode"):
        fz.project_batch(batch)
    model.eval()

    def twice(fwd, s):
        return F.cross_entropy(fwd(s[0]) + fwd(s[0]), s[1])

    with pytest.raises(TarotInputError, match="exactly once"):
        FactoredGradientFeaturizer(model, twice, proj_dim=16).project_batch(batch)

    class BatchSecond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(7, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.T).T  # the layer sees (features, batch)

    bs = BatchSecond().double()
    with pytest.raises(TarotInputError, match="batch-first"):
        FactoredGradientFeaturizer(bs, ce_loss, proj_dim=8).project_batch(
            (torch.randn(7, 5, dtype=torch.float64), torch.zeros(7, dtype=torch.long))
        )
