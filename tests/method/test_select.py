import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import unit_rows

from tarot_select import TarotInputError, ot_distance, pairwise_wfd, select, select_fixed_size, select_otm
from tarot_select.knn import nearest_neighbors
from tarot_select.select import _fill_problem, target_folds


@pytest.mark.parametrize("budget", [1, 7, 40, 123, 400])
def test_fixed_size_returns_exactly_budget_unique(rng, budget):
    cand, targ = unit_rows(rng.normal(size=(400, 10))), unit_rows(rng.normal(size=(30, 10)))
    sel = select_fixed_size(cand, targ, budget)
    assert sel.size == budget
    assert len(np.unique(sel.indices)) == budget
    assert sel.indices.min() >= 0 and sel.indices.max() < 400


def test_fixed_size_first_rounds_are_nearest_neighbours(rng):
    cand, targ = unit_rows(rng.normal(size=(500, 8))), unit_rows(rng.normal(size=(20, 8)))
    first = np.unique(nearest_neighbors(cand, targ, 1).indices[:, 0])
    sel = select_fixed_size(cand, targ, len(first) + 5)
    assert set(first) <= set(sel.indices.tolist())
    assert sel.info["full_rounds"] >= 1


def _two_mode_fill_problem(pool: int, cut_rank: int):
    """A two-mode target over a pool spread on the sphere, and a budget that cuts round
    ``cut_rank`` in half: returns (rng, cand, targ, full rounds' union, the cut round's new
    points, how many of them the fill keeps)."""
    rng = np.random.default_rng(0)
    eye = np.eye(8)
    cand = unit_rows(rng.normal(size=(pool, 8)))
    targ = unit_rows(np.concatenate([rng.normal(size=(60, 8)) + 2 * eye[0], rng.normal(size=(40, 8)) + 2 * eye[1]]))
    nn = nearest_neighbors(cand, targ, cut_rank + 1).indices
    full = np.unique(nn[:, :cut_rank])
    new = np.setdiff1d(np.unique(nn[:, cut_rank]), full)
    return rng, cand, targ, full, new, len(new) // 2


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_fill_keeps_lowest_potentials_and_beats_the_opposite_ranking(method):
    # The budget is cut in the third round, so the fill step decides half of that round.
    rng, cand, targ, full, new, need = _two_mode_fill_problem(2000, cut_rank=2)
    sel = select_fixed_size(cand, targ, len(full) + need, ot_method=method)
    assert sel.info["full_rounds"] == 2 and sel.info["fill"]["kept"] == need
    assert sel.info["fill"]["solver"] == method and sel.info["fill"]["ot"]["solver"] == method

    f = ot_distance(cand[np.concatenate([full, new])], targ, method=method).potential_source[len(full) :]
    low = new[np.argsort(f, kind="stable")[:need]]
    high = new[np.argsort(-f, kind="stable")[:need]]
    assert sorted(sel.indices.tolist()) == sorted(np.concatenate([full, low]).tolist())

    def dist(fill):
        return ot_distance(cand[np.concatenate([full, fill])], targ, method="exact").value

    d_low, d_high = dist(low), dist(high)
    d_random = np.mean([dist(rng.choice(new, need, replace=False)) for _ in range(20)])
    assert d_low < d_random < d_high
    assert d_low == pytest.approx(ot_distance(cand[sel.indices], targ, method="exact").value)


