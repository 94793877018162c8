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
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import TarotInputError
from .io import load_npz, release_rows, save_npz

__all__ = ["Neighbors", "TopK", "nearest_neighbors"]

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
    n_candidates : int, optional
        Size of the pool searched (-1 if unknown); :meth:`check` compares it.
    """

    indices: np.ndarray
    distances: np.ndarray
    n_candidates: int = -1

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def check(self, n_candidates: int, n_targets: int) -> Neighbors:
        """Raise :class:`TarotInputError` unless these lists fit a pool of ``n_candidates`` and ``n_targets`` targets."""
        if self.indices.ndim != 2 or self.indices.shape != self.distances.shape:
            raise TarotInputError(f"neighbour lists have shapes {self.indices.shape} and {self.distances.shape}")
        if self.indices.shape[0] != n_targets:
            raise TarotInputError(f"neighbour lists cover {self.indices.shape[0]} targets, expected {n_targets}")
        if self.n_candidates not in (-1, n_candidates):
            raise TarotInputError(
                f"neighbour lists were searched in {self.n_candidates} candidates, not {n_candidates}"
            )
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n_candidates):
            raise TarotInputError(f"neighbour indices fall outside the pool of {n_candidates} candidates")
        return self

    def save(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
        """Write ``indices``, ``distances`` and ``n_candidates`` to an ``.npz`` with a checked sidecar, atomically.

        ``meta`` is recorded in the sidecar (e.g. the feature file searched).
        """
        save_npz(
            path,
            {"indices": self.indices, "distances": self.distances, "n_candidates": np.int64(self.n_candidates)},
            {
                "k": self.k,
                "n_candidates": int(self.n_candidates),
                "n_targets": int(self.indices.shape[0]),
                **(meta or {}),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Neighbors:
        """Read what :meth:`save` wrote (checked against its sidecar; a file without one is read as is).

        Raises
        ------
        TarotInputError
            If the file is missing, truncated, changed since it was written, or its arrays do not fit.
        """
        try:
            z = load_npz(path, keys=("indices", "distances", "n_candidates"))
        except TarotInputError as exc:
            raise TarotInputError(f"cannot read neighbour lists: {exc}") from None
        idx, dist, n = z["indices"], z["distances"], z["n_candidates"]
        if idx.dtype.kind not in "iu" or dist.dtype.kind != "f" or n.shape != () or n.dtype.kind not in "iu":
            raise TarotInputError(
                f"{path}: not neighbour lists (indices {idx.dtype}, distances {dist.dtype}, n_candidates {n.shape}); "
                "delete it and rerun the step that made it (snakemake reruns it)"
            )
        return cls(idx.astype(np.int64), dist, int(n))


def _block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of every row of ``scores`` (m, b), ties at the cut going to the lower column.

    ``torch.topk`` breaks ties at the cut arbitrarily, so with tied distances a search for
    ``k`` neighbours and one for ``4k`` could disagree on the first ``k`` (and a later rank
    could repeat a candidate). Here every score above the row's k-th largest is kept, and
    of those equal to it the lowest columns fill the rest: exactly ``k`` per row.
    """
    s, _ = torch.topk(scores, k, dim=1, sorted=False)
    kth = s.min(dim=1, keepdim=True).values
    above = scores > kth
    equal = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    keep = above | (equal & (torch.cumsum(equal, dim=1) <= room))
    cols = torch.nonzero(keep)[:, 1].view(scores.shape[0], k)  # row-major: k per row, in column order
    return torch.gather(scores, 1, cols), cols


class TopK:
    r"""Running ``k`` best candidates of every target, fed one candidate block at a time.

    Parameters
    ----------
    targets : np.ndarray, shape (m, d)
    k : int
        Neighbours to keep per target.

    Each :meth:`add` scores a block :math:`X_b` against all targets with one matmul,
    :math:`S = 2YX_b^\top - \mathbf{1}\lVert x\rVert^{2\top}` (shape (m, b)), keeps its
    per-target top-k and merges it into the running lists; ties go to the lower index.
    """

    def __init__(self, targets: np.ndarray, k: int) -> None:
        self.y = torch.from_numpy(np.array(targets, dtype=np.float32))  # (m, d), a writable copy
        m = self.y.shape[0]
        self.k = int(k)
        self.best_s = torch.full((m, self.k), -torch.inf)
        self.best_i = torch.zeros((m, self.k), dtype=torch.int64)
        self.seen = 0

    def add(self, block: np.ndarray | torch.Tensor, start: int) -> None:
        """Merge candidates ``start .. start + len(block)`` (rows of ``block``, shape (b, d))."""
        x = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block, dtype=np.float32))
        scores = torch.addmm(-(x * x).sum(1)[None, :], self.y, x.T, alpha=2.0)  # (m, b), rows contiguous
        s, i = _block_topk(scores, min(self.k, x.shape[0]))
        all_s = torch.cat([self.best_s, s], 1)
        all_i = torch.cat([self.best_i, i + start], 1)
        # deterministic tie-break: sort by (score desc, index asc)
        order = torch.argsort(all_i, dim=1, stable=True)
        all_s = torch.gather(all_s, 1, order)
        all_i = torch.gather(all_i, 1, order)
        top = torch.argsort(-all_s, dim=1, stable=True)[:, : self.k]
        self.best_s = torch.gather(all_s, 1, top)
        self.best_i = torch.gather(all_i, 1, top)
        self.seen += x.shape[0]

    def result(self) -> Neighbors:
        r"""The lists so far, with distances :math:`\sqrt{\lVert y\rVert^2 - S}`."""
        if self.seen < self.k:
            raise TarotInputError(f"k must be in [1, {self.seen}] (the pool size), got {self.k}")
        ysq = (self.y * self.y).sum(1)[:, None]
        dist = torch.sqrt(torch.clamp(ysq - self.best_s, min=0.0))
        return Neighbors(indices=self.best_i.numpy(), distances=dist.numpy(), n_candidates=self.seen)


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
        Possibly a memory map; read in row blocks (and its pages released again).
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
    n = candidates.shape[0]
    if not 1 <= k <= n:
        raise TarotInputError(f"k must be in [1, {n}] (the pool size), got {k}")
    top = TopK(targets, k)
    for start in tqdm(range(0, n, block_rows), desc="nearest neighbours", disable=not progress, unit="block"):
        x = torch.from_numpy(np.array(candidates[start : start + block_rows], dtype=np.float32))
        release_rows(candidates, start, start + x.shape[0])
        top.add(x, start)
    return top.result()
