r"""Exact nearest candidates of every target, streamed over candidate blocks.

For every target :math:`y_j` the ``k`` candidates with the smallest Euclidean (WFD)
distance :math:`\lVert x_i - y_j\rVert` are found by maximising the score
:math:`2x_i^\top y_j - \lVert x_i\rVert^2` (equal to :math:`2x_i^\top y_j - 1` for unit
vectors). Candidates are read ``block_rows`` rows at a time (memory maps stay on disk),
each block's scores against all targets come from one matmul, and a running top-k per
target is merged block by block, so the dense candidates × targets matrix never exists.
Memory is :math:`O(\text{block\_rows}\cdot m + m k)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import TarotInputError

__all__ = ["Neighbors", "nearest_neighbors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neighbors:
    """``k`` nearest candidates of each target.

    Attributes
    ----------
    indices : np.ndarray, shape (m, k), int64
        ``indices[j, r]`` is the candidate at rank ``r`` (0 = nearest) for target ``j``.
    distances : np.ndarray, shape (m, k), float32
        The matching WFD distances, non-decreasing along each row.
    """

    indices: np.ndarray
    distances: np.ndarray

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def nearest_neighbors(
    candidates: np.ndarray,
    targets: np.ndarray,
    k: int,
    block_rows: int = 8192,
    progress: bool = False,
) -> Neighbors:
    """Exact ``k`` nearest candidates (Euclidean) of every target.

    Parameters
    ----------
    candidates : np.ndarray, shape (n, d)
        Possibly a memory map; read in row blocks.
    targets : np.ndarray, shape (m, d)
    k : int
        Neighbours per target, ``1 <= k <= n``.
    block_rows : int
        Candidate rows per matmul block.

    Returns
    -------
    Neighbors
        Ties are broken towards the lower candidate index, so results are deterministic.
    """
    n, m = candidates.shape[0], targets.shape[0]
    if not 1 <= k <= n:
        raise TarotInputError(f"k must be in [1, {n}] (the pool size), got {k}")
    y = torch.from_numpy(np.array(targets, dtype=np.float32))  # (m, d), a writable copy
    best_s = torch.full((k, m), -torch.inf)
    best_i = torch.zeros((k, m), dtype=torch.int64)
    blocks = range(0, n, block_rows)
    for start in tqdm(blocks, desc="nearest neighbours", disable=not progress, unit="block"):
        x = torch.from_numpy(np.array(candidates[start : start + block_rows], dtype=np.float32))
        scores = 2.0 * (x @ y.T) - (x * x).sum(1, keepdim=True)  # (b, m)
        kk = min(k, x.shape[0])
        s, i = torch.topk(scores, kk, dim=0, sorted=False)  # (kk, m)
        all_s = torch.cat([best_s, s], 0)
        all_i = torch.cat([best_i, i + start], 0)
        # deterministic tie-break: sort by (score desc, index asc)
        order = torch.argsort(all_i, dim=0, stable=True)
        all_s = torch.gather(all_s, 0, order)
        all_i = torch.gather(all_i, 0, order)
        top = torch.argsort(-all_s, dim=0, stable=True)[:k]
        best_s = torch.gather(all_s, 0, top)
        best_i = torch.gather(all_i, 0, top)
    ysq = (y * y).sum(1)[None, :]
    dist = torch.sqrt(torch.clamp(ysq - best_s, min=0.0))
    return Neighbors(indices=best_i.T.contiguous().numpy(), distances=dist.T.contiguous().numpy())
