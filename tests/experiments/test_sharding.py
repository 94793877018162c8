"""Scatter–gather gradient dumping equals the unsharded run."""

from __future__ import annotations

import numpy as np
import pytest

from tarot_select import TarotInputError, select
from tarot_select.experiments.stages import (
    dump_gradients,
    gather_features,
    prepare_data,
    shard_rows,
    train_proxy,
    whiten_features,
)
from tarot_select.io import load_features
from tarot_select.tasks import get_task

CONFIG = {
    "sources": ["clean", "rotated", "noisy"],
    "per_source": 30,
    "target_styles": ["rotated", "noisy"],
    "n_targets": 20,
    "n_evaluation": 40,
    "proxy": {"epochs": 2, "checkpoints": 2, "width": 4},
}
FEATURES = {"proj_dim": 16, "batch_size": 16}


def test_shard_rows_partition():
    edges = [shard_rows(10, i, 3) for i in range(3)]
    assert edges == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(TarotInputError, match="lower features.shards"):
        shard_rows(2, 0, 3)


def test_sharded_dump_and_streamed_whitening_equal_the_unsharded_run(tmp_path):
    task = get_task("digits", CONFIG, seed=0)
    data, proxy = tmp_path / "data", tmp_path / "proxy"
    prepare_data(task, data)
    train_proxy(task, data, proxy)

    def dump(split: str, n: int) -> tuple[str, list[str]]:
        paths, stats = [], []
        for i in range(n):
            out = tmp_path / f"{split}.{n}.{i}.npy"
            st = tmp_path / f"{split}.{n}.{i}.stats.npz"
            dump_gradients(task, data, proxy, split, out, FEATURES, shard=i, n_shards=n, stats_path=st)
            paths.append(str(out))
            stats.append(str(st))
        whole = tmp_path / f"{split}.{n}.npy"
        gather_features(paths, whole)
        return str(whole), stats

    c1, s1 = dump("candidates", 1)
    t1, st1 = dump("targets", 1)
    c3, s3 = dump("candidates", 3)
    t3, st3 = dump("targets", 2)
    assert np.allclose(load_features(c1).array, load_features(c3).array, atol=1e-5)
    assert np.allclose(load_features(t1).array, load_features(t3).array, atol=1e-5)
    assert load_features(c3).meta["shards"] == 3

    # whitening fitted on in-memory features vs merged per-shard sums
    wc_a, wt_a = tmp_path / "wc_a.npy", tmp_path / "wt_a.npy"
    wc_b, wt_b = tmp_path / "wc_b.npy", tmp_path / "wt_b.npy"
    whiten_features(c1, t1, wc_a, wt_a)
    whiten_features(c3, t3, wc_b, wt_b, stats=s3 + st3)
    a_c, b_c = load_features(wc_a).array, load_features(wc_b).array
    a_t, b_t = load_features(wt_a).array, load_features(wt_b).array
    assert np.allclose(a_c, b_c, atol=1e-4) and np.allclose(a_t, b_t, atol=1e-4)

    for method in ("tarot", "otm"):
        kw = {} if method == "otm" else {"ratio": 0.2}
        sa = select(method, a_c, a_t, wfd_features=(a_c, a_t), n_folds=4, **kw)
        sb = select(method, b_c, b_t, wfd_features=(b_c, b_t), n_folds=4, **kw)
        assert np.array_equal(sa.indices, sb.indices), method


def test_gather_rejects_out_of_order_shards(tmp_path):
    task = get_task("digits", CONFIG, seed=0)
    data, proxy = tmp_path / "data", tmp_path / "proxy"
    prepare_data(task, data)
    train_proxy(task, data, proxy)
    paths = []
    for i in range(2):
        out = tmp_path / f"t.{i}.npy"
        dump_gradients(task, data, proxy, "targets", out, FEATURES, shard=i, n_shards=2)
        paths.append(str(out))
    with pytest.raises(TarotInputError, match="out of order"):
        gather_features(paths[::-1], tmp_path / "t.npy")
    stats = tmp_path / "only_first.stats.npz"
    dump_gradients(
        task, data, proxy, "targets", tmp_path / "again.npy", FEATURES, shard=0, n_shards=2, stats_path=stats
    )
    with pytest.raises(TarotInputError, match="whitening statistics cover"):
        whiten_features(paths[0], paths[1], tmp_path / "a.npy", tmp_path / "b.npy", stats=[str(stats)])


def _wfd_files(tmp_path, rng, n=900, m=40, d=12):
    """Whitened candidate and target files, with the whitening pass's own neighbour lists."""
    from tarot_select.io import save_features

    cand = rng.normal(size=(n, d)) + np.repeat(rng.normal(size=(9, d)) * 3, n // 9, axis=0)
    cand[5] = cand[6]  # an exact tie: the lower index must rank first in every shard layout
    targ = rng.normal(size=(m, d))
    save_features(tmp_path / "c.npy", cand.astype(np.float32))
    save_features(tmp_path / "t.npy", targ.astype(np.float32))
    wc, wt, wn = tmp_path / "wc.npy", tmp_path / "wt.npy", tmp_path / "wn.npz"
    whiten_features(tmp_path / "c.npy", tmp_path / "t.npy", wc, wt, out_neighbors=wn, neighbors_k=10)
    return wc, wt, wn


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_sharded_neighbour_search_merges_into_the_single_pass_lists(tmp_path, rng, shards):
    from tarot_select.experiments.stages import merge_neighbor_shards, neighbor_shard
    from tarot_select.knn import Neighbors

    wc, wt, wn = _wfd_files(tmp_path, rng)
    parts = []
    for s in range(shards):
        parts.append(str(tmp_path / f"part{s}.npz"))
        neighbor_shard(wc, wt, parts[-1], k=10, shard=s, shards=shards)
    merge_neighbor_shards(parts, tmp_path / "merged.npz", k=10, features=wc)
    one, merged = Neighbors.load(wn), Neighbors.load(tmp_path / "merged.npz")
    np.testing.assert_array_equal(merged.indices, one.indices)
    np.testing.assert_array_equal(merged.distances, one.distances)
    assert merged.n_candidates == one.n_candidates == 900
    # and the selections built on them are the same
    c, t = load_features(wc).array, load_features(wt).array
    a = select("tarot", c, t, ratio=0.1, wfd_features=(c, t), neighbors=one)
    b = select("tarot", c, t, ratio=0.1, wfd_features=(c, t), neighbors=merged)
    assert np.array_equal(a.indices, b.indices)


def test_merging_overlapping_or_scoreless_shards_is_refused(tmp_path, rng):
    from tarot_select.experiments.stages import neighbor_shard
    from tarot_select.knn import Neighbors, merge_neighbors

    wc, wt, _ = _wfd_files(tmp_path, rng)
    neighbor_shard(wc, wt, tmp_path / "p0.npz", k=10, shard=0, shards=2)
    p0 = Neighbors.load(tmp_path / "p0.npz")
    with pytest.raises(TarotInputError, match="overlap"):
        merge_neighbors([p0, p0])
    with pytest.raises(TarotInputError, match="without scores"):
        merge_neighbors([Neighbors(p0.indices, p0.distances, p0.n_candidates)])
    with pytest.raises(TarotInputError, match="not in 0..1|outside 0..1"):
        neighbor_shard(wc, wt, tmp_path / "p9.npz", k=10, shard=2, shards=2)
