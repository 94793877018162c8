"""Influence Distillation (``infdist``): exactness of each step, round-robin, errors, API, selection quality."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

from tarot_select import (
    InfdistOptions,
    Propagation,
    Selection,
    TarotInputError,
    choose_landmarks,
    influence_distillation,
    landmark_influence,
    median_bandwidth,
    propagate,
    rbf_kernel,
    round_robin,
    select,
)
from tarot_select import infdist as infdist_module


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _naive_round_robin(scores, budget, seed):
    """Slow reference: every pick scans the target's full ranking (score desc, index asc)."""
    n, m = scores.shape
    rng = np.random.default_rng(seed)
    rankings = [np.lexsort((np.arange(n), -scores[:, j])) for j in range(m)]
    taken, out = set(), []
    while len(out) < budget:
        for j in rng.permutation(m):
            pick = next(int(i) for i in rankings[j] if int(i) not in taken)
            taken.add(pick)
            out.append(pick)
            if len(out) == budget:
                break
    return np.array(out)


# --- steps 2-4: landmarks, influence, kernel, propagation -----------------------------------


def test_choose_landmarks_is_seeded_sorted_and_distinct():
    a = choose_landmarks(100, 20, seed=3)
    assert a.dtype == np.int64 and a.shape == (20,)
    assert np.array_equal(a, np.sort(a)) and len(np.unique(a)) == 20 and 0 <= a.min() and a.max() < 100
    assert np.array_equal(a, choose_landmarks(100, 20, seed=3))
    assert not np.array_equal(a, choose_landmarks(100, 20, seed=4))
    assert np.array_equal(choose_landmarks(7, 7), np.arange(7))


def test_landmark_influence_is_weighted_sum_of_block_cosines(rng):
    g, y = rng.normal(size=(9, 7)), rng.normal(size=(4, 7))
    eta = np.array([3.0, 1.0]) / 4.0
    cos1 = _unit(g[:, :3]) @ _unit(y[:, :3]).T
    cos2 = _unit(g[:, 3:]) @ _unit(y[:, 3:]).T
    got = landmark_influence(g, y, checkpoint_dims=[3, 4], checkpoint_weights=[3e-5, 1e-5])
    assert got.shape == (9, 4) and got.dtype == np.float64
    assert np.allclose(got, eta[0] * cos1 + eta[1] * cos2, rtol=1e-12, atol=1e-12)
    # one block: plain cosine; equal weights when none are given
    assert np.allclose(landmark_influence(g, y), _unit(g) @ _unit(y).T)
    assert np.allclose(landmark_influence(g, y, checkpoint_dims=[3, 4]), (cos1 + cos2) / 2)


def test_rbf_kernel_matches_direct_formula(rng):
    a, b = rng.normal(size=(11, 5)), rng.normal(size=(7, 5)) + 0.5
    direct = np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * 1.7**2))
    assert np.allclose(rbf_kernel(a, b, 1.7), direct, rtol=1e-12, atol=1e-14)
    same = rbf_kernel(a, a, 0.3)
    assert np.all(same <= 1.0) and np.allclose(np.diag(same), 1.0)


def test_median_bandwidth_is_median_pairwise_distance(rng):
    x = rng.normal(size=(60, 4)) * 3
    assert median_bandwidth(x) == pytest.approx(np.median(pdist(x)), rel=1e-12)
    # a seeded subsample beyond max_samples: deterministic, close to the full median
    big = rng.normal(size=(400, 3))
    sub = median_bandwidth(big, max_samples=100, seed=5)
    assert sub == median_bandwidth(big, max_samples=100, seed=5)
    assert sub != median_bandwidth(big, max_samples=100, seed=6)
    assert sub == pytest.approx(np.median(pdist(big)), rel=0.1)
    assert median_bandwidth(np.ones((5, 3))) == 1e-6  # all distances 0: the floor


def test_whole_pool_linear_undamped_reproduces_exact_influence(rng):
    n, m, d = 30, 4, 12
    emb = rng.normal(size=(n, 3 * n))  # full row rank: K = E E^T is invertible
    g, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    exact = landmark_influence(g, y)
    prop = propagate(emb, exact, emb, kernel="linear", damping=0.0)
    assert isinstance(prop, Propagation) and prop.scores.dtype == np.float32 and prop.scores.shape == (n, m)
    assert prop.bandwidth is None and prop.kernel == "linear" and prop.solver == "cholesky"
    assert np.allclose(prop.scores, exact, rtol=1e-5, atol=1e-5)
    # the same through the method: top-k by the exact mean influence
    opts = InfdistOptions(kernel="linear", damping=0.0, strategy="top_k")
    sel = influence_distillation(emb, np.arange(n), g, y, 8, opts)
    assert sel.indices.tolist() == np.argsort(-exact.mean(1), kind="stable")[:8].tolist()


