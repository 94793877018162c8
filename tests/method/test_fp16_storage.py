"""float16 feature files (config features.dtype) leave seeded selections unchanged.

Storage rounds every feature to 11 significant bits; whitening and OT then run in float64 /
float32 on the loaded values. On these seeded cases the fixed-size TAROT and the OTM
selections are identical to the float32 ones. It is not a law: in a fourth case tried while
writing this (seed 3, not asserted), the fixed-size selection was identical but OTM's
differed by one point (a near tie at its stopping round).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gaussian_modes

from tarot_select import api
from tarot_select.io import load_features, save_features


def _stored(tmp_path, name, array, dtype):
    path = save_features(tmp_path / f"{name}_{dtype}.npy", array, dtype=dtype)
    feats = load_features(path)
    assert feats.array.dtype == np.dtype(dtype)
    return feats.array


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float16_storage_keeps_selections(tmp_path, seed):
    rng = np.random.default_rng(seed)
    x, _ = gaussian_modes(rng, [400, 300, 200, 100], dim=64, sep=3.0, noise=1.0)
    t, _ = gaussian_modes(rng, [30, 30, 0, 40], dim=64, sep=3.0, noise=1.0)
    picks = {}
    for dtype in ("float32", "float16"):
        xc, tc = _stored(tmp_path, "c", x, dtype), _stored(tmp_path, "t", t, dtype)
        fixed = api.select("tarot", xc, tc, ratio=0.1, seed=0)
        otm = api.select("otm", xc, tc, seed=0, n_folds=4)
        picks[dtype] = (np.sort(fixed.indices), np.sort(otm.indices))
    # the stored values really differ (else the test would prove nothing)
    assert not np.array_equal(x.astype(np.float16).astype(np.float32), x.astype(np.float32))
    np.testing.assert_array_equal(picks["float32"][0], picks["float16"][0])
    np.testing.assert_array_equal(picks["float32"][1], picks["float16"][1])
