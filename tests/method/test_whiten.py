import numpy as np
import pytest

from tarot_select import TarotInputError, Whitener, WhiteningStats, whiten


def correlated(rng, n=4000, d=12):
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + rng.normal(size=d) * 3


@pytest.mark.parametrize("method", ["cholesky", "zca"])
def test_whitened_covariance_is_identity(rng, method):
    x = correlated(rng)
    w = Whitener(method, normalize=False, eps=1e-12, compute_dtype=np.float64).fit(x)
    z = w.transform(x)
    assert np.allclose(z.mean(0), 0, atol=1e-10)
    cov = z.T @ z / len(z)
    assert np.allclose(cov, np.eye(x.shape[1]), atol=1e-8)


def test_cholesky_and_zca_share_the_gram_matrix(rng):
    x = correlated(rng, n=500)
    zc = Whitener("cholesky", normalize=False, eps=1e-12, compute_dtype=np.float64).fit(x).transform(x)
    zz = Whitener("zca", normalize=False, eps=1e-12, compute_dtype=np.float64).fit(x).transform(x)
    assert np.allclose(zc @ zc.T, zz @ zz.T, atol=1e-8)
    assert not np.allclose(zc, zz, atol=1e-3)  # different coordinates, same geometry
    # and after normalisation the WFD geometry agrees too
    nc, nz = (
        whiten(x[:300], x[300:], "cholesky", compute_dtype=np.float64),
        whiten(x[:300], x[300:], "zca", compute_dtype=np.float64),
    )
    assert np.allclose(nc[0] @ nc[1].T, nz[0] @ nz[1].T, atol=1e-6)


def test_zca_is_symmetric_and_normalised_rows_are_unit(rng):
    x = correlated(rng, n=800)
    w = Whitener("zca").fit(x)
    assert np.allclose(w.matrix_, w.matrix_.T)
    z = w.transform(x)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_block_is_whitened_as_the_formula_says(rng, dtype):
    # transform_block (the streamed path of whiten_files) = (x - mu) W, row-normalised
    x = correlated(rng, n=700, d=24)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for method in ("cholesky", "zca"):
        w = Whitener(method, compute_dtype=dtype).fit(x)
        ref = (x[:300] - w.mean_) @ w.matrix_
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        assert np.abs(w.transform_block(np.array(x[:300], dtype=dtype)) - ref).max() < tol
        assert np.abs(w.transform(x[:300]) - ref).max() < tol  # transform goes through the same path
    with pytest.raises(TarotInputError, match="not C-contiguous"):
        w.transform_block(np.asfortranarray(np.array(x[:300], dtype=dtype)))
    # transform copies any layout into C-ordered blocks (a Fortran-ordered .npy, say)
    assert np.abs(w.transform(np.asfortranarray(x[:300])) - w.transform(x[:300])).max() == 0
    refit = Whitener("cholesky", compute_dtype=dtype).fit(x * 3.0)
    refit.transform(x[:5] * 3.0)  # casts W and mu for this fit
    refit.fit(x)  # a refit must not reuse them
    chol = Whitener("cholesky", compute_dtype=dtype).fit(x)
    ref = (x[:5] - chol.mean_) @ chol.matrix_
    assert np.abs(refit.transform(x[:5]) - ref / np.linalg.norm(ref, axis=1, keepdims=True)).max() < tol


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 250])  # in the block that sets the shift, and in a later one
def test_statistics_refuse_non_finite_rows_and_accept_large_finite_ones(rng, bad, row):
    x = correlated(rng, n=400, d=6).astype(np.float32)
    x[row, 3] = bad
    with pytest.raises(TarotInputError, match=r"rows 2?0*\.\.\d+ hold NaN or infinite"):
        WhiteningStats(6).update(x, block_rows=200)
    big = correlated(rng, n=400, d=6).astype(np.float32)
    big[row, 3] = np.finfo(np.float32).max  # finite: the float64 sums must not overflow
    assert np.isfinite(WhiteningStats(6).update(big, block_rows=200).outer).all()


def test_joint_fit_uses_candidates_and_targets(rng):
    cand, targ = correlated(rng, n=300), correlated(rng, n=100) + 5
    zc, zt = whiten(cand, targ, normalize=False, eps=1e-12, compute_dtype=np.float64)
    joint = np.concatenate([zc, zt])
    assert np.allclose(joint.T @ joint / len(joint), np.eye(cand.shape[1]), atol=1e-8)


def test_streamed_statistics_equal_one_shot(rng):
    x = correlated(rng, n=1000)
    one = WhiteningStats(x.shape[1]).update(x)
    a = WhiteningStats(x.shape[1]).update(x[:333], block_rows=50)
    b = WhiteningStats(x.shape[1]).update(x[333:], block_rows=7)
    a.merge(b)
    assert a.n == one.n
    assert np.allclose(a.covariance, np.cov(x.T, bias=True))
    wa = Whitener("cholesky", compute_dtype=np.float64).fit_stats(a).transform(x)
    wb = Whitener("cholesky", compute_dtype=np.float64).fit(x, block_rows=64).transform(x)
    assert np.allclose(wa, wb, atol=1e-10)


def test_stats_roundtrip(tmp_path, rng):
    x = correlated(rng, n=100)
    s = WhiteningStats(x.shape[1]).update(x)
    s.save(tmp_path / "s.npz")
    t = WhiteningStats.load(tmp_path / "s.npz")
    assert t.n == s.n and np.array_equal(t.outer, s.outer)


def test_ridge_is_relative_to_scale(rng):
    x = correlated(rng, n=500)
    w1 = Whitener(eps=1e-3).fit(x)
    w2 = Whitener(eps=1e-3).fit(100 * x)
    assert w2.ridge_ == pytest.approx(1e4 * w1.ridge_)
    # scale-free: whitened unit features do not depend on the units of x
    assert np.allclose(w1.transform(x), w2.transform(100 * x), atol=1e-4)