def test_rbf_krr_equals_closed_form_solve(rng):
    land, pool = rng.normal(size=(15, 5)), rng.normal(size=(40, 5))
    p = rng.normal(size=(15, 3))
    sigma = np.median(pdist(land))
    k_ll = np.exp(-cdist(land, land, "sqeuclidean") / (2 * sigma**2))
    k_el = np.exp(-cdist(pool, land, "sqeuclidean") / (2 * sigma**2))
    alpha = np.linalg.solve(k_ll + 0.1 * np.mean(np.diag(k_ll)) * np.eye(15), p)
    prop = propagate(land, p, pool, kernel="rbf", damping=0.1, block_rows=7)  # several row blocks
    assert prop.bandwidth == pytest.approx(sigma, rel=1e-12) and prop.damping == 0.1
    assert np.allclose(prop.coefficients, alpha, rtol=1e-8, atol=1e-10)
    assert np.allclose(prop.scores, k_el @ alpha, rtol=1e-5, atol=1e-6)
    # a given bandwidth is used as is; 1-D scores give one column
    one = propagate(land, p[:, 0], pool, bandwidth=2.0, damping=0.1)
    k2 = np.exp(-cdist(land, land, "sqeuclidean") / 8.0)
    a2 = np.linalg.solve(k2 + 0.1 * np.eye(15), p[:, 0])
    assert one.scores.shape == (40, 1) and one.bandwidth == 2.0
    assert np.allclose(one.scores[:, 0], np.exp(-cdist(pool, land, "sqeuclidean") / 8.0) @ a2, atol=1e-6)


def test_linear_krr_damping_is_relative_to_the_mean_kernel_diagonal(rng):
    land, pool = 3.0 * rng.normal(size=(12, 20)), rng.normal(size=(30, 20))
    p = rng.normal(size=(12, 2))
    k_ll = land @ land.T
    alpha = np.linalg.solve(k_ll + 0.05 * np.mean(np.diag(k_ll)) * np.eye(12), p)
    prop = propagate(land, p, pool, kernel="linear", damping=0.05)
    assert np.allclose(prop.coefficients, alpha, rtol=1e-8, atol=1e-12)
    assert np.allclose(prop.scores, pool @ land.T @ alpha, rtol=1e-5, atol=1e-6)


def test_propagate_reads_memmapped_embeddings(tmp_path, rng):
    pool = rng.normal(size=(50, 6)).astype(np.float32)
    np.save(tmp_path / "e.npy", pool)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    p = rng.normal(size=(10, 2))
    a = propagate(pool[:10], p, mm, block_rows=16)
    b = propagate(pool[:10], p, pool)
    assert np.array_equal(a.scores, b.scores)


def test_singular_undamped_kernel_falls_back_to_least_squares(rng, caplog):
    land = np.repeat(rng.normal(size=(3, 4)), 2, axis=0)  # duplicated rows: K_LL is singular
    p = rng.normal(size=(6, 2))
    pool = rng.normal(size=(20, 4))
    with caplog.at_level(logging.WARNING, logger="tarot_select.infdist"):
        prop = propagate(land, p, pool, kernel="linear", damping=0.0)
    assert prop.solver == "lstsq" and np.isfinite(prop.scores).all()
    # least squares' minimum-norm solution: alpha = pinv(K_LL) p, scores = K_pool,L alpha
    expected = pool @ land.T @ np.linalg.pinv(land @ land.T) @ p
    assert np.abs(expected).max() > 1
    np.testing.assert_allclose(prop.scores, expected, rtol=1e-4, atol=1e-5)
    assert any("least squares" in r.message for r in caplog.records)


# --- step 5: selection ------------------------------------------------------------------------


def test_round_robin_distinct_favourites_come_first(rng):
    n, m = 60, 6
    scores = rng.random((n, m))
    best = rng.choice(n, size=m, replace=False)
    scores[best, np.arange(m)] = 10.0
    picks = round_robin(scores, 20, seed=1)
    assert set(picks[:m].tolist()) == set(best.tolist())