def test_fill_sample_masses_keep_the_round_whole():
    order, new = [np.arange(10, 1010), np.arange(2000, 2500)], np.arange(5000, 5200)
    total = 1500 + 200
    src, mass, sampled = _fill_problem(order, new, m=100, max_entries=total * 100)  # fits: not sampled
    assert (
        not sampled
        and mass is None
        and src.tolist() == list(range(10, 1010)) + list(range(2000, 2500)) + list(range(5000, 5200))
    )
    src, mass, sampled = _fill_problem(order, new, m=100, max_entries=(400 + 200) * 100)
    assert sampled and len(src) == 600 and src[400:].tolist() == new.tolist()  # the round last, whole
    chosen = np.concatenate(order)
    assert np.isin(src[:400], chosen).all() and len(np.unique(src[:400])) == 400 and (np.diff(src[:400]) > 0).all()
    # each sampled point carries |S| / sample points' mass; the round keeps 1 / |S u N| each
    np.testing.assert_allclose(mass[:400], 1500 / (total * 400))
    np.testing.assert_allclose(mass[400:], 1 / total)
    assert mass.sum() == pytest.approx(1.0)
    again, _, _ = _fill_problem(order, new, m=100, max_entries=(400 + 200) * 100)
    assert again.tolist() == src.tolist()  # seeded
    small, _, _ = _fill_problem(order, new, m=100, max_entries=10)  # never fewer than m selected points
    assert len(small) == 100 + 200


def test_sampled_fill_is_recorded_and_beats_a_random_fill():
    # The setting of the test above with a larger pool: the fill cuts the sixth round. Forced to
    # solve with a quarter of the selection, the fill still picks better than chance.
    rng, cand, targ, full, new, need = _two_mode_fill_problem(4000, cut_rank=5)
    whole = select_fixed_size(cand, targ, len(full) + need)
    sampled = select_fixed_size(cand, targ, len(full) + need, fill_max_entries=(100 + len(new)) * len(targ))
    assert "sampled" not in whole.info["fill"]
    assert sampled.info["fill"]["sampled"] == {"selection": len(full), "kept": 100, "seed": 0}
    assert sorted(sampled.indices[: len(full)].tolist()) == full.tolist() and sampled.size == len(full) + need

    def dist(fill):
        return ot_distance(cand[np.concatenate([full, fill])], targ, method="exact").value

    def jaccard(a, b):
        return len(set(a) & set(b)) / len(set(a) | set(b))

    picks, best = sampled.indices[len(full) :], whole.indices[len(full) :]
    randoms = [rng.choice(new, need, replace=False) for _ in range(20)]
    assert dist(picks) < np.mean([dist(r) for r in randoms])
    assert jaccard(picks, best) > np.mean([jaccard(r, best) for r in randoms])


def _degenerate_fill_problem(q_first: bool):
    """Two targets t0 = (0, 0), t1 = (10, 0); candidates s1, s2 next to them (round 0),
    p = (1, 0) and q = (5, 6) (round 1: the second nearest of t0 and of t1).

    With budget 3 the fill keeps one of p, q. On the union {s1, s2, p, q} (masses 1/4,
    targets 1/2) the optimal plan sends s1, p to t0 and s2, q to t1: 4 positive entries,
    one fewer than a basis (n + m - 1 = 5), so the duals are degenerate. Fixing g0 = 0,
    g1 = γ is free in [0, 8] (f_q + g0 <= |q - t0| and f_p + g1 <= |p - t1|), and
    f_q - f_p = 6.81 - γ ranges over [-1.19, 6.81]: the exact duals may rank q first. Keeping
    p costs (0.1 + 0.1) / 3 + (1 + 9) / 6 = 1.733, keeping q (0.2 / 3 + 2 sqrt(61) / 6) 2.670.
    """
    pts = {"s1": [0.0, 0.1], "s2": [10.0, 0.1], "p": [1.0, 0.0], "q": [5.0, 6.0]}
    names = ["s1", "s2", "q", "p"] if q_first else ["s1", "s2", "p", "q"]
    return names, np.array([pts[k] for k in names]), np.array([[0.0, 0.0], [10.0, 0.0]])


