import itertools

import numpy as np
import pytest
from conftest import unit_rows

from tarot_select import TarotInputError, nearest_neighbors


@pytest.mark.parametrize("normalize", [True, False])
def test_streamed_topk_equals_brute_force(rng, normalize):
    x = rng.normal(size=(1000, 12))
    y = rng.normal(size=(37, 12))
    if normalize:
        x, y = unit_rows(x), unit_rows(y)
    nb = nearest_neighbors(x, y, k=9, block_rows=64)  # 16 blocks
    dist = np.linalg.norm(y[:, None, :] - x[None, :, :], axis=-1)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :9]
    assert np.array_equal(nb.indices, expected)
    assert np.allclose(nb.distances, np.take_along_axis(dist, expected, 1), atol=1e-4)
    assert (np.diff(nb.distances, axis=1) >= -1e-6).all()


def test_block_size_does_not_change_the_answer(rng):
    x, y = unit_rows(rng.normal(size=(500, 8))), unit_rows(rng.normal(size=(20, 8)))
    a = nearest_neighbors(x, y, k=5, block_rows=7)
    b = nearest_neighbors(x, y, k=5, block_rows=10_000)
    assert np.array_equal(a.indices, b.indices)


def test_ties_go_to_the_lower_index():
    x = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    nb = nearest_neighbors(x, np.array([[1.0, 0.0]]), k=3, block_rows=2)
    assert nb.indices.tolist() == [[0, 1, 2]]


def test_memmap_input(tmp_path, rng):
    x = unit_rows(rng.normal(size=(300, 6))).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    y = unit_rows(rng.normal(size=(10, 6)))
    assert np.array_equal(nearest_neighbors(mm, y, 4).indices, nearest_neighbors(x.astype(np.float32), y, 4).indices)


def test_bad_k(rng):
    with pytest.raises(TarotInputError, match="k must be"):
        nearest_neighbors(rng.normal(size=(5, 2)), rng.normal(size=(2, 2)), k=6)


def test_tied_distances_give_the_same_first_ranks_whatever_k_and_block_size():
    # many exact ties (1-D features): torch.topk alone breaks ties at the cut arbitrarily,
    # so a search for 2 neighbours and one for 6 once disagreed (and TAROT then ran out of
    # ranks before filling a budget of the whole pool)
    from tarot_select.knn import nearest_neighbors
    from tarot_select.select import NeighborRanks, select_fixed_size

    x = np.array([[1.0], [1.0], [-1.0], [-1.0], [1.0], [1.0]] * 3)
    y = np.array([[1.0], [1.0], [-1.0], [-1.0], [-1.0], [-1.0]])
    full = nearest_neighbors(x, y, k=len(x), block_rows=5).indices
    for k in (1, 2, 5, 9):
        for block in (2, 4, 18):
            np.testing.assert_array_equal(nearest_neighbors(x, y, k=k, block_rows=block).indices, full[:, :k])
    ranks = NeighborRanks(x, y, k=2)
    cols = np.stack([ranks.column(r) for r in range(len(x))], 1)
    assert all(len(set(row)) == len(x) for row in cols)
    assert sorted(select_fixed_size(x, y, budget=len(x)).indices) == list(range(len(x)))


def test_shards_merge_into_one_search_with_ties_and_short_shards(rng):
    from tarot_select.knn import TopK, merge_neighbors

    x = unit_rows(rng.normal(size=(203, 6))).astype(np.float32)
    x[10:14] = x[3]  # ties across shard borders
    y = np.concatenate([x[3:4], unit_rows(rng.normal(size=(14, 6)))]).astype(np.float32)
    whole = nearest_neighbors(x, y, k=12, block_rows=50)
    for edges in ([0, 5, 12, 100, 203], [0, 101, 203], [0, 3, 203]):
        parts = []
        for lo, hi in itertools.pairwise(edges):
            top = TopK(y, min(12, hi - lo))
            top.add(x[lo:hi], lo)
            parts.append(top.result())
        merged = merge_neighbors(parts, k=12)
        np.testing.assert_array_equal(merged.indices, whole.indices)
        np.testing.assert_array_equal(merged.distances, whole.distances)
    assert whole.indices[0, :5].tolist() == [3, 10, 11, 12, 13]  # the tie, lower index first


