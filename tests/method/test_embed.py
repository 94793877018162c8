"""JVP embeddings (:mod:`tarot_select.embed`): equal to an independent ``torch.func.jvp`` of the
truncated model, blind to later blocks, per sample, seeded, projected as documented, and
careful with bad input and with the model's state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from tarot_select import TarotInputError
from tarot_select.embed import JVPEmbedder, pool_feature_maps
from tarot_select.project import make_projector

BLOCKS = ["block0", "block1", "block2"]


class TinyMLP(nn.Module):
    """Linear-ReLU, Linear-ReLU, Linear; ``calls`` counts the forward calls of each block."""

    def __init__(self, d_in: int = 5, hidden: int = 6, n_out: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block0 = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.block1 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.block2 = nn.Linear(hidden, n_out)
        self.unused = nn.Linear(2, 2)  # has weights, never called
        self.calls = {b: 0 for b in BLOCKS}
        for b in BLOCKS:
            self.get_submodule(b).register_forward_hook(self._count(b))

    def _count(self, name):
        def hook(module, args, output):
            self.calls[name] += 1

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(self.block0(x)))


def loss_fn(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


@pytest.fixture
def model() -> TinyMLP:
    return TinyMLP()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(7, 5, generator=g), torch.randint(0, 3, (7,), generator=g)


def batches_of(data, size):
    x, y = data
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def reference_jvp(model: nn.Module, blocks: list[str], tangent: dict[str, torch.Tensor], x: torch.Tensor):
    """``J h v`` of the truncated model ``blocks[-1](... blocks[0](x))`` by ``torch.func.jvp``."""
    names = list(tangent)
    primals = {n: p.detach() for n, p in model.named_parameters() if n in tangent}

    def truncated(params: dict[str, torch.Tensor]) -> torch.Tensor:
        h = x
        for b in blocks:
            own = {n[len(b) + 1 :]: params[n] for n in names if n.startswith(b + ".")}
            h = functional_call(model.get_submodule(b), own, (h,))
        return h

    _, tan = jvp(truncated, (primals,), ({n: tangent[n] for n in names},))
    return tan


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_embedding_equals_torch_func_jvp_of_the_truncated_model(model, data, n_blocks):
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=n_blocks, n_tangents=2, dim=1000)
    out = emb.embed(batches_of(data, 4))
    assert out.shape == (7, 12) and out.dtype == np.float32 and emb.out_dim == 12
    assert emb.metadata()["projected"] is False and emb.projector is None
    tangents = emb.tangents()
    want = torch.cat([reference_jvp(model, BLOCKS[:n_blocks], t, data[0]) for t in tangents], dim=1)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(out).max() > 0.1  # not trivially zero


def test_tangents_cover_exactly_the_trainable_parameters_of_the_used_blocks(model):
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2, n_tangents=3)
    tangents = emb.tangents()
    assert len(tangents) == 3
    assert [list(t) for t in tangents] == [["block0.0.weight", "block0.0.bias", "block1.0.weight", "block1.0.bias"]] * 3
    assert emb.n_params == 5 * 6 + 6 + 6 * 6 + 6
    flat = torch.cat([v.flatten() for t in tangents for v in t.values()])
    assert abs(float(flat.mean())) < 0.2 and 0.8 < float(flat.std()) < 1.2  # standard normal
    assert not torch.equal(tangents[0]["block0.0.weight"], tangents[1]["block0.0.weight"])
    model.block1[0].weight.requires_grad_(False)  # frozen: no tangent on it
    assert "block1.0.weight" not in JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2).tangents()[0]


def test_later_blocks_change_nothing_and_are_never_run(model, data):
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, dim=1000)
    before = emb.embed(batches_of(data, 7))
    assert model.calls == {"block0": 2, "block1": 0, "block2": 0}  # one forward per tangent, stopped at block0
    with torch.no_grad():
        model.block1[0].weight.mul_(-3.0).add_(1.0)
        model.block2.weight.normal_()
    np.testing.assert_array_equal(
        JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, dim=1000).embed(batches_of(data, 7)), before
    )
    with torch.no_grad():
        model.block0[0].weight.mul_(2.0)  # a used block's weights do change it
    assert not np.allclose(JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, dim=1000).embed(batches_of(data, 7)), before)


def test_rows_do_not_depend_on_the_batching(model, data):
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=3, dim=1000)
    one = emb.embed(batches_of(data, 1))
    seven = emb.embed(batches_of(data, 7))
    three = emb.embed(lambda: iter(batches_of(data, 3)), n_samples=7)  # a factory works too
    np.testing.assert_allclose(one, seven, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(three, seven, rtol=1e-5, atol=1e-6)
    assert len({tuple(r) for r in np.round(seven, 4)}) == 7  # every sample its own row


def test_seeded_and_the_seed_matters(model, data):
    a = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2, seed=3).embed(batches_of(data, 4))
    b = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2, seed=3).embed(batches_of(data, 4))
    c = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2, seed=4).embed(batches_of(data, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "countsketch"])
def test_projection_is_make_projector_of_the_unprojected_jvp(model, data, kind):
    raw = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2, n_tangents=2, proj_kind="none", dim=4, seed=5)
    unprojected = raw.embed(batches_of(data, 4))
    assert unprojected.shape == (7, 12) and raw.out_dim == 12  # "none": no projection whatever dim says
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2, n_tangents=2, proj_kind=kind, dim=4, seed=5)
    out = emb.embed(batches_of(data, 4))
    assert out.shape == (7, 4) and emb.out_dim == 4
    want = make_projector(kind, 12, 4, 5).project(torch.from_numpy(unprojected)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    meta = emb.metadata()
    assert meta["projected"] is True and meta["projector"] == make_projector(kind, 12, 4, 5).metadata()
    assert meta["in_dim"] == 12 and meta["width_per_tangent"] == 6 and meta["out_dim"] == 4
    assert meta["blocks"] == ["block0", "block1"] and meta["n_params"] == emb.n_params and meta["reduce"] == "flatten"
    assert json.loads(json.dumps(meta)) == meta


def test_reduce_sees_the_output_tangent_and_the_batch(model, data):
    seen = []

    def first_unit(tangent, batch):
        seen.append((tuple(tangent.shape), len(batch[0])))
        return tangent[:, :1] * 2.0

    full = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, dim=1000).embed(batches_of(data, 4))
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, dim=1000, reduce=first_unit)
    out = emb.embed(batches_of(data, 4))
    np.testing.assert_allclose(out, 2.0 * full[:, [0, 6]], rtol=1e-6)
    assert seen[:2] == [((4, 6), 4), ((4, 6), 4)] and emb.metadata()["reduce"].endswith("first_unit")


def test_a_tuple_output_uses_its_first_tensor():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x), {"aux": x}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    net = Net()
    x = torch.randn(4, 3)
    emb = JVPEmbedder(net, lambda fwd, b: fwd(b).sum(), ["pair"], n_blocks=1, n_tangents=1)
    out = emb.embed([x])
    v = emb.tangents()[0]
    np.testing.assert_allclose(out, (x @ v["pair.lin.weight"].T + v["pair.lin.bias"]).numpy(), rtol=1e-5, atol=1e-6)


def test_an_except_exception_in_the_loss_does_not_swallow_the_stop(model, data):
    def guarded(forward, batch):
        try:
            return loss_fn(forward, batch)
        except Exception:  # noqa: BLE001 - what careless task code does
            return torch.zeros(())

    ok = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1).embed(batches_of(data, 7))
    np.testing.assert_array_equal(JVPEmbedder(model, guarded, BLOCKS, n_blocks=1).embed(batches_of(data, 7)), ok)


def test_model_weights_and_mode_are_restored_and_no_gradient_is_taken(model, data):
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2).embed(batches_of(data, 4))
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2).embed(batches_of(data, 4))
    assert not model.training


def test_eval_mode_is_used_during_the_embedding(data):
    class Dropper(TinyMLP):
        def forward(self, x):
            return self.block2(F.dropout(self.block1(self.block0(x)), 0.5, self.training))

    net = Dropper().train()
    a = JVPEmbedder(net, loss_fn, BLOCKS, n_blocks=3).embed(batches_of(data, 7))
    b = JVPEmbedder(net, loss_fn, BLOCKS, n_blocks=3).embed(batches_of(data, 7))
    np.testing.assert_array_equal(a, b)  # no dropout noise
    assert net.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_blocks": 4}, r"n_blocks=4 exceeds the model's 3 blocks"),
        ({"n_tangents": 0}, "n_tangents must be a positive integer, got 0"),
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"n_blocks": True}, "n_blocks must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"proj_kind": "sparse"}, "unknown projector kind 'sparse'"),
        ({"reduce": 3}, "reduce must be callable"),
        ({"blocks": ["block0", "blok1"], "n_blocks": 2}, "the model has no block \\(submodule\\) 'blok1'"),
        ({"blocks": ["block0.1"], "n_blocks": 1}, "block 'block0.1' has no trainable parameter"),
        ({"blocks": "block0"}, "blocks must be a list of module names"),
        ({"blocks": []}, "blocks must be a non-empty list"),
        ({"blocks": ["block0", "block0"]}, "blocks contains duplicates"),
    ],
)
def test_bad_arguments_are_refused(model, kwargs, message):
    args = {"blocks": BLOCKS, **kwargs}
    blocks = args.pop("blocks")
    with pytest.raises(TarotInputError, match=message):
        JVPEmbedder(model, loss_fn, blocks, **args)


def test_a_frozen_block_is_refused(model):
    for p in model.block1.parameters():
        p.requires_grad_(False)
    with pytest.raises(TarotInputError, match="block 'block1' has no trainable parameter"):
        JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=2)


def test_errors_while_embedding(model, data):
    with pytest.raises(TarotInputError, match="block 'unused' was never called by loss_fn"):
        JVPEmbedder(model, loss_fn, ["block0", "unused"], n_blocks=2).embed(batches_of(data, 4))
    emb = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1)
    with pytest.raises(TarotInputError, match="known after the first batch"):
        _ = emb.out_dim
    assert emb.metadata()["out_dim"] is None
    with pytest.raises(TarotInputError, match="batches yielded 7 samples, expected 8"):
        emb.embed(batches_of(data, 4), n_samples=8)
    with pytest.raises(TarotInputError, match="more than the expected 5"):
        emb.embed(batches_of(data, 4), n_samples=5)
    with pytest.raises(TarotInputError, match="no batch"):
        emb.embed([])
    bad = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, reduce=lambda t, b: t.sum())
    with pytest.raises(TarotInputError, match=r"must return a \(B, k\) tensor with B=4 rows, got \(\)"):
        bad.embed(batches_of(data, 4))
    growing = JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1, reduce=lambda t, b: t[:, : len(b[0])])
    with pytest.raises(TarotInputError, match="reduce must give a fixed width"):
        growing.embed(batches_of(data, 4))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=2, shuffle=True)
    with pytest.raises(TarotInputError, match="shuffles"):
        emb.embed(loader)
    with torch.no_grad():
        model.block0[0].weight[0, 0] = float("nan")
    with pytest.raises(TarotInputError, match="non-finite JVP embeddings"):
        JVPEmbedder(model, loss_fn, BLOCKS, n_blocks=1).embed(batches_of(data, 4))


def test_pool_feature_maps_is_a_linear_average_pool():
    x = torch.arange(2 * 3 * 16 * 10, dtype=torch.float32).reshape(2, 3, 16, 10)
    out = pool_feature_maps(x)
    assert out.shape == (2, 3 * 8 * 8)
    np.testing.assert_allclose(out.reshape(2, 3, 8, 8)[:, :, 0, 0], x[:, :, :2, :2].mean(dim=(2, 3)))
    y = torch.randn_like(x)
    np.testing.assert_allclose(pool_feature_maps(2 * x - y), 2 * out - pool_feature_maps(y), rtol=1e-5, atol=1e-3)
    small = torch.randn(2, 4, 4, 8)
    np.testing.assert_array_equal(pool_feature_maps(small), small.flatten(1))  # already small: unchanged
    np.testing.assert_array_equal(pool_feature_maps(torch.ones(2, 5, 7)), torch.ones(2, 35))