def test_entropic_fill_beats_the_degenerate_exact_duals():
    import ot

    dists = {}
    for q_first in (True, False):
        names, cand, targ = _degenerate_fill_problem(q_first)
        plan = ot.emd(np.full(4, 0.25), np.full(2, 0.5), pairwise_wfd(cand, targ))
        assert (plan > 1e-12).sum() == 4 < len(cand) + len(targ) - 1  # a degenerate basis
        ours = select_fixed_size(cand, targ, 3)
        exact = select_fixed_size(cand, targ, 3, ot_method="exact")
        assert ours.info["full_rounds"] == 1 and ours.info["fill"]["round_size"] == 2
        assert sorted(names[i] for i in ours.indices) == ["p", "s1", "s2"]  # whatever the order
        for key, sel in (("ours", ours), ("exact", exact)):
            dists.setdefault(key, []).append(ot_distance(cand[sel.indices], targ, method="exact").value)
    assert dists["ours"] == pytest.approx([1.7333333, 1.7333333], abs=1e-6)
    # the exact-dual fill never does better, and in some candidate order it keeps q (POT
    # 0.9 returns f_p = f_q here, so the candidate index decides)
    assert all(o <= e + 1e-12 for o, e in zip(dists["ours"], dists["exact"], strict=True))
    assert max(dists["exact"]) > max(dists["ours"]) + 0.5


def test_fill_is_invariant_to_the_order_of_candidates_and_targets():
    # clustered, uniform masses, the first round already overflows at 5 %: the fill
    # decides the whole selection
    rng = np.random.default_rng(7)
    centres = 3 * rng.normal(size=(6, 12))
    cand = unit_rows(centres[rng.integers(0, 6, 600)] + rng.normal(size=(600, 12)))
    targ = unit_rows(centres[rng.integers(0, 2, 60)] + rng.normal(size=(60, 12)))
    perm, tperm = rng.permutation(600), rng.permutation(60)
    for budget in (30, 60, 90):
        a = select_fixed_size(cand, targ, budget)
        b = select_fixed_size(cand[perm], targ[tperm], budget)
        assert sorted(perm[b.indices].tolist()) == sorted(a.indices.tolist())
        assert np.array_equal(select_fixed_size(cand, targ, budget).indices, a.indices)  # deterministic
        assert a.info["fill"]["solver"] == "sinkhorn"
        assert a.info["fill"]["ot"]["bias_bound"] > 0


def test_fixed_size_bad_budget(rng):
    cand, targ = rng.normal(size=(10, 3)), rng.normal(size=(4, 3))
    with pytest.raises(TarotInputError, match="larger than the candidate pool"):
        select_fixed_size(cand, targ, 11)
    with pytest.raises(TarotInputError, match="at least 1"):
        select_fixed_size(cand, targ, 0)
    with pytest.raises(TarotInputError, match=r"ratio must be in \(0, 1\]"):
        select_fixed_size(cand, targ, ratio=1.5)


def test_otm_stops_at_the_minimum():
    # each target has an almost exact copy among the candidates (its nearest neighbour);
    # every other candidate is far away. The held-out distance falls while copies of
    # other targets come in and rises with the first far point.
    rng = np.random.default_rng(3)
    targ = rng.normal(size=(40, 4))
    copies = targ + 1e-3 * rng.normal(size=targ.shape)
    far = 10 + rng.normal(size=(60, 4))
    cand = np.concatenate([far[:30], copies, far[30:]])
    sel = select_otm(cand, targ, n_folds=4, seed=0, ot_method="exact")
    assert sorted(sel.indices.tolist()) == list(range(30, 70))  # exactly the copies, no far point
    assert sel.chosen_ratio == pytest.approx(40 / 100)
    for fold in sel.info["folds"]:
        trace = fold["trace"]
        # the last step (the one the released code would keep) added far points and rose
        assert trace[-1] > min(trace) and fold["best_distance"] == min(trace)
        assert fold["kept"] == 40


def test_otm_keeps_the_argmin_of_each_trace(rng):
    cand = unit_rows(rng.normal(size=(600, 8)))
    targ = unit_rows(rng.normal(size=(80, 8)) + 0.5)
    sel = select_otm(cand, targ, n_folds=5, seed=1, patience=2)
    for fold in sel.info["folds"]:
        trace = np.array(fold["trace"])
        assert fold["best_distance"] == pytest.approx(trace.min())
        # stopped after `patience` non-improving steps, or ran out of ranks
        assert len(trace) - 1 - int(np.argmin(trace)) <= 2
    assert 0 < sel.size <= 600 and len(np.unique(sel.indices)) == sel.size


