"""The pieces that let selection scale: Sinkhorn with ε-scaling and warm starts,
neighbour lists reused across selections, and memory-map reads that stay off the
resident set."""

import numpy as np
import ot
import pytest
import torch
from conftest import unit_rows

from tarot_select import TarotInputError, select_fixed_size, select_otm
from tarot_select.distance import cost_matrix, ot_distance, pairwise_wfd, sinkhorn_log
from tarot_select.experiments.stages import whiten_features
from tarot_select.io import load_features, open_row_writer, release_rows, save_features, take_rows
from tarot_select.knn import Neighbors, TopK, nearest_neighbors


def _clouds(rng, n=300, m=200, d=16):
    return unit_rows(rng.normal(size=(n, d))), unit_rows(rng.normal(size=(m, d)) + 0.3)


def test_sinkhorn_matches_pot_at_the_same_eps(rng):
    x, y = _clouds(rng)
    c = pairwise_wfd(x, y)
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    eps = 0.01 * c.max()
    res = sinkhorn_log(torch.from_numpy(c), a, b, eps, tol=1e-9)
    plan = ot.sinkhorn(a, b, c, eps, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
    assert res.converged and res.error <= 1e-9
    assert res.value == pytest.approx(float((plan * c).sum()), rel=1e-7)
    # the plan built from the potentials has the right marginals
    p = a[:, None] * b[None, :] * np.exp((res.f[:, None] + res.g[None, :] - c) / eps)
    assert np.allclose(p.sum(1), a, atol=1e-12) and np.abs(p.sum(0) - b).sum() < 1e-8


def test_sinkhorn_duals_tend_to_the_exact_optimum(rng):
    x, y = _clouds(rng, 120, 80)
    ex = ot_distance(x, y, method="exact").value
    c = torch.from_numpy(pairwise_wfd(x, y))
    a, b = np.full(120, 1 / 120), np.full(80, 1 / 80)
    gaps, epss = [], (0.02, 0.008, 0.003)
    for eps in epss:
        r = sinkhorn_log(c, a, b, eps, tol=1e-9, max_iter=20_000)
        assert r.converged
        assert r.value >= ex - 1e-9  # the entropic plan is feasible: it costs at least the optimum
        gaps.append(abs(a @ r.f + b @ r.g - ex))  # dual objective of (f, g) vs the exact optimum
    # the gap shrinks like O(eps) (here about 4 eps)
    assert gaps[0] > gaps[1] > gaps[2]
    assert max(g / e for g, e in zip(gaps, epss, strict=True)) < 5


def test_warm_start_converges_to_the_cold_answer_in_fewer_iterations(rng):
    x, y = _clouds(rng, 400, 150)
    a, b = np.full(400, 1 / 400), np.full(150, 1 / 150)
    c_small = cost_matrix(x[:300], y, torch.float64)
    c = cost_matrix(x, y, torch.float64)
    eps = 0.01 * float(c.max())
    prev = sinkhorn_log(c_small, a[:300] * 400 / 300, b, eps, tol=1e-9)
    cold = sinkhorn_log(c, a, b, eps, tol=1e-9)
    warm = sinkhorn_log(c, a, b, eps, tol=1e-9, g_init=prev.g)
    assert warm.converged and cold.converged
    assert warm.value == pytest.approx(cold.value, rel=1e-8)
    assert warm.n_iter < cold.n_iter


def test_float32_sinkhorn_stops_at_its_rounding_floor(rng):
    x, y = _clouds(rng, 500, 300)
    a, b = np.full(500, 1 / 500), np.full(300, 1 / 300)
    c64, c32 = cost_matrix(x, y, torch.float64), cost_matrix(x, y, torch.float32)
    eps = 0.01 * float(c64.max())
    r64 = sinkhorn_log(c64, a, b, eps, tol=1e-9)
    r32 = sinkhorn_log(c32, a, b, eps, tol=1e-9, max_iter=5000)
    assert r32.converged and r32.n_iter < 200  # tolerance raised to the float32 floor, not 5000 iterations
    assert r32.value == pytest.approx(r64.value, rel=1e-4)
    with pytest.raises(TarotInputError, match="must be > 0"):
        sinkhorn_log(c64, a, b, 0.0)


def test_overrelaxation_reaches_the_same_fixed_point_in_fewer_iterations(rng):
    x, y = _clouds(rng, 300, 200, d=4)  # low dimension: a spread of costs, slow plain Sinkhorn
    a, b = np.full(300, 1 / 300), np.full(200, 1 / 200)
    c = cost_matrix(x, y, torch.float64)
    for reg in (0.02, 0.01):  # plain Sinkhorn: 723 iterations at 0.01, over-relaxed 106
        eps = reg * float(c.max())
        plain = sinkhorn_log(c, a, b, eps, tol=1e-9, max_iter=20_000, overrelax=False)
        fast = sinkhorn_log(c, a, b, eps, tol=1e-9, max_iter=20_000)
        assert plain.converged and fast.converged and plain.omega == 1.0 and fast.omega > 1.0
        assert fast.n_iter < plain.n_iter / 2
        assert fast.value == pytest.approx(plain.value, rel=1e-8)
        df = (fast.f - plain.f) - (fast.f - plain.f).mean()  # potentials agree up to a constant
        assert np.abs(df).max() < 1e-6 * float(c.max())
        assert fast.plan_error < 1e-8  # rows exact (last f update plain), columns within tol
    # a warm start keeps working with over-relaxation
    warm = sinkhorn_log(c, a, b, eps, tol=1e-9, g_init=fast.g + 0.01 * eps)
    assert warm.converged and warm.n_iter < fast.n_iter / 2


def test_block_rows_do_not_change_sinkhorn(rng):
    x, y = _clouds(rng, 250, 90)
    a, b = np.full(250, 1 / 250), np.full(90, 1 / 90)
    c = cost_matrix(x, y, torch.float64)
    one = sinkhorn_log(c, a, b, 0.02, tol=1e-10)
    many = sinkhorn_log(c, a, b, 0.02, tol=1e-10, block_entries=1000)  # 11 rows per block
    assert one.value == pytest.approx(many.value, rel=1e-10)
    assert np.allclose(one.g, many.g, atol=1e-10)


def test_topk_accumulator_and_neighbour_file_round_trip(rng, tmp_path):
    x, y = unit_rows(rng.normal(size=(700, 10))), unit_rows(rng.normal(size=(40, 10)))
    top = TopK(y, 6)
    for s in range(0, 700, 128):
        top.add(x[s : s + 128], s)
    nb = top.result()
    ref = nearest_neighbors(x, y, 6)
    assert np.array_equal(nb.indices, ref.indices) and nb.n_candidates == 700
    nb.save(tmp_path / "nb.npz")
    back = Neighbors.load(tmp_path / "nb.npz")
    assert np.array_equal(back.indices, nb.indices) and back.n_candidates == 700
    with pytest.raises(TarotInputError, match="searched in 700 candidates, not 699"):
        back.check(699, 40)
    with pytest.raises(TarotInputError, match="cover 40 targets, expected 41"):
        back.check(700, 41)
    with pytest.raises(TarotInputError, match="cannot read neighbour lists"):
        Neighbors.load(tmp_path / "missing.npz")


@pytest.fixture
def whitened(rng, tmp_path):
    cand = rng.normal(size=(900, 12)) + np.repeat(rng.normal(size=(9, 12)) * 3, 100, axis=0)
    targ = rng.normal(size=(60, 12)) + np.repeat(rng.normal(size=(3, 12)) * 3, 20, axis=0)
    paths = {k: tmp_path / f"{k}.npy" for k in ("c", "t", "wc", "wt")}
    save_features(paths["c"], cand.astype(np.float32))
    save_features(paths["t"], targ.astype(np.float32))
    nb_path = tmp_path / "nb.npz"
    whiten_features(paths["c"], paths["t"], paths["wc"], paths["wt"], out_neighbors=nb_path, neighbors_k=4)
    xw, tw = load_features(paths["wc"]).array, load_features(paths["wt"]).array
    return xw, tw, Neighbors.load(nb_path)


def test_whitening_pass_writes_the_exact_neighbour_lists(whitened):
    xw, tw, nb = whitened
    assert nb.k == 4
    assert np.array_equal(nb.indices, nearest_neighbors(xw, tw, 4).indices)


@pytest.mark.parametrize("budget", [50, 200, 500])
def test_precomputed_neighbours_do_not_change_selections(whitened, budget):
    xw, tw, nb = whitened
    a = select_fixed_size(xw, tw, budget)
    b = select_fixed_size(xw, tw, budget, neighbors=nb)
    assert np.array_equal(a.indices, b.indices)
    # 4 ranks cover budget 50 (no search of the pool); deeper budgets search again
    assert a.info["neighbor_searches"] >= 1
    assert (b.info["neighbor_searches"] == 0) == (budget == 50)
    assert b.info["neighbor_searches"] <= a.info["neighbor_searches"]


def test_precomputed_neighbours_do_not_change_otm(whitened):
    xw, tw, nb = whitened
    a = select_otm(xw, tw, n_folds=3, seed=1)
    b = select_otm(xw, tw, n_folds=3, seed=1, neighbors=nb)
    assert np.array_equal(a.indices, b.indices)
    assert a.ot_trace == pytest.approx(b.ot_trace, rel=1e-12)


def test_otm_uses_one_solver_for_every_round(whitened):
    xw, tw, _ = whitened
    sel = select_otm(xw, tw, n_folds=3, seed=1, ot_method="auto")
    assert sel.info["solver"] == "exact"  # 40 held-out targets: small
    assert all(fold["bias_bound"] == 0 for fold in sel.info["folds"])
    sink = select_otm(xw, tw, n_folds=3, seed=1, ot_method="sinkhorn")
    assert sink.info["solver"] == "sinkhorn"
    assert all(fold["bias_bound"] > 0 for fold in sink.info["folds"])  # each trace's error bound
    # patience 1: a new minimum every round, then the fold stops at the first rise of its own trace
    for fold in sel.info["folds"] + sink.info["folds"]:
        trace = np.asarray(fold["trace"])
        assert len(trace) >= 2 and np.all(np.diff(trace[:-1]) < 0) and trace[-1] >= trace[-2]
        assert fold["best_distance"] == trace[-2] and fold["best_rank"] >= len(trace) - 2


def _rss_file_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_memory_map_reads_leave_no_resident_pages(tmp_path, rng):
    path = tmp_path / "big.npy"
    rows, dim = 16384, 1024  # 64 MiB of float32
    with open_row_writer(path, (rows, dim), dtype="float32") as out:
        for s in range(0, rows, 4096):
            out.write(np.full((4096, dim), s, dtype=np.float32) + np.arange(4096, dtype=np.float32)[:, None])
    arr = np.load(path, mmap_mode="r")
    base = _rss_file_mib()
    idx = rng.integers(0, rows, 3000)
    idx[:40] = np.arange(100, 140)  # a run of consecutive rows, and duplicates elsewhere
    got = take_rows(arr, idx)
    assert np.array_equal(got, np.asarray(arr[idx]))  # fancy indexing maps pages ...
    assert _rss_file_mib() - base > 16
    release_rows(arr, 0, rows)  # ... which release_rows drops again
    before = _rss_file_mib()
    got = take_rows(arr, idx[::-1])
    assert np.array_equal(got[:, 0], idx[::-1].astype(np.float32))
    for s in range(0, rows, 2048):  # a streamed scan that releases as it goes
        np.array(arr[s : s + 2048])
        release_rows(arr, s, s + 2048)
    assert _rss_file_mib() - before < 8


def test_neighbour_searches_of_a_memory_map_leave_no_resident_pages(tmp_path, rng):
    """float32 rows of a memory map are read as views: the searches release their pages after
    using them (released before, the search mapped them again: the whole file stayed resident)."""
    from tarot_select.whiten import neighbors_of_files

    path = tmp_path / "big.npy"
    rows, dim = 16384, 1024  # 64 MiB of float32
    with open_row_writer(path, (rows, dim), dtype="float32") as out:
        for s in range(0, rows, 4096):
            out.write(rng.normal(size=(4096, dim)).astype(np.float32))
    targets = rng.normal(size=(20, dim)).astype(np.float32)
    np.save(tmp_path / "t.npy", targets)
    arr = np.load(path, mmap_mode="r")
    before = _rss_file_mib()
    nb = nearest_neighbors(arr, targets, 3, block_rows=2048)
    assert _rss_file_mib() - before < 8
    del arr
    before = _rss_file_mib()
    shard = neighbors_of_files(path, tmp_path / "t.npy", 3, block_rows=2048)
    assert _rss_file_mib() - before < 8
    np.testing.assert_array_equal(shard.indices, nb.indices)


def test_row_writer_is_all_or_nothing(tmp_path):
    path = tmp_path / "x.npy"
    with pytest.raises(TarotInputError, match="3 rows written, 4 declared"), open_row_writer(path, (4, 2)) as out:
        out.write(np.ones((3, 2)))
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(TarotInputError, match="width 2"), open_row_writer(path, (4, 2)) as out:
        out.write(np.ones((4, 3)))
    with open_row_writer(path, (4, 2), dtype="float16", meta={"note": "x"}) as out:
        out.write(np.arange(8).reshape(4, 2))
    fs = load_features(path)
    assert fs.array.dtype == np.float16 and np.array_equal(fs.array, np.arange(8).reshape(4, 2))
    assert fs.meta["note"] == "x"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_domain_iterations_equal_the_log_domain_ones(rng, dtype):
    """At the target ε the kernel domain (matrix-vector products on a stored kernel) must
    reach the log domain's answer, cold and warm, with and without absorption."""
    import tarot_select.distance as dist

    x, y = _clouds(rng, 500, 300, d=6)
    a, b = np.full(500, 1 / 500), np.full(300, 1 / 300)
    c = pairwise_wfd(x, y).astype(dtype)
    eps = 0.01 * float(c.max())
    tol = 1e-9 if dtype == np.float64 else 1e-5
    rtol = 1e-9 if dtype == np.float64 else 1e-5
    log_dom = sinkhorn_log(c, a, b, eps, tol=tol, kernel_max_entries=0)
    kern = sinkhorn_log(c, a, b, eps, tol=tol)
    assert log_dom.converged and kern.converged
    assert kern.value == pytest.approx(log_dom.value, rel=rtol)
    assert np.allclose(kern.f, log_dom.f, rtol=0, atol=50 * rtol * eps)
    assert np.allclose(kern.g, log_dom.g, rtol=0, atol=50 * rtol * eps)
    if dtype == np.float64:
        assert kern.n_iter == log_dom.n_iter  # the same iterates up to rounding
    assert kern.plan_error < 10 * tol
    warm = sinkhorn_log(c, a, b, eps, tol=tol, g_init=log_dom.g + 0.3 * eps)
    assert warm.converged and warm.value == pytest.approx(log_dom.value, rel=rtol)
    # absorption at every update (a drift bound of 0) changes nothing but the time
    absorbing = dict(dist.ABSORB_AT)
    try:
        dist.ABSORB_AT.update({k: 0.0 for k in absorbing})
        every = sinkhorn_log(c, a, b, eps, tol=tol)
    finally:
        dist.ABSORB_AT.update(absorbing)
    assert every.converged and every.value == pytest.approx(log_dom.value, rel=rtol)


def test_a_kernel_that_underflows_falls_back_to_the_log_domain(rng, caplog):
    # a warm start with one target potential far below the others: that kernel column
    # underflows (all of it below float64's tiny), so the iterations run in the log domain
    x, y = _clouds(rng, 200, 100, d=6)
    a, b = np.full(200, 1 / 200), np.full(100, 1 / 100)
    c = pairwise_wfd(x, y)
    eps = 0.01 * float(c.max())
    ref = sinkhorn_log(c, a, b, eps, tol=1e-9, kernel_max_entries=0)
    g0 = ref.g.copy()
    g0[7] -= 2000 * eps
    with caplog.at_level("DEBUG", logger="tarot_select.distance"):
        res = sinkhorn_log(c, a, b, eps, tol=1e-9, g_init=g0)
    assert "kernel underflows or overflows" in caplog.text
    assert res.converged and res.value == pytest.approx(ref.value, rel=1e-9)