def test_topk_equals_a_float64_brute_force_whatever_the_block_size(rng):
    # the numpy path keeps only entries above each target's running k-th score: its lists
    # must still be the exact top-k (no near-ties in this data, so float32 agrees with float64)
    x = rng.normal(size=(3000, 24))
    y = rng.normal(size=(30, 24))
    dist = np.linalg.norm(y[:, None, :] - x[None, :, :], axis=-1)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :20]
    for block in (1, 7, 256, 5000):
        np.testing.assert_array_equal(nearest_neighbors(x, y, k=20, block_rows=block).indices, expected)


def test_lists_hold_each_pairs_own_exact_score_whatever_the_blocks_or_shards(rng):
    # a float32 matmul's last bit depends on the BLAS kernel and the block's shape; the lists
    # must not: every score is the pair's float64 score rounded to float32, and the ranking
    # (ties to the lower index) follows those scores
    from tarot_select.knn import TopK, merge_neighbors

    x = unit_rows(rng.normal(size=(700, 96))).astype(np.float32)
    x[300:320] = x[7] + rng.normal(scale=1e-7, size=(20, 96)).astype(np.float32)  # near-ties
    y = np.concatenate([x[7:8] + 1e-3, unit_rows(rng.normal(size=(24, 96)))]).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    exact = (2.0 * y64 @ x64.T - np.einsum("ij,ij->i", x64, x64)[None, :]).astype(np.float32)
    order = np.lexsort((np.broadcast_to(np.arange(700), exact.shape), -exact), axis=1)[:, :12]
    scores = np.take_along_axis(exact, order, 1)
    dist = np.sqrt(np.maximum(np.einsum("ij,ij->i", y, y)[:, None] - scores, 0)).astype(np.float32)
    assert len(set(order[0].tolist()) & set(range(300, 320))) >= 5  # the near-ties are in play
    runs = [nearest_neighbors(x, y, k=12, block_rows=b) for b in (1, 9, 64, 700)]
    for edges in ([0, 301, 700], [0, 5, 310, 311, 700]):
        parts = []
        for lo, hi in itertools.pairwise(edges):
            top = TopK(y, min(12, hi - lo))
            top.add(x[lo:hi], lo)
            parts.append(top.result())
        runs.append(merge_neighbors(parts, k=12))
    for nb in runs:
        np.testing.assert_array_equal(nb.indices, order)
        np.testing.assert_array_equal(nb.scores, scores)
        np.testing.assert_array_equal(nb.distances, dist)


@pytest.mark.parametrize("seed", range(5))
def test_insertion_merge_equals_a_full_sort(seed):
    # Lists sorted best first (some not full: -inf), new entries of later indices with scores
    # drawn from few values (ties with listed and with each other), -0.0 among them.
    from tarot_select.knn import _insert_rows, _merge_rows

    rng = np.random.default_rng(seed)
    t, k = 40, 7
    values = np.array([-np.inf, -1.5, -0.0, 0.0, 0.25, 0.25000003, 1.0], dtype=np.float32)
    listed_s = rng.choice(values[1:], size=(t, k))
    listed_s[rng.random((t, k)) < 0.2] = -np.inf
    listed_i = rng.integers(0, 1000, size=(t, k))
    order = np.lexsort((listed_i, -listed_s), axis=1)  # best first, ties to the lower index
    listed_s, listed_i = np.take_along_axis(listed_s, order, 1), np.take_along_axis(listed_i, order, 1)
    new = 120
    rows = rng.integers(0, t, new)
    rows[:t] = np.arange(t)  # every row touched
    scores = rng.choice(values[1:], size=new)
    index = 1000 + rng.permutation(new)  # later candidates, in any order
    got_s, got_i = _insert_rows(listed_s.copy(), listed_i.copy(), rows, scores, index)
    want_s, want_i, _ = _merge_rows(
        np.concatenate((np.repeat(np.arange(t), k), rows)),
        np.concatenate((listed_s.ravel(), scores)),
        np.concatenate((listed_i.ravel(), index)),
        None,
        t,
        k,
    )
    assert np.array_equal(got_i, want_i)
    assert np.array_equal(got_s, want_s)


def test_kth_best_in_row_slices_equals_one_partition(rng):
    """The cut of a not-yet-full list is the block's own k-th best score, found slice by
    slice (CUT_ROWS rows at a time, so the copy stays small): the same as one partition."""
    from tarot_select.knn import CUT_ROWS, _kth_best

    scores = rng.normal(size=(3 * CUT_ROWS + 5, 40)).astype(np.float32)
    scores[:, 7] = scores[:, 8]  # ties
    for k in (1, 2, 17, 40):
        np.testing.assert_array_equal(_kth_best(scores, k), np.sort(scores, axis=1)[:, -k])
