"""LDS evaluation: subsets, Spearman, known-answer LDS, paired bootstrap differences, TRAK / WFD
scorers and the diagnostics (TRAK w/o q, whitened cosine × q), the margin output."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch.func import grad, vmap

from tarot_select import TarotInputError
from tarot_select.lds import (
    ATTRIBUTION_METHODS,
    DIAGNOSTIC_METHODS,
    LDSDifference,
    LDSResult,
    attribution_scores,
    attribution_scores_many,
    default_pairs,
    ensemble_scores,
    grad_dot_scores,
    lds,
    lds_difference,
    spearman_columns,
    subset_masks,
    trak_scores,
    wfd_scores,
    whitened_cosine_scores,
)
from tarot_select.outputs import margin


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- subset masks


def test_subset_masks_shape_counts_and_seeding():
    masks = subset_masks(101, 40, fraction=0.3, seed=7)
    assert masks.shape == (40, 101) and masks.dtype == np.bool_
    assert (masks.sum(axis=1) == round(0.3 * 101)).all()
    np.testing.assert_array_equal(masks, subset_masks(101, 40, fraction=0.3, seed=7))
    other = subset_masks(101, 40, fraction=0.3, seed=8)
    assert not np.array_equal(masks, other)
    assert len({row.tobytes() for row in masks}) == 40  # rows are different subsets
    # every example is included about fraction of the time
    inclusion = subset_masks(50, 4000, fraction=0.5, seed=0).mean(axis=0)
    assert np.abs(inclusion - 0.5).max() < 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 1, "n_subsets": 3},
        {"n_train": 10, "n_subsets": 0},
        {"n_train": 10, "n_subsets": 3, "fraction": 1.0},
        {"n_train": 10, "n_subsets": 3, "fraction": 0.01},
        {"n_train": 10, "n_subsets": 3, "seed": -1},
        {"n_train": 10.0, "n_subsets": 3},
    ],
)
def test_subset_masks_rejects_bad_input(kwargs):
    with pytest.raises(TarotInputError):
        subset_masks(**kwargs)


# --------------------------------------------------------------------------- Spearman and LDS


def test_spearman_columns_matches_scipy_with_ties(rng):
    a = rng.integers(0, 5, size=(30, 12)).astype(float)  # many ties
    b = rng.integers(0, 4, size=(30, 12)).astype(float) + 0.3 * a
    b[:, 3] = a[:, 3]  # perfect correlation
    b[:, 4] = -a[:, 4]
    got = spearman_columns(a, b)
    want = np.array([scipy.stats.spearmanr(a[:, j], b[:, j]).statistic for j in range(12)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[3] == pytest.approx(1.0) and got[4] == pytest.approx(-1.0)


def test_spearman_columns_constant_column_is_nan(rng):
    a = rng.normal(size=(10, 3))
    b = rng.normal(size=(10, 3))
    b[:, 1] = 2.0
    got = spearman_columns(a, b)
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()


def _linear_world(rng: np.random.Generator, n: int = 200, m: int = 50, n_subsets: int = 200, noise: float = 0.01):
    """Outputs that are exactly additive in the training subset, plus small noise."""
    a = rng.normal(size=(n, m))
    masks = subset_masks(n, n_subsets, 0.5, seed=3)
    outputs = masks.astype(float) @ a
    outputs += noise * outputs.std() * rng.normal(size=outputs.shape)
    return a, masks, outputs


def test_lds_known_answers(rng):
    a, masks, outputs = _linear_world(rng)
    exact = lds(a, masks, outputs, n_bootstrap=200, seed=1)
    assert isinstance(exact, LDSResult)
    assert exact.value > 0.95 and exact.n_targets == 50 and exact.n_subsets == 200 and exact.n_excluded == 0
    assert exact.per_target.shape == (50,) and (exact.per_target > 0.9).all()
    assert lds(-a, masks, outputs, n_bootstrap=0).value < -0.95
    random = lds(rng.normal(size=a.shape), masks, outputs, n_bootstrap=0)
    assert abs(random.value) < 0.1
    # positive rescaling and per-target shifts of the scores do not change any rank
    shifted = lds(3.0 * a + rng.normal(size=(1, 50)), masks, outputs, n_bootstrap=0)
    np.testing.assert_allclose(shifted.per_target, exact.per_target, atol=1e-12)


def test_lds_noisier_scores_score_lower(rng):
    a, masks, outputs = _linear_world(rng)
    values = [lds(a + s * rng.normal(size=a.shape), masks, outputs, n_bootstrap=0).value for s in (0.0, 1.0, 3.0)]
    assert values[0] > values[1] > values[2] > 0.0


def test_lds_bootstrap_interval_and_determinism(rng):
    a, masks, outputs = _linear_world(rng, noise=2.0)
    first = lds(a, masks, outputs, n_bootstrap=500, seed=4, ci=0.9)
    again = lds(a, masks, outputs, n_bootstrap=500, seed=4, ci=0.9)
    assert first.ci_low < first.value < first.ci_high and first.std > 0 and first.ci == 0.9
    assert (first.ci_low, first.ci_high, first.std) == (again.ci_low, again.ci_high, again.std)
    sem = first.per_target.std(ddof=1) / np.sqrt(first.n_targets)
    assert first.std == pytest.approx(sem, rel=0.2)
    assert set(first.to_dict()) >= {"value", "std", "ci_low", "ci_high", "n_subsets", "n_targets", "n_excluded"}


def test_lds_excludes_and_counts_constant_targets(rng, caplog):
    a, masks, outputs = _linear_world(rng, m=6)
    outputs[:, 2] = 1.5  # constant outputs
    a[:, 4] = 0.0  # constant predictions
    res = lds(a, masks, outputs, n_bootstrap=50)
    assert res.n_excluded == 2 and res.n_valid == 4
    assert np.isnan(res.per_target[[2, 4]]).all()
    assert res.value == pytest.approx(np.nanmean(res.per_target))
    assert "constant" in caplog.text
    none = lds(np.zeros_like(a), masks, outputs, n_bootstrap=10)
    assert np.isnan(none.value) and none.n_excluded == 6


def test_lds_rejects_bad_input(rng):
    a, masks, outputs = _linear_world(rng, n=20, m=3, n_subsets=10)
    with pytest.raises(TarotInputError, match="bool"):
        lds(a, masks.astype(int), outputs)
    with pytest.raises(TarotInputError, match="training rows"):
        lds(a[:-1], masks, outputs)
    with pytest.raises(TarotInputError, match="outputs must have shape"):
        lds(a, masks, outputs[:, :2])
    with pytest.raises(TarotInputError, match="at least 3 subsets"):
        lds(a, masks[:2], outputs[:2])
    bad = outputs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(TarotInputError, match="NaN"):
        lds(a, masks, bad)


# --------------------------------------------------------------------------- paired differences


def test_lds_difference_of_a_method_with_itself_is_exactly_zero(rng):
    a, masks, outputs = _linear_world(rng, noise=2.0)
    res = lds(a + rng.normal(size=a.shape), masks, outputs, n_bootstrap=300)
    diff = lds_difference(res, res, n_bootstrap=300, seed=5)
    assert isinstance(diff, LDSDifference)
    assert (diff.value, diff.std, diff.ci_low, diff.ci_high) == (0.0, 0.0, 0.0, 0.0)
    assert diff.n_targets == 50 and diff.n_excluded == 0 and not diff.excludes_zero
    # per-target arrays work the same way
    assert lds_difference(res.per_target, res.per_target.copy(), n_bootstrap=50).ci_high == 0.0


def test_lds_difference_separates_a_perfect_from_a_random_attribution(rng):
    a, masks, outputs = _linear_world(rng, noise=0.5)
    perfect = lds(a, masks, outputs, n_bootstrap=0)
    random = lds(rng.normal(size=a.shape), masks, outputs, n_bootstrap=0)
    diff = lds_difference(perfect, random, n_bootstrap=500, seed=2)
    assert diff.value == pytest.approx(perfect.value - random.value, abs=1e-12)
    assert 0.0 < diff.ci_low < diff.value < diff.ci_high and diff.excludes_zero
    flipped = lds_difference(random, perfect, n_bootstrap=500, seed=2)
    assert flipped.value == -diff.value and flipped.ci_high < 0.0
    assert set(diff.to_dict()) >= {"diff", "std", "ci_low", "ci_high", "ci", "n_targets", "n_bootstrap"}


def test_lds_difference_resamples_the_same_targets_for_both_methods(rng):
    """With equal valid targets and seeds, every paired resample is the difference of the two
    methods' own resamples, so the paired std is that of the per-target differences (and
    smaller than the separate spreads when the methods agree on which targets are hard)."""
    a, masks, outputs = _linear_world(rng, noise=2.0)
    first = lds(a + 0.5 * rng.normal(size=a.shape), masks, outputs, n_bootstrap=400, seed=9)
    second = lds(a + 2.0 * rng.normal(size=a.shape), masks, outputs, n_bootstrap=400, seed=9)
    diff = lds_difference(first, second, n_bootstrap=400, seed=9)
    delta = first.per_target - second.per_target
    assert diff.value == pytest.approx(first.value - second.value, abs=1e-12)
    assert diff.std == pytest.approx(delta.std(ddof=1) / np.sqrt(len(delta)), rel=0.2)
    # by hand: the same draws as lds's bootstrap (seed 9, one block of 400 resamples)
    idx = np.random.default_rng(9).integers(0, 50, size=(400, 50))
    boot = delta[idx].mean(axis=1)
    assert diff.std == pytest.approx(boot.std(ddof=1), rel=1e-12)
    np.testing.assert_allclose([diff.ci_low, diff.ci_high], np.quantile(boot, [0.025, 0.975]), rtol=1e-12)
    first_boot = first.per_target[idx].mean(axis=1)
    assert first.std == pytest.approx(first_boot.std(ddof=1), rel=1e-12)


def test_lds_difference_uses_targets_valid_for_both(rng):
    pa = np.array([0.5, np.nan, 0.2, 0.4])
    pb = np.array([0.1, 0.3, np.nan, 0.0])
    diff = lds_difference(pa, pb, n_bootstrap=0)
    assert diff.value == pytest.approx(0.4) and diff.n_targets == 2 and diff.n_excluded == 2
    assert np.isnan(diff.std) and np.isnan(diff.ci_low)
    none = lds_difference(np.array([np.nan, 1.0]), np.array([1.0, np.nan]), n_bootstrap=10)
    assert np.isnan(none.value) and none.n_targets == 0
    with pytest.raises(TarotInputError, match="same length"):
        lds_difference(pa, pb[:3])
    with pytest.raises(TarotInputError, match="ci"):
        lds_difference(pa, pb, ci=1.0)


def test_default_pairs():
    assert default_pairs(["wfd", "trak", "grad_dot", "trak_no_q", "wfd_times_q"]) == [
        ("wfd", "trak"),
        ("wfd", "grad_dot"),
        ("wfd", "trak_no_q"),
        ("wfd", "wfd_times_q"),
        ("trak", "trak_no_q"),
        ("wfd_times_q", "trak"),
    ]
    assert default_pairs(["trak", "grad_dot"]) == []
    assert default_pairs(["wfd"]) == []


# --------------------------------------------------------------------------- margin


def test_margin_is_log_odds_of_the_correct_class_and_vmappable():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    p = logits.softmax(1)[torch.arange(6), labels]
    torch.testing.assert_close(margin(logits, labels), torch.log(p / (1 - p)))
    by_hand = torch.stack(
        [logits[i, labels[i]] - torch.logsumexp(logits[i, torch.arange(4) != labels[i]], 0) for i in range(6)]
    )
    torch.testing.assert_close(margin(logits, labels), by_hand)
    # gradient under vmap equals the autograd gradient row by row
    grads = vmap(grad(lambda row, y: margin(row.unsqueeze(0), y.unsqueeze(0)).sum()))(logits, labels)
    for i in range(6):
        row = logits[i].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(row.unsqueeze(0), labels[i : i + 1]).sum(), row)
        torch.testing.assert_close(grads[i], g)
    with pytest.raises(TarotInputError):
        margin(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(TarotInputError):
        margin(torch.randn(3, 4), torch.tensor([0, 1]))


# --------------------------------------------------------------------------- TRAK


def test_trak_with_ridge_zero_is_exact_leave_one_out_for_least_squares(rng):
    r"""TRAK on a linear model reproduces exact leave-one-out refits.

    Model :math:`f(x;\theta) = x^\top\theta`, squared loss, so the gradient feature of
    the output is :math:`\nabla_\theta f = x` and :math:`X` is the design matrix. Let
    :math:`A = X^\top X`, :math:`\hat\theta` the least-squares fit on all rows and
    :math:`\theta_{-i}` the fit without row :math:`i`. The normal equations give
    :math:`A\hat\theta = X_{-i}^\top y_{-i} + x_i y_i` and
    :math:`(A - x_i x_i^\top)\theta_{-i} = X_{-i}^\top y_{-i}`; subtracting,

    .. math:: A(\hat\theta - \theta_{-i}) = x_i\,(y_i - x_i^\top\theta_{-i}),

    so for every target :math:`t`,
    :math:`x_t^\top(\hat\theta - \theta_{-i}) = x_t^\top A^{-1} x_i \cdot q_i` with the
    leave-one-out residual :math:`q_i = y_i - x_i^\top\theta_{-i}`, exactly. The left side
    is computed by refitting with ``np.linalg.lstsq``; the right side is
    ``trak_scores(X, X_t, train_weights=q, ridge=0)``.
    """
    n, d, m = 40, 5, 7
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    y = x @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    x_t = rng.normal(size=(m, d))
    theta = np.linalg.lstsq(x, y, rcond=None)[0]
    effect = np.empty((n, m))
    q = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        theta_i = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
        effect[i] = x_t @ (theta - theta_i)
        q[i] = y[i] - x[i] @ theta_i
    scores = trak_scores(x, x_t, train_weights=q, ridge=0.0)
    np.testing.assert_allclose(scores, effect, rtol=1e-8, atol=1e-10 * np.abs(effect).max())
    # without weights: the plain feature term x_i^T A^{-1} x_t
    np.testing.assert_allclose(trak_scores(x, x_t, ridge=0.0) * q[:, None], effect, rtol=1e-8, atol=1e-10)


def test_trak_ridge_and_weights(rng):
    x = rng.normal(size=(30, 4))
    z = rng.normal(size=(5, 4))
    q = rng.uniform(0.1, 1.0, size=30)
    lam = 0.1 * np.trace(x.T @ x) / 4
    want = q[:, None] * (x @ np.linalg.inv(x.T @ x + lam * np.eye(4)) @ z.T)
    np.testing.assert_allclose(trak_scores(x, z, q, ridge=0.1), want, rtol=1e-10)
    np.testing.assert_allclose(attribution_scores("trak", x, z, q, ridge=0.1), want, rtol=1e-10)
    with pytest.raises(TarotInputError, match="singular"):
        trak_scores(x[:3], z, ridge=0.0)  # 3 rows, 4 dims
    with pytest.raises(TarotInputError, match="train_weights"):
        trak_scores(x, z, q[:-1])
    with pytest.raises(TarotInputError, match="ridge"):
        trak_scores(x, z, ridge=-1.0)


def test_grad_dot_and_ensemble_average(rng):
    feats = [(rng.normal(size=(20, 6)), rng.normal(size=(4, 6)), rng.uniform(size=20)) for _ in range(3)]
    np.testing.assert_allclose(grad_dot_scores(feats[0][0], feats[0][1]), feats[0][0] @ feats[0][1].T)
    for method in ("trak", "grad_dot", "wfd"):
        want = np.mean([attribution_scores(method, *f) for f in feats], axis=0)
        np.testing.assert_allclose(ensemble_scores(method, feats), want, rtol=1e-12)
    # the weights reach TRAK (and only TRAK)
    unweighted = [(a, b, None) for a, b, _ in feats]
    assert not np.allclose(ensemble_scores("trak", feats), ensemble_scores("trak", unweighted))
    np.testing.assert_allclose(ensemble_scores("grad_dot", feats), ensemble_scores("grad_dot", unweighted))
    with pytest.raises(TarotInputError, match="non-empty"):
        ensemble_scores("trak", [])
    with pytest.raises(TarotInputError, match="shape"):
        ensemble_scores("grad_dot", [feats[0], (feats[1][0][:10], feats[1][1], None)])
    with pytest.raises(TarotInputError, match="unknown attribution method"):
        attribution_scores("nope", feats[0][0], feats[0][1])


# --------------------------------------------------------------------------- WFD family


def _correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)


def test_wfd_is_invariant_to_invertible_linear_maps(rng):
    d = 6
    x, z = _correlated(rng, 600, d), _correlated(rng, 25, d)
    a = rng.normal(size=(d, d)) + 2.0 * np.eye(d)
    assert abs(np.linalg.det(a)) > 1e-2
    for method in ("wfd", "wfd_no_norm"):
        # eps=0: no ridge (a ridge relative to tr(Sigma) / d is not transformed along with Sigma)
        base = attribution_scores(method, x, z, eps=0.0)
        moved = attribution_scores(method, x @ a, z @ a, eps=0.0)
        np.testing.assert_allclose(moved, base, rtol=1e-7, atol=1e-9)
    plain = attribution_scores("wfd_no_whiten_no_norm", x, z)
    plain_moved = attribution_scores("wfd_no_whiten_no_norm", x @ a, z @ a)
    assert np.abs(plain_moved - plain).max() > 0.1 * np.abs(plain).max()
    np.testing.assert_allclose(plain, -np.linalg.norm(x[:, None] - z[None], axis=-1), rtol=1e-10)


def test_wfd_zca_and_cholesky_give_the_same_distances(rng):
    x, z = _correlated(rng, 300, 5), _correlated(rng, 10, 5)
    np.testing.assert_allclose(wfd_scores(x, z, whitening="zca"), wfd_scores(x, z, whitening="cholesky"), atol=1e-9)
    # fitting on train ∪ targets is a different map
    assert not np.allclose(wfd_scores(x, z), wfd_scores(x, z, fit_on="joint"))
    with pytest.raises(TarotInputError, match="whitening"):
        wfd_scores(x, z, whitening="pca")


def test_wfd_no_whiten_ignores_row_scale(rng):
    x, z = _correlated(rng, 50, 4), _correlated(rng, 8, 4)
    sx, sz = rng.uniform(0.1, 10.0, size=(50, 1)), rng.uniform(0.1, 10.0, size=(8, 1))
    np.testing.assert_allclose(
        attribution_scores("wfd_no_whiten", sx * x, sz * z), attribution_scores("wfd_no_whiten", x, z), atol=1e-12
    )
    unit = x / np.linalg.norm(x, axis=1, keepdims=True), z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(
        attribution_scores("wfd_no_whiten", x, z), -np.linalg.norm(unit[0][:, None] - unit[1][None], axis=-1)
    )
    assert not np.allclose(attribution_scores("wfd_no_norm", sx * x, sz * z), attribution_scores("wfd_no_norm", x, z))
    for method in ATTRIBUTION_METHODS:
        assert attribution_scores(method, x, z).shape == (50, 8)


# --------------------------------------------------------------------------- diagnostics


def test_diagnostic_methods_are_registered():
    assert set(DIAGNOSTIC_METHODS) == {"trak_no_q", "wfd_times_q"}
    assert set(DIAGNOSTIC_METHODS) <= set(ATTRIBUTION_METHODS)
    assert ATTRIBUTION_METHODS[-len(DIAGNOSTIC_METHODS) :] == DIAGNOSTIC_METHODS  # listed after the paper's


def test_trak_no_q_is_trak_without_the_weights_by_hand(rng):
    x = rng.normal(size=(12, 3))
    z = rng.normal(size=(4, 3))
    q = rng.uniform(0.05, 0.95, size=12)
    lam = 1e-4 * np.trace(x.T @ x) / 3
    plain = x @ np.linalg.inv(x.T @ x + lam * np.eye(3)) @ z.T
    np.testing.assert_allclose(attribution_scores("trak_no_q", x, z, q), plain, rtol=1e-10)
    np.testing.assert_allclose(attribution_scores("trak_no_q", x, z, None), plain, rtol=1e-10)
    np.testing.assert_allclose(attribution_scores("trak", x, z, q), q[:, None] * plain, rtol=1e-10)


def test_wfd_times_q_is_the_whitened_cosine_times_q_by_hand(rng):
    x = _correlated(rng, 40, 3)
    z = _correlated(rng, 5, 3)
    q = rng.uniform(0.05, 0.95, size=40)
    # ZCA whitening fitted on the training rows (population covariance, relative ridge eps)
    mu = x.mean(axis=0)
    cov = (x - mu).T @ (x - mu) / len(x)
    cov += 1e-5 * np.trace(cov) / 3 * np.eye(3)
    evals, evecs = np.linalg.eigh(cov)
    w = evecs @ np.diag(evals**-0.5) @ evecs.T
    xw, zw = (x - mu) @ w, (z - mu) @ w
    xw /= np.linalg.norm(xw, axis=1, keepdims=True)
    zw /= np.linalg.norm(zw, axis=1, keepdims=True)
    cosine = xw @ zw.T
    want = q[:, None] * cosine
    np.testing.assert_allclose(attribution_scores("wfd_times_q", x, z, q), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(whitened_cosine_scores(x, z, q), want, rtol=1e-9, atol=1e-12)
    # the cosine is 1 - d^2 / 2 of the WFD distance d, so without q it ranks as wfd does
    dist = -wfd_scores(x, z)
    np.testing.assert_allclose(whitened_cosine_scores(x, z), 1.0 - 0.5 * dist**2, atol=1e-9)
    np.testing.assert_allclose(whitened_cosine_scores(x, z), cosine, rtol=1e-9, atol=1e-12)
    # the ensemble averages q-weighted cosines member by member, and q reaches only trak and wfd_times_q
    feats = [(x, z, q), (x[:, ::-1], z[:, ::-1], 1.0 - q)]
    np.testing.assert_allclose(
        ensemble_scores("wfd_times_q", feats), 0.5 * (q[:, None] * cosine + (1.0 - q)[:, None] * cosine), atol=1e-9
    )
    with pytest.raises(TarotInputError, match="train_weights"):
        whitened_cosine_scores(x, z, q[:-1])


def test_q_reaches_exactly_trak_and_wfd_times_q(rng):
    x, z = _correlated(rng, 30, 4), _correlated(rng, 6, 4)
    q = rng.uniform(0.1, 0.9, size=30)
    uses_q = {
        m for m in ATTRIBUTION_METHODS if not np.allclose(attribution_scores(m, x, z, q), attribution_scores(m, x, z))
    }
    assert uses_q == {"trak", "wfd_times_q"}


@pytest.mark.parametrize("weighted", [True, False])
def test_attribution_scores_many_equals_one_method_at_a_time(rng, weighted):
    x, z = _correlated(rng, 80, 5), _correlated(rng, 7, 5)
    q = rng.uniform(0.1, 0.9, size=80) if weighted else None
    many = attribution_scores_many(ATTRIBUTION_METHODS, x, z, q, whitening="cholesky", eps=1e-3, ridge=1e-2)
    assert list(many) == list(ATTRIBUTION_METHODS)
    for method, scores in many.items():
        want = attribution_scores(method, x, z, q, whitening="cholesky", eps=1e-3, ridge=1e-2)
        np.testing.assert_allclose(scores, want, rtol=1e-12, atol=1e-12, err_msg=method)
    # distinct arrays, even where the values coincide (q = None: trak == trak_no_q)
    assert len({id(a) for a in many.values()}) == len(many)
    assert not np.shares_memory(many["trak"], many["trak_no_q"])
    assert list(attribution_scores_many(["trak", "wfd", "trak"], x, z, q)) == ["trak", "wfd"]
    with pytest.raises(TarotInputError, match="unknown attribution method"):
        attribution_scores_many(["wfd", "nope"], x, z)
