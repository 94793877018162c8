r"""Exact nearest candidates of every target, streamed over candidate blocks.

For every target :math:`y_j` the ``k`` candidates with the smallest Euclidean (WFD)
distance :math:`\lVert x_i - y_j\rVert` are found by maximising the score
:math:`2x_i^\top y_j - \lVert x_i\rVert^2` (equal to :math:`2x_i^\top y_j - 1` for unit
vectors). Candidates are read ``block_rows`` rows at a time (memory maps stay on disk),
each block's scores against all targets come from one matmul, and a running top-k per
target is merged block by block, so the dense candidates × targets matrix never exists.
Memory is :math:`O(\text{block\_rows}\cdot m + m k)`. Only an entry above its target's
current :math:`k`-th best score (less a bound on the matmul's rounding) enters the merge, so
after the first blocks the cost is the matmul (numpy's BLAS, float32) and one comparison per
score.

Exact scores: a float32 matmul's rounding depends on the BLAS kernel and on the block's
shape (on an AVX2 host, OpenBLAS's kernels gave some pairs a different last bit in a shard's
blocks than in the whole pass's). So the matmul only screens: an entry
within :math:`2\gamma_d(2\lVert y\rVert x_{\max} + x_{\max}^2)` of the cut
(:math:`\gamma_d = (d+2)\,u_{32}`, the standard bound on a length-:math:`d` float32 dot
product's error, :math:`x_{\max}` the block's largest row norm) is rescored as a float64 dot
product of its two rows, rounded to float32, and ranked by that. Every candidate that can
belong to a list is rescored, and a pair's score depends on its two rows alone, so the lists
(members, order, scores and distances) do not depend on block sizes, shards or the BLAS.

Shards: lists searched over disjoint candidate ranges merge into the lists of the whole
pool (:func:`merge_neighbors`), the same as one search: a pool too large for one job is
searched by several (the workflow's ``whiten.neighbor_shards``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .errors import TarotInputError
from .io import load_npz, release_rows, save_npz

__all__ = ["Neighbors", "TopK", "merge_neighbors", "nearest_neighbors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neighbors:
    r"""``k`` nearest candidates of each target.

    Attributes
    ----------
    indices : np.ndarray, shape (m, k), int64
        ``indices[j, r]`` is the candidate at rank ``r`` (0 = nearest) for target ``j``.
    distances : np.ndarray, shape (m, k), float32
        The matching WFD distances, non-decreasing along each row.
    n_candidates : int, optional
        Size of the pool searched (-1 if unknown); :meth:`check` compares it.
    scores : np.ndarray, shape (m, k), float32, optional
        The search's scores :math:`2x^{\top} y - \Vert x\Vert^2` (what it ranked by), kept so
        that lists of shards merge exactly (:func:`merge_neighbors`).
    """

    indices: np.ndarray
    distances: np.ndarray
    n_candidates: int = -1
    scores: np.ndarray | None = None

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
        arrays = {"indices": self.indices, "distances": self.distances, "n_candidates": np.int64(self.n_candidates)}
        if self.scores is not None:
            arrays["scores"] = self.scores
        save_npz(
            path,
            arrays,
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
        scores = None
        with np.load(path) as raw:
            if "scores" in raw.files:
                scores = np.asarray(raw["scores"], dtype=np.float32)
        if scores is not None and scores.shape != idx.shape:
            raise TarotInputError(f"{path}: scores of shape {scores.shape} for lists of shape {idx.shape}")
        return cls(idx.astype(np.int64), dist, int(n), scores)


#: Score entries (targets × candidate rows) per matmul of :class:`TopK` (64 MiB of float32).
BLOCK_ENTRIES = 1 << 24
#: Rows of a score block partitioned at once by :func:`_kth_best`.
CUT_ROWS = 64


def _merge_rows(
    rows: np.ndarray, scores: np.ndarray, index: np.ndarray, extra: np.ndarray | None, m: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The best ``k`` entries (score descending, then index ascending) of every row 0..m-1.

    ``rows``, ``scores``, ``index`` (and ``extra``, carried along) are flat, one per entry;
    every row must hold at least ``k`` of them.
    """
    order = np.lexsort((index, -scores, rows))  # row by row, best first inside a row
    first = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=m))[:-1]))
    take = order[(first[:, None] + np.arange(k)[None, :]).ravel()]
    more = None if extra is None else extra[take].reshape(m, k)
    return scores[take].reshape(m, k), index[take].reshape(m, k), more


