import numpy as np
import ot
import pytest
from conftest import unit_rows

from tarot_select import TarotInputError, ot_distance, pairwise_wfd


def test_wfd_of_unit_vectors_matches_formula(rng):
    x, y = unit_rows(rng.normal(size=(7, 5))), unit_rows(rng.normal(size=(4, 5)))
    expected = np.sqrt(np.maximum(0, 2 - 2 * x @ y.T))
    assert np.allclose(pairwise_wfd(x, y), expected)
    assert np.allclose(pairwise_wfd(x, x).diagonal(), 0, atol=1e-7)


def test_wfd_general_form_is_euclidean(rng):
    x, y = rng.normal(size=(6, 3)) * 5, rng.normal(size=(5, 3))
    expected = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)
    assert np.allclose(pairwise_wfd(x, y), expected)


@pytest.mark.parametrize("seed", range(5))
def test_exact_ot_equals_pot_emd2(seed):
    r = np.random.default_rng(seed)
    n, m = r.integers(3, 40, size=2)
    x, y = unit_rows(r.normal(size=(n, 8))), unit_rows(r.normal(size=(m, 8)) + 0.5)
    a, b = r.random(n), r.random(m)
    res = ot_distance(x, y, a, b, method="exact")
    cost = np.sqrt(np.maximum(0, 2 - 2 * x @ y.T))
    assert res.value == pytest.approx(ot.emd2(a / a.sum(), b / b.sum(), cost), rel=1e-9)
    # duals are feasible and strong duality holds
    f, g = res.potential_source, res.potential_target
    assert (f[:, None] + g[None, :] <= cost + 1e-9).all()
    assert res.value == pytest.approx(a @ f / a.sum() + b @ g / b.sum(), rel=1e-7)


def test_sinkhorn_approaches_exact(rng):
    x, y = unit_rows(rng.normal(size=(300, 16))), unit_rows(rng.normal(size=(200, 16)) + 0.3)
    exact = ot_distance(x, y, method="exact").value
    ent = ot_distance(x, y, method="sinkhorn", reg=0.005)
    assert ent.method == "sinkhorn" and ent.converged
    assert ent.value == pytest.approx(exact, rel=0.02)
    assert ent.value >= exact - 1e-9  # an entropic plan is feasible, so it costs at least the optimum
    # the entropic duals rank points like the exact ones
    ex = ot_distance(x, y, method="exact")
    corr = np.corrcoef(ex.potential_source, ent.potential_source)[0, 1]
    assert corr > 0.9


def test_auto_switches_on_size(rng):
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    assert ot_distance(x, y, max_exact_entries=10_000).method == "exact"
    assert ot_distance(x, y, max_exact_entries=100).method == "sinkhorn"


def test_identical_clouds_have_zero_distance(rng):
    x = unit_rows(rng.normal(size=(25, 6)))
    assert ot_distance(x, x[::-1].copy(), method="exact").value == pytest.approx(0, abs=1e-7)


def test_bad_input(rng):
    x = rng.normal(size=(4, 3))
    with pytest.raises(TarotInputError, match="non-empty"):
        ot_distance(x[:0], x)
    with pytest.raises(TarotInputError, match="dimension mismatch"):
        ot_distance(x, rng.normal(size=(4, 2)))
    with pytest.raises(TarotInputError, match="masses"):
        ot_distance(x, x, a=-np.ones(4))
    with pytest.raises(TarotInputError, match="unknown OT method"):
        ot_distance(x, x, method="lp")
