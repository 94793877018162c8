import numpy as np
import ot
import pytest
from conftest import unit_rows

from tarot_select import TarotInputError, ot_distance, pairwise_wfd
from tarot_select.distance import (
    EXACT_AFFORDABLE_SECONDS,
    MAX_EXACT_ENTRIES,
    choose_solver,
    dual_lower_bound,
    estimated_seconds,
)


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


@pytest.mark.parametrize("seed", range(3))
def test_exact_warm_start_from_a_smaller_problem_reaches_the_same_optimum(seed):
    """OTM's rounds: the source grows by rows appended last; the previous potentials (the new
    rows at the c-transform of g, which keeps them dual feasible) warm-start the network simplex."""
    from tarot_select.distance import _warm_start_potentials

    r = np.random.default_rng(seed)
    x, y = unit_rows(r.normal(size=(160, 8))), unit_rows(r.normal(size=(50, 8)) + 0.4)
    first = ot_distance(x[:100], y, method="exact")
    init = (first.potential_source, first.potential_target)
    cost = pairwise_wfd(x, y)
    f, g = _warm_start_potentials(cost, init)
    np.testing.assert_array_equal(f[:100], first.potential_source)
    assert (f[:, None] + g[None, :] <= cost + 1e-12).all()  # dual feasible
    assert np.allclose((cost[100:] - f[100:, None] - g).min(axis=1), 0)  # tight: the c-transform
    warm = ot_distance(x, y, method="exact", potentials_init=init)
    cold = ot_distance(x, y, method="exact")
    assert warm.converged and warm.value == pytest.approx(cold.value, rel=1e-12, abs=1e-14)
    assert warm.value == pytest.approx(ot.emd2(np.full(160, 1 / 160), np.full(50, 1 / 50), cost), rel=1e-12)
    with pytest.raises(TarotInputError, match="do not fit"):
        ot_distance(x[:50], y, method="exact", potentials_init=init)  # f longer than the source


def test_staircase_arcs_carry_the_north_west_corner_plan():
    """The arcs that make every sparse problem feasible: the overlaps of the sources' and the
    targets' mass intervals (units of 1/(nm)) carry a plan with exactly the uniform marginals."""
    from tarot_select.distance import _staircase_arcs

    for n, m in [(1, 1), (1, 5), (5, 1), (3, 3), (4, 6), (7, 5), (12, 18), (900, 1873)]:
        i, j = _staircase_arcs(n, m)
        flow = np.minimum((i + 1) * m, (j + 1) * n) - np.maximum(i * m, j * n)
        assert (flow > 0).all() and len(i) <= n + m - 1
        assert len(set(zip(i.tolist(), j.tolist()))) == len(i)
        np.testing.assert_array_equal(np.bincount(i, flow, minlength=n), np.full(n, m))
        np.testing.assert_array_equal(np.bincount(j, flow, minlength=m), np.full(m, n))


def _clustered_pair(seed: int, n: int = 500, m: int = 200):
    r = np.random.default_rng(seed)
    centres = r.normal(size=(6, 16)) * 1.5
    x = unit_rows(centres[r.integers(0, 6, n)] + r.normal(size=(n, 16)))
    y = unit_rows(centres[r.integers(0, 3, m)] + r.normal(size=(m, 16)))
    return x, y


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("arcs_per_row", [8, 1])
def test_warm_exact_rounds_on_sparse_arcs_reach_the_dense_optimum(seed, arcs_per_row, monkeypatch):
    """A warm-started exact problem of at least ARCS_MIN_ENTRIES is solved on a few arcs
    (column generation) and certified on every pair: POT's dense optimum, duals feasible on
    every pair, no duality gap. With one arc a row the first restricted problem misses the
    optimal support and violated pairs are added until the certificate holds."""
    import tarot_select.distance as dist

    monkeypatch.setattr(dist, "ARCS_PER_ROW", arcs_per_row)
    monkeypatch.setattr(dist, "ARCS_MIN", 1 if arcs_per_row == 1 else dist.ARCS_MIN)
    runs = []
    on_arcs = dist._emd_on_arcs
    monkeypatch.setattr(dist, "_emd_on_arcs", lambda *a: runs.append(on_arcs(*a)) or runs[-1])
    x, y = _clustered_pair(seed)
    assert len(x) * len(y) >= dist.ARCS_MIN_ENTRIES
    first = ot_distance(x[:430], y, method="exact")
    res = ot_distance(x, y, method="exact", potentials_init=(first.potential_source, first.potential_target))
    assert len(runs) == 1 and runs[0] is not None  # the sparse path ran and certified its solution
    if arcs_per_row == 1:
        assert runs[0][3] > 1  # more than one restricted solve
    cost = pairwise_wfd(x, y)
    assert res.value == pytest.approx(ot.emd2(np.full(500, 1 / 500), np.full(200, 1 / 200), cost), rel=1e-12)
    f, g = res.potential_source, res.potential_target
    assert (f[:, None] + g[None, :] <= cost + 1e-10).all()
    assert res.value == pytest.approx(f.mean() + g.mean(), rel=1e-12)
    assert res.converged and res.bias_bound == 0.0


