"""Tests for tarot_select.project (random projections)."""

from __future__ import annotations

import math

import pytest
import torch

from tarot_select.errors import TarotInputError
from tarot_select.project import (
    BLOCK_ROWS,
    COUNTSKETCH_BLOCK,
    CountSketchProjector,
    DenseProjector,
    IdentityProjector,
    Projector,
    make_projector,
)


def _rand(n: int, p: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, p), generator=g)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "countsketch"])
def test_same_seed_same_output_different_seed_different(kind: str) -> None:
    x = _rand(4, 1300)
    a = make_projector(kind, 1300, 64, seed=3).project(x)
    b = make_projector(kind, 1300, 64, seed=3).project(x)
    c = make_projector(kind, 1300, 64, seed=4).project(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_dense_chunking_and_cache_do_not_change_the_map(kind: str) -> None:
    in_dim = 3 * BLOCK_ROWS + 77  # several blocks, last one partial
    x = _rand(5, in_dim, seed=1)
    many = DenseProjector(in_dim, 48, seed=7, kind=kind, max_chunk_bytes=1, cache_bytes=0)
    one = DenseProjector(in_dim, 48, seed=7, kind=kind, max_chunk_bytes=1 << 30, cache_bytes=0)
    cached = DenseProjector(in_dim, 48, seed=7, kind=kind)
    assert many.blocks_per_chunk == 1 and not many.cached
    assert one.blocks_per_chunk * BLOCK_ROWS >= in_dim
    assert cached.cached
    a, b, c = many.project(x), one.project(x), cached.project(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    # the cache is reused and gives the same answer on a second call
    torch.testing.assert_close(cached.project(x), c, atol=0, rtol=0)
    # explicit formula x @ R / sqrt(d)
    r = cached.matrix()
    torch.testing.assert_close(c, x @ r / math.sqrt(48), atol=1e-5, rtol=1e-5)


def test_rademacher_entries_are_plus_minus_one() -> None:
    in_dim, d = BLOCK_ROWS + 10, 32
    proj = DenseProjector(in_dim, d, seed=11, kind="rademacher", cache_bytes=0, max_chunk_bytes=1)
    r = proj.project(torch.eye(in_dim)) * math.sqrt(d)
    torch.testing.assert_close(r.abs(), torch.ones_like(r), atol=1e-6, rtol=0)
    frac_pos = (r > 0).float().mean().item()
    assert 0.45 < frac_pos < 0.55
    torch.testing.assert_close(r, proj.matrix(), atol=1e-5, rtol=0)


def test_gaussian_entries_are_standard_normal() -> None:
    proj = DenseProjector(1000, 200, seed=2, kind="gaussian")
    r = proj.matrix()
    assert abs(r.mean().item()) < 0.01
    assert abs(r.std().item() - 1.0) < 0.01
    assert not torch.equal(r.abs(), torch.ones_like(r))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_dense_preserves_norms_and_inner_products(kind: str) -> None:
    in_dim, d = 3000, 2048
    x = _rand(50, in_dim, seed=5) * torch.linspace(0.1, 10.0, 50)[:, None]
    proj = make_projector(kind, in_dim, d, seed=0)
    z = proj.project(x)
    ratio = z.square().sum(1) / x.square().sum(1)
    assert (ratio - 1).abs().max().item() < 0.2
    assert abs(ratio.mean().item() - 1) < 0.03
    # inner products of correlated pairs: error small relative to ||x|| ||y||
    y = x + 0.7 * _rand(50, in_dim, seed=6) * x.norm(dim=1, keepdim=True) / math.sqrt(in_dim)
    pz = proj.project(y)
    exact = (x * y).sum(1)
    approx = (z * pz).sum(1)
    rel = (approx - exact).abs() / (x.norm(dim=1) * y.norm(dim=1))
    assert rel.max().item() < 0.15


def test_countsketch_norms_and_unbiased_inner_products() -> None:
    in_dim, d = 3000, 1024
    x = _rand(50, in_dim, seed=8)
    z = CountSketchProjector(in_dim, d, seed=0).project(x)
    ratio = z.square().sum(1) / x.square().sum(1)
    assert (ratio - 1).abs().max().item() < 0.25
    assert abs(ratio.mean().item() - 1) < 0.05
    # average over independent sketches of <Px, Py> -> <x, y>
    a, b = x[0], x[0] + x[1]
    ests = []
    for seed in range(200):
        p = CountSketchProjector(in_dim, 16, seed=seed)
        pa, pb = p.project(torch.stack([a, b]))
        ests.append(float(pa @ pb))
    mean = sum(ests) / len(ests)
    assert abs(mean - float(a @ b)) < 0.05 * float(a.norm() * b.norm())


def test_countsketch_structure_and_blocking() -> None:
    in_dim, d = COUNTSKETCH_BLOCK + 123, 40
    p_cached = CountSketchProjector(in_dim, d, seed=9)
    p_stream = CountSketchProjector(in_dim, d, seed=9, cache_bytes=0)
    assert p_cached.cached and not p_stream.cached
    x = _rand(3, in_dim, seed=10)
    torch.testing.assert_close(p_cached.project(x), p_stream.project(x), atol=1e-4, rtol=1e-5)
    # each coordinate lands in exactly one bucket with sign ±1
    eye = torch.eye(300)
    small = CountSketchProjector(300, d, seed=1)
    z = small.project(eye)
    assert torch.equal((z != 0).sum(1), torch.ones(300, dtype=torch.long))
    assert torch.equal(z.abs().sum(1), torch.ones(300))
    h, s = small.hashes()
    assert torch.equal(z.argmax(1) * (z.max(1).values > 0) + z.argmin(1) * (z.min(1).values < 0), h)
    assert set(s.tolist()) == {-1.0, 1.0}


def test_identity_and_output_dtype_device() -> None:
    x = _rand(3, 20).double()
    ident = make_projector("none", 20, None, seed=0)
    assert isinstance(ident, IdentityProjector) and ident.dim == 20
    out = ident.project(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float())
    for kind in ("rademacher", "gaussian", "countsketch"):
        p = make_projector(kind, 20, 7, seed=1)
        assert isinstance(p, Projector)
        z = p.project(x)
        assert z.shape == (3, 7) and z.dtype == torch.float32 and z.device == x.device


def test_metadata() -> None:
    meta = make_projector("gaussian", 100, 8, seed=5, max_chunk_bytes=1 << 20).metadata()
    assert meta["kind"] == "gaussian" and meta["in_dim"] == 100 and meta["dim"] == 8 and meta["seed"] == 5
    assert meta["block_rows"] == BLOCK_ROWS
    cs = make_projector("countsketch", 100, 8, seed=5).metadata()
    assert cs["kind"] == "countsketch"
    assert make_projector("none", 100, 100, seed=0).metadata()["dim"] == 100


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        (("sparse", 10, 4, 0), {}),
        (("rademacher", 10, 0, 0), {}),
        (("rademacher", 0, 4, 0), {}),
        (("gaussian", 10, -3, 0), {}),
        (("countsketch", 10, None, 0), {}),
        (("none", 10, 4, 0), {}),
        (("rademacher", 10, 4, -1), {}),
        (("rademacher", 10, 2.5, 0), {}),
        (("countsketch", 10, 4, 0), {"max_chunk_bytes": 10}),
        (("rademacher", 10, 4, 0), {"max_chunk_bytes": 0}),
    ],
)
def test_bad_input_raises(args: tuple, kw: dict) -> None:
    with pytest.raises(TarotInputError):
        make_projector(*args, **kw)


def test_unknown_kind_message_names_allowed_kinds() -> None:
    with pytest.raises(TarotInputError, match=r"rademacher.*gaussian.*countsketch.*none"):
        make_projector("srht", 10, 4, 0)


def test_wrong_input_shape_raises() -> None:
    p = DenseProjector(10, 4)
    with pytest.raises(TarotInputError):
        p.project(torch.zeros(3, 11))
    with pytest.raises(TarotInputError):
        p.project(torch.zeros(10))
    with pytest.raises(TarotInputError):
        DenseProjector(10, 4, kind="countsketch")