def test_round_robin_shared_favourite_is_taken_once(rng):
    n, m, seed = 40, 5, 3
    scores = rng.random((n, m))
    scores[7, :] = 10.0  # everybody's favourite
    second = np.array([11, 12, 13, 14, 15])
    scores[second, np.arange(m)] = 5.0
    picks = round_robin(scores, m, seed=seed)
    first = int(np.random.default_rng(seed).permutation(m)[0])
    assert picks[0] == 7 and (picks == 7).sum() == 1
    assert set(picks[1:].tolist()) == {int(second[j]) for j in range(m) if j != first}


def test_round_robin_is_distinct_deterministic_and_seeded(rng):
    scores = rng.normal(size=(200, 9))
    a = round_robin(scores, 150, seed=0)
    assert a.dtype == np.int64 and a.shape == (150,) and len(np.unique(a)) == 150
    assert np.array_equal(a, round_robin(scores, 150, seed=0))
    assert not np.array_equal(a, round_robin(scores, 150, seed=1))
    assert np.array_equal(np.sort(round_robin(scores, 200, seed=2)), np.arange(200))  # the whole pool


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "shape,budget,kind",
    [((120, 7), 90, "free"), ((80, 30), 25, "shared"), ((150, 4), 60, "ties"), ((90, 3), 90, "ties")],
)
def test_round_robin_matches_slow_reference(seed, shape, budget, kind):
    rng = np.random.default_rng(100 + seed)
    n = shape[0]
    if kind == "free":
        scores = rng.normal(size=shape)
    elif kind == "shared":  # highly correlated rankings: deep skips past other targets' picks
        scores = rng.normal(size=(n, 1)) + 0.05 * rng.normal(size=shape)
    else:  # many ties, broken by the lowest index
        scores = rng.integers(0, 5, size=shape).astype(np.float64)
    assert np.array_equal(round_robin(scores, budget, seed=seed), _naive_round_robin(scores, budget, seed))


def test_round_robin_lazy_deepening_matches_reference(monkeypatch):
    rng = np.random.default_rng(7)
    n, m = 3000, 20
    scores = (rng.normal(size=(n, 1)) + 0.1 * rng.normal(size=(n, m))).astype(np.float32)
    monkeypatch.setattr(infdist_module, "_PREFIX_BYTES", 1)  # start at depth 64, deepen when used up
    assert np.array_equal(round_robin(scores, 1500, seed=4), _naive_round_robin(scores, 1500, 4))


def test_top_k_picks_highest_mean_scores(rng):
    emb = rng.normal(size=(120, 6))
    idx = choose_landmarks(120, 30, seed=0)
    g, y = rng.normal(size=(30, 10)), rng.normal(size=(5, 10))
    opts = InfdistOptions(strategy="top_k", damping=0.05)
    sel = influence_distillation(emb, idx, g, y, 25, opts)
    prop = propagate(emb[idx], landmark_influence(g, y), emb, damping=0.05)
    mean = prop.scores.mean(1, dtype=np.float64)
    assert sel.indices.tolist() == np.argsort(-mean, kind="stable")[:25].tolist()
    assert sel.info["score_min_kept"] == pytest.approx(np.sort(mean)[-25])
    assert sel.info["score_max"] == pytest.approx(mean.max())
    rr = influence_distillation(emb, idx, g, y, 25, InfdistOptions(damping=0.05))
    assert rr.indices.tolist() == round_robin(prop.scores, 25, seed=0).tolist()


def test_selection_fields_and_info(rng):
    emb = rng.normal(size=(80, 5))
    idx = choose_landmarks(80, 16)
    sel = influence_distillation(emb, idx, rng.normal(size=(16, 8)), rng.normal(size=(3, 8)), 12)
    assert isinstance(sel, Selection) and sel.method == "infdist" and sel.size == 12 and sel.budget == 12
    assert sel.n_candidates == 80 and len(np.unique(sel.indices)) == 12
    assert sel.info["n_landmarks"] == 16 and sel.info["kernel"] == "rbf" and sel.info["strategy"] == "round_robin"
    assert sel.info["embedding_dim"] == 5 and sel.info["damping"] == 0.01 and sel.info["bandwidth"] > 0
    assert set(sel.timings) == {"influence", "propagate", "select"}