def test_rank_deficient_features_stay_finite(rng):
    x = rng.normal(size=(20, 50))  # fewer rows than dims
    z = Whitener("cholesky", eps=1e-5).fit(x).transform(x)
    assert np.isfinite(z).all()


def test_none_and_no_norm_variants(rng):
    x = correlated(rng, n=50)
    assert np.allclose(Whitener("none", normalize=False).fit(x).transform(x), x, atol=1e-4)
    z = Whitener("none", normalize=True).fit(x).transform(x)
    assert np.allclose(z, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-5)


def test_bad_input():
    with pytest.raises(TarotInputError, match="unknown whitening"):
        Whitener("pca")
    with pytest.raises(TarotInputError, match="not fitted"):
        Whitener().transform(np.ones((2, 2)))
    with pytest.raises(TarotInputError, match="zero variance"):
        Whitener().fit(np.ones((5, 3)))
    w = Whitener().fit(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(TarotInputError, match="3 dims"):
        w.transform(np.ones((2, 4)))


def test_file_whitening_equals_the_float64_fit_on_an_ill_conditioned_offset_spectrum(tmp_path, rng):
    # float32 features with variances over six decades around a large common offset: the
    # shifted float64 sums must give the float64 reference's whitened rows and neighbours
    from tarot_select.io import save_features
    from tarot_select.knn import Neighbors, nearest_neighbors
    from tarot_select.whiten import whiten_files

    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    sd = np.logspace(0, -3, d)
    cand = ((rng.normal(size=(6000, d)) * sd) @ q.T + 50.0).astype(np.float32)
    targ = ((rng.normal(size=(80, d)) * sd) @ q.T + 50.0).astype(np.float32)
    save_features(tmp_path / "c.npy", cand)
    save_features(tmp_path / "t.npy", targ)
    out = whiten_files(
        tmp_path / "c.npy",
        tmp_path / "t.npy",
        tmp_path / "wc.npy",
        tmp_path / "wt.npy",
        out_neighbors=tmp_path / "nb.npz",
        neighbors_k=8,
        block_rows=1000,
    )
    ref = Whitener("cholesky", compute_dtype=np.float64).fit(cand.astype(np.float64), targ.astype(np.float64))
    zc, zt = ref.transform(cand.astype(np.float64)), ref.transform(targ.astype(np.float64))
    got_c, got_t = np.load(tmp_path / "wc.npy"), np.load(tmp_path / "wt.npy")
    # (the float32 transform of rows near 50 resolves them to ~3e-6: 1e-4 after whitening)
    assert np.abs(got_c - zc).max() < 5e-4 and np.abs(got_t - zt).max() < 5e-4
    joint = np.concatenate([got_c, got_t]).astype(np.float64)
    assert out.whitener.ridge_ > 0 and set(out.seconds) == {"fit", "transform", "neighbors"}
    expected = nearest_neighbors(zc, zt, k=8).indices
    assert (Neighbors.load(tmp_path / "nb.npz").indices == expected).mean() > 0.99
    assert np.allclose(np.linalg.norm(joint, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ["none", "cholesky"])
@pytest.mark.parametrize("normalize", [True, False])
def test_file_whitening_equals_the_in_memory_whitener(tmp_path, rng, method, normalize):
    # the streamed candidates must get the same map as the targets and as Whitener.transform,
    # the "none" ablation included (unit rows unless normalize is off)
    from tarot_select.io import save_features
    from tarot_select.whiten import whiten_files

    cand, targ = correlated(rng, n=900, d=6).astype(np.float32), correlated(rng, n=40, d=6).astype(np.float32)
    save_features(tmp_path / "c.npy", cand)
    save_features(tmp_path / "t.npy", targ)
    whiten_files(
        tmp_path / "c.npy",
        tmp_path / "t.npy",
        tmp_path / "wc.npy",
        tmp_path / "wt.npy",
        method=method,
        normalize=normalize,
        block_rows=256,
    )
    ref = Whitener(method, normalize=normalize).fit(cand, targ)
    assert np.abs(np.load(tmp_path / "wc.npy") - ref.transform(cand)).max() < 1e-4
    assert np.abs(np.load(tmp_path / "wt.npy") - ref.transform(targ)).max() < 1e-4
    norms = np.linalg.norm(np.load(tmp_path / "wc.npy"), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_the_selection_path_does_not_import_torch(tmp_path):
    # whitening, neighbour search, OT and both OT selections run on numpy/scipy/POT only:
    # importing torch would cost about 500 MiB of resident memory
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "sys.modules['geomloss'] = None\n"  # POT imports GeomLoss (and torch) when it is installed
        "from tarot_select import api\n"
        "from tarot_select.whiten import whiten_files\n"
        "from tarot_select.io import save_features\n"
        "rng = np.random.default_rng(0)\n"
        f"d = {str(tmp_path)!r}\n"
        "save_features(d + '/c.npy', rng.normal(size=(400, 8)).astype(np.float32))\n"
        "save_features(d + '/t.npy', rng.normal(size=(30, 8)).astype(np.float32))\n"
        "whiten_files(d + '/c.npy', d + '/t.npy', d + '/wc.npy', d + '/wt.npy', out_neighbors=d + '/n.npz')\n"
        "c, t = np.load(d + '/wc.npy'), np.load(d + '/wt.npy')\n"
        "api.select('tarot', c, t, ratio=0.2, wfd_features=(c, t))\n"
        "api.select('otm', c, t, n_folds=3, wfd_features=(c, t))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