def test_otm_folds_are_a_seeded_partition():
    folds = target_folds(23, 5, seed=4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert all(np.array_equal(a, b) for a, b in zip(folds, target_folds(23, 5, seed=4)))
    with pytest.raises(TarotInputError, match="cannot exceed"):
        target_folds(3, 5, 0)


def test_select_is_reproducible(rng):
    cand, targ = rng.normal(size=(300, 12)), rng.normal(size=(40, 12))
    for method, kw in [("tarot", {"ratio": 0.1}), ("otm", {}), ("random", {"budget": 9})]:
        a = select(method, cand, targ, seed=5, **kw)
        b = select(method, cand, targ, seed=5, **kw)
        assert np.array_equal(a.indices, b.indices)


def test_select_bad_input(rng):
    cand, targ = rng.normal(size=(20, 4)), rng.normal(size=(5, 4))
    with pytest.raises(TarotInputError, match="unknown method"):
        select("best", cand, targ, budget=3)
    with pytest.raises(TarotInputError, match="dimension mismatch"):
        select("tarot", cand, targ[:, :3], budget=3)
    bad = targ.copy()
    bad[2, 1] = np.nan
    with pytest.raises(TarotInputError, match="targets: row 2 holds NaN"):
        select("tarot", cand, bad, budget=3)
    with pytest.raises(TarotInputError, match="targets: is empty"):
        select("tarot", cand, targ[:0], budget=3)
    with pytest.raises(TarotInputError, match="otm chooses its own size"):
        select("otm", cand, targ, budget=3)
    with pytest.raises(TarotInputError, match="exactly one of budget or ratio"):
        select("dsdm", cand, targ)


def test_precomputed_wfd_features_give_the_same_selection(rng):
    from tarot_select import Whitener

    cand, targ = rng.normal(size=(300, 12)), rng.normal(size=(40, 12))
    w = Whitener("zca").fit(cand, targ)
    a = select("tarot", cand, targ, budget=30, whiten="zca")
    b = select("tarot", cand, targ, budget=30, wfd_features=(w.transform(cand), w.transform(targ)))
    assert np.array_equal(a.indices, b.indices) and a.ot_distance == pytest.approx(b.ot_distance)
    with pytest.raises(TarotInputError, match="WFD features have 299 candidates"):
        select("tarot", cand, targ, budget=30, wfd_features=(w.transform(cand[1:]), w.transform(targ)))


def test_otm_folds_on_forked_workers_give_the_same_selection(rng):
    from tarot_select.select import select_otm

    def unit_rows(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    x = unit_rows(rng.normal(size=(600, 8)) + np.repeat(rng.normal(size=(6, 8)) * 2, 100, axis=0))
    y = unit_rows(rng.normal(size=(60, 8)) + np.repeat(rng.normal(size=(2, 8)) * 2, 30, axis=0))
    one = select_otm(x, y, n_folds=5, seed=3)
    two = select_otm(x, y, n_folds=5, seed=3, workers=2)
    np.testing.assert_array_equal(one.indices, two.indices)
    assert [f["trace"] for f in one.info["folds"]] == [f["trace"] for f in two.info["folds"]]
    assert one.ot_trace == two.ot_trace and len(one.info["folds"]) == 5


def test_otm_exact_rounds_on_sparse_arcs_give_the_dense_rounds_selection(monkeypatch):
    """OTM's warm-started exact rounds solved on sparse arcs (certified optimal) give the same
    traces (to rounding) and the same selection as the dense network simplex."""
    import tarot_select.distance as dist

    r = np.random.default_rng(5)
    x = unit_rows(r.normal(size=(900, 8)) + np.repeat(r.normal(size=(6, 8)) * 2, 150, axis=0))
    y = unit_rows(r.normal(size=(300, 8)) + np.repeat(r.normal(size=(2, 8)) * 2, 150, axis=0))
    runs = []
    on_arcs = dist._emd_on_arcs
    monkeypatch.setattr(dist, "_emd_on_arcs", lambda *a: runs.append(on_arcs(*a)) or runs[-1])
    monkeypatch.setattr(dist, "ARCS_MIN_ENTRIES", 1 << 12)
    sparse = select_otm(x, y, n_folds=3, seed=1, ot_method="exact")
    assert runs and all(run is not None for run in runs)
    monkeypatch.setattr(dist, "ARCS_MIN_ENTRIES", 1 << 40)
    n_sparse = len(runs)
    dense = select_otm(x, y, n_folds=3, seed=1, ot_method="exact")
    assert len(runs) == n_sparse  # no sparse solve this time
    np.testing.assert_array_equal(sparse.indices, dense.indices)
    np.testing.assert_allclose(sparse.ot_trace, dense.ot_trace, rtol=1e-12)


def test_otm_fold_workers_split_the_blas_threads(monkeypatch):
    """Forked fold workers run BLAS on the parent's threads over ``workers``: uncapped, each
    worker's idle BLAS threads spin after its products and slow the other workers down."""
    import importlib

    from threadpoolctl import threadpool_info, threadpool_limits

    sel = importlib.import_module("tarot_select.select")

    def blas_threads_in_worker(state, fold):
        return fold, {"threads": max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")}

    if not any(p["user_api"] == "blas" for p in threadpool_info()):
        pytest.skip("no BLAS pool that threadpoolctl can see")
    monkeypatch.setattr(sel, "_otm_fold", blas_threads_in_worker)
    folds = [np.arange(i, i + 1) for i in range(4)]
    with threadpool_limits(limits=4, user_api="blas"):
        results = sel._otm_folds_in_processes(SimpleNamespace(solver="sinkhorn"), folds, workers=2)
        parent = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    assert [info["threads"] for _, info in results] == [2, 2, 2, 2]
    assert parent == 4  # the parent's pools are left as they were


def test_otm_fold_workers_import_pot_without_its_optional_packages():
    """Exact OTM's forked workers import POT once, before their folds, without scikit-learn
    or networkx (POT imports them only for functions a fold never calls); the parent imports
    nothing, and workers of Sinkhorn rounds do not import POT. A fresh interpreter, so that
    nothing is loaded before."""
    script = textwrap.dedent(
        """
        import importlib, json, sys
        from types import SimpleNamespace
        import numpy as np
        sel = importlib.import_module("tarot_select.select")
        names = ("ot", "sklearn", "networkx", "torch")

        def probe(state, fold):
            return fold, {"loaded": [n for n in names if n in sys.modules]}

        sel._otm_fold = probe
        folds = [np.arange(i, i + 1) for i in range(2)]
        out = {}
        for solver in ("exact", "sinkhorn"):
            res = sel._otm_folds_in_processes(SimpleNamespace(solver=solver), folds, workers=2)
            out[solver] = [info["loaded"] for _, info in res]
        out["parent"] = [n for n in names if n in sys.modules]
        print(json.dumps(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"exact": [["ot"], ["ot"]], "sinkhorn": [[], []], "parent": []}


def test_otm_exact_rounds_are_warm_started_and_give_the_same_selection(monkeypatch):
    """Each exact round starts the network simplex from the previous round's potentials
    (POT >= 0.9.7): the same optimum, so the same traces and selection as cold starts."""
    import functools

    import tarot_select.distance as dist

    ot = dist._import_pot()
    if not dist._emd_warm_start_supported(ot):
        pytest.skip("this POT has no warm start for emd2 (POT < 0.9.7)")
    rng = np.random.default_rng(5)
    x = unit_rows(rng.normal(size=(800, 12)) + np.repeat(rng.normal(size=(8, 12)) * 2, 100, axis=0))
    y = unit_rows(rng.normal(size=(80, 12)) + np.repeat(rng.normal(size=(2, 12)) * 2, 40, axis=0))
    calls = {"warm": 0, "cold": 0}
    emd2 = ot.emd2

    @functools.wraps(emd2)  # keeps emd2's signature: the warm start is detected from it
    def counting(*args, **kwargs):
        calls["warm" if kwargs.get("potentials_init") is not None else "cold"] += 1
        return emd2(*args, **kwargs)

    monkeypatch.setattr(ot, "emd2", counting)
    warm = select_otm(x, y, n_folds=4, seed=1, ot_method="exact")
    assert warm.info["solver"] == "exact"
    n_rounds = sum(len(f["trace"]) for f in warm.info["folds"])
    assert calls == {"warm": n_rounds - 4, "cold": 4}  # every round but each fold's first
    monkeypatch.setattr(dist, "_emd_warm_start_supported", lambda _ot: False)
    cold = select_otm(x, y, n_folds=4, seed=1, ot_method="exact")
    assert calls["cold"] == 4 + n_rounds
    np.testing.assert_array_equal(warm.indices, cold.indices)
    for a, b in zip(warm.info["folds"], cold.info["folds"], strict=True):
        np.testing.assert_allclose(a["trace"], b["trace"], rtol=0, atol=1e-12)
        assert a["kept"] == b["kept"]


def test_otm_exact_rounds_reuse_the_cost_rows_of_earlier_points(monkeypatch, rng):
    """Exact rounds compute only the new points' cost rows: every round's cost matrix must
    still be the full selection × held-out WFD matrix, row for row."""
    import sys

    from tarot_select.distance import pairwise_wfd

    sel_mod = sys.modules["tarot_select.select"]  # the package's ``select`` attribute is the function

    x = unit_rows(rng.normal(size=(500, 6)) + np.repeat(rng.normal(size=(5, 6)) * 2, 100, axis=0))
    y = unit_rows(rng.normal(size=(60, 6)) + 1.0)
    seen = []
    real = sel_mod.ot_distance

    def checking(source, target, **kwargs):
        cost = kwargs["cost"]
        assert cost is not None and cost.shape == (len(source), len(target))
        np.testing.assert_allclose(cost, pairwise_wfd(source, target), rtol=0, atol=1e-12)
        seen.append(len(source))
        return real(source, target, **kwargs)

    monkeypatch.setattr(sel_mod, "ot_distance", checking)
    res = select_otm(x, y, n_folds=3, seed=2, ot_method="exact", patience=3)
    assert len(seen) == sum(len(f["trace"]) for f in res.info["folds"]) and max(seen) > 2 * min(seen)


def test_evaluation_beyond_its_bound_is_skipped_not_attempted(rng, monkeypatch, caplog):
    import tarot_select.api as api_module

    x, y = rng.normal(size=(300, 6)), rng.normal(size=(20, 6))
    measured = select("tarot", x, y, budget=30)
    assert measured.ot_distance is not None and "solver" in measured.info["ot"]
    monkeypatch.setattr(api_module, "EVALUATE_MAX_ENTRIES", 30 * 20 - 1)
    with caplog.at_level("WARNING", logger="tarot_select.api"):
        sel = select("tarot", x, y, budget=30)
    assert sel.ot_distance is None and "30 selected x 20 targets" in sel.info["ot"]["skipped"]
    assert "OT distance not measured" in caplog.text
    assert sel.indices.tolist() == measured.indices.tolist()  # the selection itself is unchanged


@pytest.mark.parametrize("method", ["tarot", "otm"])
def test_precomputed_wfd_features_are_scanned_once(rng, monkeypatch, method):
    # a NaN/Inf scan reads the whole pool (12 s for a 41 GB memory map): api.select scans the
    # WFD features it is given, and the selection does not scan them again
    import tarot_select._validate as validate

    x, y = unit_rows(rng.normal(size=(300, 6))), unit_rows(rng.normal(size=(20, 6)))
    scanned = []
    real = validate.check_features

    def counting(arr, name):
        scanned.append(id(arr))
        return real(arr, name)

    monkeypatch.setattr(validate, "check_features", counting)
    kwargs = {"budget": 30} if method == "tarot" else {"n_folds": 4}
    select(method, x, y, wfd_features=(x, y), evaluate=False, **kwargs)
    assert scanned.count(id(x)) == 1 and scanned.count(id(y)) == 1
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(TarotInputError, match="row 7 holds NaN"):
        select(method, x, y, wfd_features=(bad, y), evaluate=False, **kwargs)
