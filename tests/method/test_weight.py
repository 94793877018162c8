import numpy as np
import pytest
from conftest import unit_rows

from tarot_select import TarotInputError, apportion, optimal_weights, ot_distance, potential_counts, select
from tarot_select.knn import nearest_neighbors
from tarot_select.weight import uniform_counts
from tarot_select.whiten import whiten


def test_apportion_by_hand():
    # extra = 10 - 4 = 6 shared as 6 * [0.5, 0.25, 0.25, 0] = [3, 1.5, 1.5, 0]
    # floors [3, 1, 1, 0], one left over -> the lower index among equal remainders
    assert apportion(np.array([2.0, 1.0, 1.0, 0.0]), 10).tolist() == [4, 3, 2, 1]
    assert apportion(np.zeros(3), 7).tolist() == [3, 2, 2]


def test_apportion_rejects_impossible_totals():
    with pytest.raises(TarotInputError, match="below the minimum"):
        apportion(np.ones(5), 4)
    with pytest.raises(TarotInputError, match="non-negative"):
        apportion(np.array([1.0, -1.0]), 4)


@pytest.mark.parametrize("repeat", [1.0, 2.0, 3.7])
def test_potential_counts_sum_positive_and_monotone(rng, repeat):
    sel = unit_rows(rng.normal(size=(50, 6)))
    targ = unit_rows(rng.normal(size=(80, 6)) + 0.8)
    counts = potential_counts(sel, targ, repeat=repeat, ot_method="exact")
    assert counts.dtype.kind == "i"
    assert counts.sum() == round(repeat * 50)
    assert counts.min() >= 1
    f = ot_distance(sel, targ, method="exact").potential_source
    by_potential = counts[np.argsort(f, kind="stable")]
    assert (np.diff(by_potential) <= 0).all()  # lower potential -> at least as many copies
    if repeat > 1:
        assert counts[np.argmin(f)] > counts[np.argmax(f)]


def test_potential_counts_need_repeat_at_least_one(rng):
    with pytest.raises(TarotInputError, match="repetition factor"):
        potential_counts(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), repeat=0.5)


def test_optimal_weights_reach_the_lower_bound(rng):
    sel = unit_rows(rng.normal(size=(30, 5)))
    targ = unit_rows(rng.normal(size=(70, 5)) + 0.5)
    w = optimal_weights(sel, targ)
    assert w.sum() == pytest.approx(1) and (w >= 0).all()
    nn_dist = nearest_neighbors(sel, targ, 1).distances[:, 0]
    support = w > 0
    best = ot_distance(sel[support], targ, a=w[support], method="exact").value
    assert best == pytest.approx(nn_dist.mean(), abs=1e-5)
    uniform = ot_distance(sel, targ, method="exact").value
    assert best < uniform
    for _ in range(10):
        other = rng.dirichlet(np.ones(30))
        assert best <= ot_distance(sel, targ, a=other, method="exact").value + 1e-9


def test_select_with_weighting(rng):
    cand, targ = rng.normal(size=(200, 8)), rng.normal(size=(30, 8))
    wc, wt = whiten(cand, targ, "cholesky")  # the features select() weighs on
    s = select("tarot", cand, targ, budget=40, weighting="potential", repeat=2.5)
    assert s.weights.sum() == 100 and s.weights.min() >= 1 and s.weighting == "potential"
    # each weight belongs to its own index (TAROT's indices are not sorted)
    assert not np.all(np.diff(s.indices) > 0) and len(np.unique(s.weights)) > 1
    np.testing.assert_array_equal(s.weights, potential_counts(wc[s.indices], wt, repeat=2.5))
    s = select("random", cand, targ, budget=40, weighting="optimal")
    assert s.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(s.weights, optimal_weights(wc[s.indices], wt), atol=1e-9)


@pytest.mark.parametrize("n,repeat", [(7, 1.0), (7, 2.0), (10, 2.5), (3, 1.4), (100, 3.0)])
def test_uniform_counts_match_the_total_of_potential_counts(n, repeat):
    counts = uniform_counts(n, repeat)
    assert counts.dtype == np.int64 and counts.shape == (n,)
    assert counts.sum() == round(repeat * n)
    assert set(np.unique(counts)) <= {int(np.floor(repeat)), int(np.ceil(repeat))}
    with pytest.raises(TarotInputError):
        uniform_counts(n, 0.5)
