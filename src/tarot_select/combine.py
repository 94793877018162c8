"""Merging the per-checkpoint blocks of stored gradient features (no torch needed).

Re-exported by :mod:`tarot_select.featurize`, which writes the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np

from .errors import TarotInputError

__all__ = ["COMBINE_MODES", "combine_checkpoints"]

#: How :func:`combine_checkpoints` merges the checkpoint blocks.
COMBINE_MODES: Final[tuple[str, ...]] = ("sum", "lr_sum", "concat")


def combine_checkpoints(
    features: np.ndarray,
    checkpoint_dims: Sequence[int] | None,
    checkpoint_weights: Sequence[float] | None,
    mode: str = "sum",
) -> np.ndarray:
    r"""Merge the per-checkpoint blocks of stored features into the feature TAROT whitens.

    Stored rows are :math:`[\sqrt{w_1} P g_1, \dots, \sqrt{w_T} P g_T]` (blocks of
    ``checkpoint_dims``, weights ``checkpoint_weights``). With one projection :math:`P`
    for every checkpoint:

    * ``"sum"``: :math:`\sum_t P g_t = P \sum_t g_t` -- the paper's Eq. 4 then Eq. 6
      (its released code accumulates the same sum, then keeps only the last checkpoint);
    * ``"lr_sum"``: :math:`\sum_t w_t P g_t` (the learning-rate weighting of Eq. 2);
    * ``"concat"``: the stored rows unchanged.

    Parameters
    ----------
    features : np.ndarray, shape (n, sum(checkpoint_dims))
        Rows as written by :meth:`~tarot_select.featurize.GradientFeaturizer.featurize_to_file` (a memory map is
        read once).
    checkpoint_dims, checkpoint_weights : sequence or None
        From the sidecar; None: one checkpoint of weight 1.
    mode : {"sum", "lr_sum", "concat"}

    Returns
    -------
    np.ndarray, shape (n, d) for the sums (d = the common block width), float32 (or the
    input dtype for ``"concat"``).
    """
    if mode not in COMBINE_MODES:
        raise TarotInputError(f"unknown checkpoint combination {mode!r}; one of {', '.join(COMBINE_MODES)}")
    if mode == "concat":
        return features
    dims = [int(features.shape[1])] if checkpoint_dims is None else [int(d) for d in checkpoint_dims]
    if len(set(dims)) != 1:
        raise TarotInputError(f"checkpoint blocks of different widths {dims} cannot be summed; use combine: concat")
    if sum(dims) != features.shape[1]:
        raise TarotInputError(f"checkpoint blocks {dims} do not cover the {features.shape[1]} feature columns")
    weights = [1.0] * len(dims) if checkpoint_weights is None else [float(w) for w in checkpoint_weights]
    if len(weights) != len(dims) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise TarotInputError(f"need {len(dims)} positive checkpoint weights, got {checkpoint_weights!r}")
    d = dims[0]
    if len(dims) == 1 and weights[0] == 1.0:  # one checkpoint: the rows themselves
        return np.asarray(features, dtype=np.float32)
    out = np.zeros((features.shape[0], d), dtype=np.float64)
    for t, w in enumerate(weights):
        scale = 1.0 / math.sqrt(w) if mode == "sum" else math.sqrt(w)
        out += scale * np.asarray(features[:, t * d : (t + 1) * d], dtype=np.float64)
    return out.astype(np.float32)
