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
