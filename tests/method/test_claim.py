"""The paper's central claim as a unit test.

On a multimodal target (three well-separated Gaussian modes in feature space, equal
shares) with a pool that over-represents one mode, TAROT's selection covers every
target mode in proportion, while a mean-score greedy (DsDm's TRAK score averaged over
targets, top-B) collapses onto a single mode, and TAROT ends closer to the target in OT
distance. Note which mode DsDm collapses onto here: its score is linear,
v = (XᵀX)⁻¹ mean(X_T), so the inverse Gram matrix favours the mode that is *rare* in the
pool; a linear score cannot spread a budget across modes either way.
"""

import numpy as np
import pytest
from conftest import gaussian_modes

from tarot_select import select


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tarot_covers_every_mode_and_dsdm_collapses(seed):
    rng = np.random.default_rng(seed)
    cand, cand_mode = gaussian_modes(rng, [1400, 400, 200])
    targ, _ = gaussian_modes(rng, [60, 60, 60])
    budget = 150

    tarot = select("tarot", cand, targ, budget=budget)
    dsdm = select("dsdm", cand, targ, budget=budget)
    rand = select("random", cand, targ, budget=budget, seed=seed)

    share_tarot = np.bincount(cand_mode[tarot.indices], minlength=3) / budget
    share_dsdm = np.bincount(cand_mode[dsdm.indices], minlength=3) / budget
    assert (np.abs(share_tarot - 1 / 3) < 0.1).all(), share_tarot
    assert share_dsdm.max() >= 0.9 and share_dsdm.min() < 0.05, share_dsdm
    assert tarot.ot_distance < dsdm.ot_distance
    assert tarot.ot_distance < rand.ot_distance