def test_infdist_picks_the_cluster_aligned_with_targets():
    rng = np.random.default_rng(0)
    d, per = 20, 200
    axes = np.eye(d)[:5] * 3.0
    feats = np.concatenate([a + 0.6 * rng.normal(size=(per, d)) for a in axes])  # 5 clusters; 0 is the target's
    targets = axes[0] + 0.6 * rng.normal(size=(10, d))
    emb = feats @ rng.normal(size=(d, 32)) / np.sqrt(d)  # a smooth (linear) function of the features
    n = len(feats)
    idx = choose_landmarks(n, n // 5, seed=1)
    for strategy in ("round_robin", "top_k"):
        sel = influence_distillation(emb, idx, feats[idx], targets, per, InfdistOptions(strategy=strategy))
        aligned = np.mean(sel.indices < per)
        assert aligned > 0.8, (strategy, aligned)  # random selection: 0.2


# --- errors -----------------------------------------------------------------------------------


def _inputs(rng):
    emb = rng.normal(size=(20, 4))
    idx = np.array([0, 3, 5, 9])
    return emb, idx, rng.normal(size=(4, 6)), rng.normal(size=(3, 6))


def _with_nan(x, row=1):
    x = x.copy()
    x[row, 0] = np.nan
    return x


@pytest.mark.parametrize(
    "case,message",
    [
        ("more_landmarks", "5 landmarks but only 4 candidates"),
        ("duplicate", "duplicates"),
        ("out_of_range", "landmark index 20 is outside the pool"),
        ("negative", "landmark index -1 is outside the pool"),
        ("float_indices", "landmark indices must be integers"),
        ("rows", "landmark features have 3 rows but there are 4 landmark indices"),
        ("dims", "landmark features have 6 dims, targets have 5"),
        ("empty_targets", "targets: is empty"),
        ("nan_embeddings", "embeddings: row 1 holds NaN or Inf"),
        ("inf_landmarks", "landmark features: row 1 holds NaN or Inf"),
        ("nan_targets", "targets: row 1 holds NaN or Inf"),
        ("budget_big", "budget 21 is larger than the candidate pool"),
        ("budget_zero", "budget must be at least 1"),
        ("ckpt_dims", "do not add up"),
        ("options_type", "must be an InfdistOptions"),
    ],
)
def test_influence_distillation_rejects_bad_input(rng, case, message):
    emb, idx, g, y = _inputs(rng)
    budget = 5
    kwargs = {}
    if case == "more_landmarks":
        emb, idx, g = emb[:4], np.arange(5), rng.normal(size=(5, 6))
    elif case == "duplicate":
        idx = np.array([0, 3, 3, 9])
    elif case == "out_of_range":
        idx = np.array([0, 3, 5, 20])
    elif case == "negative":
        idx = np.array([-1, 3, 5, 9])
    elif case == "float_indices":
        idx = idx.astype(float)
    elif case == "rows":
        g = g[:3]
    elif case == "dims":
        y = rng.normal(size=(3, 5))
    elif case == "empty_targets":
        y = np.zeros((0, 6))
    elif case == "nan_embeddings":
        emb = _with_nan(emb)
    elif case == "inf_landmarks":
        g = g.copy()
        g[1, 2] = np.inf
    elif case == "nan_targets":
        y = _with_nan(y)
    elif case == "budget_big":
        budget = 21
    elif case == "budget_zero":
        budget = 0
    elif case == "ckpt_dims":
        kwargs["checkpoint_dims"] = [2, 2]
    with pytest.raises(TarotInputError, match=message):
        opts = "rbf" if case == "options_type" else None
        influence_distillation(emb, idx, g, y, budget, opts, **kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kernel": "laplace"}, "unknown kernel 'laplace'"),
        ({"strategy": "greedy"}, "unknown strategy 'greedy'"),
        ({"damping": -0.1}, "damping must be finite and >= 0"),
        ({"damping": float("nan")}, "damping must be finite"),
        ({"bandwidth": 0.0}, "bandwidth must be finite and > 0"),
        ({"bandwidth": -2.0}, "bandwidth must be finite and > 0"),
        ({"kernel": "linear", "bandwidth": 1.0}, "linear kernel has no bandwidth"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_options_reject_bad_settings(kwargs, message):
    with pytest.raises(TarotInputError, match=message):
        InfdistOptions(**kwargs)


def test_function_level_errors(rng):
    x = rng.normal(size=(10, 3))
    with pytest.raises(TarotInputError, match="6 landmarks requested from a pool of 5"):
        choose_landmarks(5, 6)
    with pytest.raises(TarotInputError, match="n_landmarks must be an integer >= 1"):
        choose_landmarks(5, 0)
    with pytest.raises(TarotInputError, match="bandwidth must be finite and > 0"):
        rbf_kernel(x, x, 0.0)
    with pytest.raises(TarotInputError, match="landmark scores must have shape"):
        propagate(x[:4], np.zeros((3, 2)), x)
    with pytest.raises(TarotInputError, match="landmark embeddings have 3 dims, embeddings have 2"):
        propagate(x[:4], np.zeros(4), x[:, :2])
    with pytest.raises(TarotInputError, match="damping must be finite and >= 0"):
        propagate(x[:4], np.zeros(4), x, damping=-1.0)
    with pytest.raises(TarotInputError, match="landmark scores must be finite"):
        propagate(x[:4], np.array([0.0, np.nan, 1.0, 2.0]), x)
    with pytest.raises(TarotInputError, match="budget 11 is larger"):
        round_robin(x, 11)
    with pytest.raises(TarotInputError, match="scores must be finite"):
        round_robin(_with_nan(x), 2)
    with pytest.raises(TarotInputError, match="landmark features have 3 dims, targets have 2"):
        landmark_influence(x, x[:, :2])
    with pytest.raises(TarotInputError, match="need 2 positive checkpoint weights"):
        landmark_influence(x, x, checkpoint_dims=[1, 2], checkpoint_weights=[1.0, 0.0])


# --- the API -----------------------------------------------------------------------------------


def test_api_select_infdist(rng):
    emb = rng.normal(size=(100, 6))
    idx = choose_landmarks(100, 25, seed=2)
    g, y = rng.normal(size=(25, 8)), rng.normal(size=(7, 8))
    sel = select("infdist", emb, y, budget=15, landmarks=(idx, g))
    assert isinstance(sel, Selection) and sel.method == "infdist" and sel.size == 15 and sel.budget == 15
    assert sel.ot_distance is None and sel.info["whitening"] is None and "ot" not in sel.info
    assert "infdist.propagate" in sel.timings
    direct = influence_distillation(emb, idx, g, y, 15, InfdistOptions(seed=0))
    assert np.array_equal(sel.indices, direct.indices)
    # options and a ratio pass through
    top = select("infdist", emb, y, ratio=0.1, landmarks=(idx, g), infdist=InfdistOptions(strategy="top_k"))
    assert top.size == 10 and top.info["strategy"] == "top_k"
    # with WFD features: OT distance and weighting
    cand_w, targ_w = _unit(rng.normal(size=(100, 4))), _unit(rng.normal(size=(7, 4)))
    ev = select("infdist", emb, y, budget=15, landmarks=(idx, g), wfd_features=(cand_w, targ_w), weighting="optimal")
    assert ev.ot_distance is not None and np.isfinite(ev.ot_distance) and ev.info["whitening"] == "precomputed"
    assert ev.weights is not None and ev.weights.shape == (15,) and np.array_equal(ev.indices, sel.indices)


def test_api_infdist_errors(rng):
    emb, y = rng.normal(size=(30, 5)), rng.normal(size=(4, 8))
    idx, g = np.arange(6), rng.normal(size=(6, 8))
    with pytest.raises(TarotInputError, match="infdist needs landmarks"):
        select("infdist", emb, y, budget=5)
    with pytest.raises(TarotInputError, match="landmarks must be a pair"):
        select("infdist", emb, y, budget=5, landmarks=(idx,))
    with pytest.raises(TarotInputError, match="needs wfd_features"):
        select("infdist", emb, y, budget=5, landmarks=(idx, g), weighting="potential")
    with pytest.raises(TarotInputError, match="landmark features have 8 dims, targets have 7"):
        select("infdist", emb, y[:, :7], budget=5, landmarks=(idx, g))
    with pytest.raises(TarotInputError, match="budget 31 is larger"):
        select("infdist", emb, y, budget=31, landmarks=(idx, g))
    with pytest.raises(TarotInputError, match="checkpoint dims"):
        select("infdist", emb, y, budget=5, landmarks=(idx, g), checkpoint_dims=[4, 3])