def test_sparse_arcs_fall_back_to_the_dense_solver_without_a_certificate(monkeypatch):
    import tarot_select.distance as dist

    monkeypatch.setattr(dist, "ARCS_PER_ROW", 1)
    monkeypatch.setattr(dist, "ARCS_MIN", 1)
    monkeypatch.setattr(dist, "ARCS_MAX_SOLVES", 1)
    runs = []
    on_arcs = dist._emd_on_arcs
    monkeypatch.setattr(dist, "_emd_on_arcs", lambda *a: runs.append(on_arcs(*a)) or runs[-1])
    x, y = _clustered_pair(0)
    first = ot_distance(x[:430], y, method="exact")
    res = ot_distance(x, y, method="exact", potentials_init=(first.potential_source, first.potential_target))
    assert runs == [None]  # one restricted solve, no certificate: the dense solver answered
    cost = pairwise_wfd(x, y)
    assert res.value == pytest.approx(ot.emd2(np.full(500, 1 / 500), np.full(200, 1 / 200), cost), rel=1e-12)


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
    res = ot_distance(x, y, max_exact_entries=10_000)
    assert res.method == "exact" and res.requested == "auto"
    assert ot_distance(x, y, max_exact_entries=100).method == "sinkhorn"


def test_auto_is_exact_in_the_middle_range_and_sinkhorn_beyond():
    # the middle range (900 x 700 ... 5,000 x 5,000) is exact: cheaper than Sinkhorn there
    # and unbiased; past the memory bound, or when many solves would exceed the time
    # budget while Sinkhorn is cheaper, Sinkhorn
    for n, m in [(900, 700), (2000, 1000), (5000, 5000)]:
        assert choose_solver(n, m) == "exact"
        assert estimated_seconds(n, m, "exact") <= EXACT_AFFORDABLE_SECONDS
    assert MAX_EXACT_ENTRIES >= 25_000_000
    assert choose_solver(MAX_EXACT_ENTRIES // 1000 + 1, 1000) == "sinkhorn"
    assert choose_solver(100_000, 10_000) == "sinkhorn"
    assert choose_solver(900, 900, warm_start=True, solves=10) == "exact"
    assert choose_solver(4500, 4500, warm_start=True, solves=100) == "sinkhorn"
    # the model grows with the size
    assert estimated_seconds(2000, 1000, "exact") > estimated_seconds(900, 700, "exact")
    assert estimated_seconds(900, 700, "sinkhorn", warm_start=True) < estimated_seconds(900, 700, "sinkhorn")
    with pytest.raises(TarotInputError, match="no cost model"):
        estimated_seconds(10, 10, "lp")


def test_every_distance_reports_its_solver_and_error_bound(rng):
    x, y = unit_rows(rng.normal(size=(150, 8))), unit_rows(rng.normal(size=(120, 8)) + 0.4)
    exact = ot_distance(x, y, method="exact")
    assert exact.bias_bound == 0 and exact.lower_bound == exact.value and exact.n_iter == 0
    for reg in (0.03, 0.01, 0.003):
        sk = ot_distance(x, y, method="sinkhorn", reg=reg)
        assert sk.method == "sinkhorn" and sk.converged and sk.n_iter > 0
        # certified: W in [lower_bound, value + 2 delta Cmax], |value - W| <= bias_bound
        assert sk.lower_bound <= exact.value + 1e-12 <= sk.value + 1e-9
        assert abs(sk.value - exact.value) <= sk.bias_bound
        # and much tighter than the a-priori entropic gap eps * log(min(n, m))
        assert sk.bias_bound < 0.5 * sk.reg * np.log(120)
        summary = sk.summary()
        assert summary["solver"] == "sinkhorn" and summary["bias_bound"] == sk.bias_bound
        assert set(summary) >= {"value", "solver", "requested", "reg", "bias_bound", "lower_bound", "converged"}


def test_dual_lower_bound_holds_for_any_potentials(rng):
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3))
    c = pairwise_wfd(x, y)
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30)
    w = ot.emd2(a, b, c)
    for _ in range(5):
        assert dual_lower_bound(c, a, b, rng.normal(size=40)) <= w + 1e-12
    f = ot_distance(x, y, method="exact").potential_source
    assert dual_lower_bound(c, a, b, f) == pytest.approx(w, abs=1e-9)  # tight at the optimum


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
    with pytest.raises(TarotInputError, match=r"cost matrix has shape \(3, 4\), expected \(4, 4\)"):
        ot_distance(x, x, cost=np.ones((3, 4)))


def test_minimal_pot_import_hides_optional_packages_during_the_import_only():
    """``_import_pot(minimal=True)`` loads a working POT without scikit-learn, networkx or
    torch, and removes its import hook afterwards (scikit-learn, a dependency of this
    project, imports normally after it). Run in a fresh interpreter: POT is loaded here."""
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from tarot_select.distance import _import_pot
        hooks = list(sys.meta_path)
        ot = _import_pot(minimal=True)
        loaded = [n for n in ("sklearn", "networkx", "torch", "geomloss") if n in sys.modules]
        a, b = np.full(3, 1 / 3), np.full(2, 1 / 2)
        value = float(ot.emd2(a, b, np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])))
        same_hooks = sys.meta_path == hooks
        import sklearn
        print(json.dumps({"loaded": loaded, "value": value, "same_hooks": same_hooks}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["same_hooks"]
    # rows 0 and 1 go to their zero-cost column (1/3 each), row 2 splits 1/6 + 1/6 at cost 2
    assert out["value"] == pytest.approx(2 / 3, rel=1e-12)