def _best_first_keys(row: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """uint64 keys ordering entries by row, then score descending: the row in the high 32
    bits, the float32 score's bit pattern made order-preserving in the low 32 (exact: no
    rounding, ``-0.0`` folded onto ``0.0``, ``-inf`` last)."""
    bits = (scores + np.float32(0.0)).view(np.uint32)
    ascending = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return (row.astype(np.uint64) << np.uint64(32)) | (np.uint32(0xFFFFFFFF) - ascending).astype(np.uint64)


def _insert_rows(
    best_s: np.ndarray, best_i: np.ndarray, rows: np.ndarray, scores: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lists ``best_s``/``best_i`` (t, k), each sorted best first, with the entries
    (``rows``, ``scores``, ``index``) inserted, cut back to ``k`` per row.

    The new entries must have larger indices than every listed one (a later block), so an
    equal score goes after the listed entries and, among new ones, to the lower index: the
    order of :func:`_merge_rows`. One sort of the new entries and a linear merge
    (``searchsorted`` + ``np.insert``), instead of re-sorting the t·k listed entries.
    """
    t, k = best_s.shape
    keys = _best_first_keys(rows, scores)
    order = np.lexsort((index, keys))
    keys, rows, scores, index = keys[order], rows[order], scores[order], index[order]
    listed = _best_first_keys(np.repeat(np.arange(t), k), best_s.ravel())
    at = np.searchsorted(listed, keys, side="right")  # after the listed entries of equal key
    merged_s = np.insert(best_s.ravel(), at, scores)
    merged_i = np.insert(best_i.ravel(), at, index)
    before = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=t))[:-1]))
    take = (np.arange(t) * k + before)[:, None] + np.arange(k)[None, :]
    return merged_s[take], merged_i[take]


def _above(scores: np.ndarray, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the entries of ``scores`` (m, b) above their row's ``cut``.

    Few entries pass once the lists are full, so the boolean mask is scanned eight bytes at
    a time and only the words holding a pass are expanded (about 10x faster than
    ``np.nonzero`` on the mask).
    """
    mask = scores > cut[:, None]
    flat = mask.reshape(-1)
    words = flat.size // 8
    hits = np.flatnonzero(flat[: words * 8].view(np.uint64))
    idx = (hits[:, None] * 8 + np.arange(8)).reshape(-1)
    tail = np.arange(words * 8, flat.size)
    idx = np.concatenate((idx, tail))
    idx = idx[flat[idx]]
    return np.divmod(idx, scores.shape[1])


def _kth_best(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest entry of every row of ``scores`` (m, b), shape (m,).

    Partitions copies of :data:`CUT_ROWS`-row slices, so the copy stays small next to the
    score block (a copy of the whole block is 32 MB for 1,000 targets × 8,192 candidates;
    the first block's traced peak went from 75 to 64 MiB).
    """
    b = scores.shape[1]
    return np.concatenate(
        [np.partition(scores[r : r + CUT_ROWS], b - k, axis=1)[:, b - k] for r in range(0, scores.shape[0], CUT_ROWS)]
    )


#: Pairs rescored at once by :func:`_exact_scores` (small gathers: a 64 MB one cost more in page
#: faults than the products).
RESCORE_PAIRS = 256


def _exact_scores(y64: np.ndarray, xb: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    r"""Scores :math:`2 y_r^\top x_c - \lVert x_c\rVert^2` of the pairs ``(rows, cols)``, each
    a float64 dot product of its own two rows rounded to float32: the same value whatever the
    block, shard or BLAS that found the pair, shape (len(rows),)."""
    out = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), RESCORE_PAIRS):
        yr = y64[rows[s : s + RESCORE_PAIRS]]
        xc = xb[cols[s : s + RESCORE_PAIRS]].astype(np.float64)
        out[s : s + len(yr)] = 2.0 * np.einsum("ij,ij->i", yr, xc) - np.einsum("ij,ij->i", xc, xc)
    return out


class TopK:
    r"""Running ``k`` best candidates of every target, fed one candidate block at a time.

    Parameters
    ----------
    targets : np.ndarray, shape (m, d)
    k : int
        Neighbours to keep per target.

    Each :meth:`add` screens the block :math:`X_b` against all targets with float32
    matmuls, :math:`S = 2YX_b^\top - \mathbf{1}\lVert x\rVert^{2\top}` (shape (m, b), at
    most :data:`BLOCK_ENTRIES` entries at once); the entries above their target's current
    :math:`k`-th best score less the matmul's rounding bound (while a list is not full: the
    block's own :math:`k`-th best, less the bound) are rescored exactly (module docstring)
    and merged into the running lists (an equal score of a later candidate ranks after the
    earlier one). The result is the exact top-k of the rescored values with ties to the
    lower index, whatever the block sizes or shards.
    """

    def __init__(self, targets: np.ndarray, k: int) -> None:
        self.y = np.array(targets, dtype=np.float32)  # (m, d), a writable copy
        self.y2 = self.y * np.float32(2.0)  # 2Y: doubling is exact, and saves a pass over every score block
        m, d = self.y.shape
        # |fl(2 y.x - |x|^2) - (2 y.x - |x|^2)| <= gamma (2 |y| |x| + |x|^2), gamma = (d + 2) u
        self._gamma = (d + 2) * float(np.finfo(np.float32).eps) / 2
        self._y64 = self.y.astype(np.float64)  # the rescoring's rows (m x d x 8 bytes)
        self._ynorm = np.sqrt(np.einsum("ij,ij->i", self._y64, self._y64))
        self.k = int(k)
        if self.k < 1:
            raise TarotInputError(f"k must be >= 1, got {k}")
        self.best_s = np.full((m, self.k), -np.inf, dtype=np.float32)
        self.best_i = np.zeros((m, self.k), dtype=np.int64)
        self.seen = 0

    @property
    def block_rows(self) -> int:
        """Candidate rows per matmul (a score block of about :data:`BLOCK_ENTRIES` entries)."""
        return max(256, BLOCK_ENTRIES // max(1, self.y.shape[0]))

    def add(self, block: np.ndarray, start: int) -> None:
        """Merge candidates ``start .. start + len(block)`` (rows of ``block``, shape (b, d))."""
        x = np.asarray(block, dtype=np.float32)
        k = self.k
        for s0 in range(0, x.shape[0], self.block_rows):
            xb = x[s0 : s0 + self.block_rows]
            xsq = np.einsum("ij,ij->i", xb, xb)
            scores = self.y2 @ xb.T  # (m, b), the same values as 2 (Y X_b^T)
            scores -= xsq[None, :]
            cut = self.best_s[:, -1]
            if np.isneginf(cut).any():  # a list is not full: the block's own k-th best
                cut = np.maximum(cut, _kth_best(scores, min(k, xb.shape[0])))
            # twice the rounding bound: whatever the matmul's rounding, every entry whose exact
            # score reaches the cut passes (the cut itself is exact, or a rounded score)
            xmax = float(np.sqrt(xsq.max(initial=0.0)))
            slack = (2.0 * self._gamma * (2.0 * self._ynorm * xmax + xmax * xmax)).astype(np.float32)
            rows, cols = _above(scores, cut - slack)
            if rows.size:
                exact = _exact_scores(self._y64, xb, rows, cols)
                # only the targets that got a new entry are re-ranked (rows are independent)
                touched, local = np.unique(rows, return_inverse=True)
                self.best_s[touched], self.best_i[touched] = _insert_rows(
                    self.best_s[touched], self.best_i[touched], local, exact, cols + (start + s0)
                )
            self.seen += xb.shape[0]

    def result(self) -> Neighbors:
        r"""The lists so far, with distances :math:`\sqrt{\lVert y\rVert^2 - S}` and their scores."""
        if self.seen < self.k:
            raise TarotInputError(f"k must be in [1, {self.seen}] (the pool size), got {self.k}")
        ysq = np.einsum("ij,ij->i", self.y, self.y)[:, None]
        dist = np.sqrt(np.maximum(ysq - self.best_s, 0.0)).astype(np.float32)
        return Neighbors(self.best_i.copy(), dist, self.seen, self.best_s.copy())


def merge_neighbors(parts: Sequence[Neighbors], k: int | None = None) -> Neighbors:
    """Lists of disjoint candidate ranges (global indices) merged into those of the whole pool.

    Equal to one search over all the candidates (same ranking: score descending, ties to
    the lower index), provided every part kept at least ``k`` neighbours (or all of its
    candidates). ``n_candidates`` of the result is the parts' sum.

    Parameters
    ----------
    parts : sequence of Neighbors
        One per shard, each with ``scores`` (as :meth:`TopK.result` writes them).
    k : int, optional
        Neighbours per target of the result (default: the largest ``k`` of the parts).
    """
    if not parts:
        raise TarotInputError("no neighbour lists to merge")
    m = parts[0].indices.shape[0]
    for p in parts:
        if p.scores is None:
            raise TarotInputError("neighbour lists without scores cannot be merged; rerun the shard searches")
        if p.indices.shape[0] != m:
            raise TarotInputError(f"neighbour lists cover {p.indices.shape[0]} and {m} targets: not one search")
    n = sum(max(p.n_candidates, 0) for p in parts)
    k_out = min(int(k) if k is not None else max(p.k for p in parts), sum(p.k for p in parts))
    for p in parts:
        if p.k < min(k_out, p.n_candidates):
            raise TarotInputError(f"a shard kept {p.k} neighbours per target, the merged lists need {k_out}")
    s, i, d = _merge_rows(
        np.concatenate([np.repeat(np.arange(m), p.k) for p in parts]),
        np.concatenate([p.scores.ravel() for p in parts]),  # type: ignore[union-attr]
        np.concatenate([p.indices.ravel() for p in parts]),
        np.concatenate([p.distances.ravel() for p in parts]),
        m,
        k_out,
    )
    if (np.diff(np.sort(i, axis=1), axis=1) == 0).any():
        raise TarotInputError("merged neighbour lists repeat a candidate: the shards overlap")
    return Neighbors(i, d, n, s)


def nearest_neighbors(
    candidates: np.ndarray,
    targets: np.ndarray,
    k: int,
    block_rows: int = 8192,
    progress: bool = False,
    rows: tuple[int, int] | None = None,
) -> Neighbors:
    """Exact ``k`` nearest candidates (Euclidean) of every target.

    Parameters
    ----------
    candidates : np.ndarray, shape (n, d)
        Possibly a memory map; read in row blocks (and its pages released again).
    targets : np.ndarray, shape (m, d)
    k : int
        Neighbours per target, ``1 <= k <=`` the number of candidates searched.
    block_rows : int
        Candidate rows per matmul block.
    progress : bool
        A progress bar (tqdm) over the candidate blocks.
    rows : (int, int), optional
        Search only candidates ``start .. stop - 1`` (one shard of a sharded search); the
        lists carry global indices and ``n_candidates`` is ``stop - start``.

    Returns
    -------
    Neighbors
        Ties are broken towards the lower candidate index, so results are deterministic.
    """
    start, stop = (0, candidates.shape[0]) if rows is None else (int(rows[0]), int(rows[1]))
    if not 1 <= k <= stop - start:
        raise TarotInputError(f"k must be in [1, {stop - start}] (the pool size), got {k}")
    top = TopK(targets, k)
    for s in tqdm(range(start, stop, block_rows), desc="nearest neighbours", disable=not progress, unit="block"):
        x = np.asarray(candidates[s : min(stop, s + block_rows)], dtype=np.float32)  # a view of float32 rows
        top.add(x, s)
        release_rows(candidates, s, s + x.shape[0])  # after use: a view would map its pages again
    return top.result()
