import numpy as np
import pytest

from tarot_select import TarotInputError, ot_distance, select
from tarot_select.baselines import dsdm_scores, less_scores, random_selection, top_budget
from tarot_select.whiten import whiten


def test_random_is_seeded_and_unique():
    a = random_selection(100, budget=30, seed=1)
    assert np.array_equal(a.indices, random_selection(100, budget=30, seed=1).indices)
    assert not np.array_equal(a.indices, random_selection(100, budget=30, seed=2).indices)
    assert len(np.unique(a.indices)) == 30 and a.method == "random"


def test_dsdm_equals_dense_trak_formula(rng):
    x, xt = rng.normal(size=(300, 10)), rng.normal(size=(25, 10))
    lam = 1e-2 * np.trace(x.T @ x) / 10
    dense = x @ np.linalg.solve(x.T @ x + lam * np.eye(10), xt.T)  # (n, m) TRAK scores
    assert np.allclose(dsdm_scores(x, xt, ridge=1e-2), dense.mean(axis=1))


def test_dsdm_averages_checkpoint_blocks(rng):
    x, xt = rng.normal(size=(200, 12)), rng.normal(size=(9, 12))
    both = dsdm_scores(x, xt, checkpoint_dims=[5, 7])
    parts = (dsdm_scores(x[:, :5], xt[:, :5]) + dsdm_scores(x[:, 5:], xt[:, 5:])) / 2
    assert np.allclose(both, parts)
    with pytest.raises(TarotInputError, match="do not add up"):
        dsdm_scores(x, xt, checkpoint_dims=[5, 5])


def _cos(a, b):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def test_less_equals_dense_formula_with_subtasks(rng):
    x, xt = rng.normal(size=(150, 8)), rng.normal(size=(12, 8))
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 1, 0])
    w = np.array([3e-5, 1e-5])  # learning rates of two checkpoints (4 dims each)
    dense = (w[0] * _cos(x[:, :4], xt[:, :4]) + w[1] * _cos(x[:, 4:], xt[:, 4:])) / w.sum()  # (n, m)
    per_group = np.stack([dense[:, groups == g].mean(1) for g in range(3)], axis=1)
    expected = per_group.max(axis=1)
    got = less_scores(x, xt, checkpoint_dims=[4, 4], checkpoint_weights=w, target_groups=groups)
    assert np.allclose(got, expected)
    # no subtasks: mean over all targets
    assert np.allclose(less_scores(x, xt), _cos(x, xt).mean(1))


def test_top_budget_ties_to_lower_index():
    assert top_budget(np.array([1.0, 3.0, 3.0, 0.0, 3.0]), 2).tolist() == [1, 2]


def test_baselines_share_the_result_type(rng):
    x, xt = rng.normal(size=(120, 6)), rng.normal(size=(10, 6))
    wx, wt = whiten(x, xt, "cholesky")
    for method in ("random", "dsdm", "less", "tarot"):
        sel = select(method, x, xt, budget=17)
        assert sel.size == 17 and sel.method == method and sel.budget == 17
        # every method is measured the same way: exact OT of its rows to all targets, in WFD
        exact = ot_distance(wx[sel.indices], wt, method="exact").value
        assert sel.ot_distance == pytest.approx(exact, rel=1e-6)


def test_dsdm_train_weights_scale_each_block_row_wise(rng):
    x, z = rng.normal(size=(30, 6)), rng.normal(size=(5, 6))
    q = rng.uniform(0.1, 0.9, size=(30, 2))
    plain = [dsdm_scores(x[:, :3], z[:, :3]), dsdm_scores(x[:, 3:], z[:, 3:])]
    weighted = dsdm_scores(x, z, checkpoint_dims=[3, 3], train_weights=q)
    np.testing.assert_allclose(weighted, (q[:, 0] * plain[0] + q[:, 1] * plain[1]) / 2, rtol=1e-10)
    np.testing.assert_allclose(dsdm_scores(x, z, train_weights=q[:, 0]), q[:, 0] * dsdm_scores(x, z), rtol=1e-10)
    with pytest.raises(TarotInputError, match="train_weights"):
        dsdm_scores(x, z, train_weights=q[:10, 0])
