r"""Whitening of projected gradient features (the "W" in WFD).

Given features :math:`X \in \mathbb{R}^{n\times d}` (candidates and targets stacked),
centre them, :math:`\bar X = X - \mathbf{1}\mu^\top`, estimate

.. math:: \Sigma = \tfrac1n \bar X^\top \bar X + \lambda I,\qquad
          \lambda = \varepsilon\,\operatorname{tr}(\Sigma_0)/d ,

and map every row to :math:`z = W^\top (x-\mu)` (row form :math:`Z = \bar X W`) with

* Cholesky: :math:`\Sigma = L L^\top`, :math:`W = L^{-\top}`;
* ZCA: :math:`\Sigma = U\Lambda U^\top`, :math:`W = U\Lambda^{-1/2}U^\top`.

Both give :math:`W^\top\Sigma W = I` and the same Gram matrix
:math:`Z Z^\top = \bar X\Sigma^{-1}\bar X^\top`; they differ only in the coordinates of
:math:`Z` (ZCA stays closest to the original axes). Rows are then scaled to unit norm.

Statistics are accumulated in float64 over row blocks (:class:`WhiteningStats`), so a
memory-mapped pool, or shards computed by separate jobs, never has to be held at once.
Each block is centred on a shift :math:`c` (the first block's mean, so that an offset
shared by all rows costs no precision) and its Gram matrix :math:`\sum (x-c)(x-c)^\top`
is one symmetric float64 product (BLAS ``syrk``, half a general matmul). Float32 Gram
sums would be about twice as fast but their rounding error is relative to the largest
variance, not to each direction's own: on a spectrum spanning six decades it moved
whitened rows by up to 3·10⁻⁴ and changed 0.4 % of the nearest-neighbour lists, so the
sums stay float64. The transform is a float32 matmul per row block (numpy's BLAS).

Ablations of the paper's Table 6: ``method="none"`` uses the raw projected gradients (no
centring, no whitening); ``normalize=False`` skips the unit normalisation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import linalg
from tqdm.auto import tqdm

from .combine import combine_checkpoints
from .errors import TarotInputError
from .io import FeatureSet, load_features, load_npz, open_row_writer, release_rows, save_npz
from .knn import Neighbors, TopK, nearest_neighbors

__all__ = [
    "WHITEN_METHODS",
    "WhitenedFiles",
    "Whitener",
    "WhiteningStats",
    "neighbors_of_files",
    "whiten",
    "whiten_files",
]

log = logging.getLogger(__name__)

WhitenMethod = Literal["cholesky", "zca", "none"]
WHITEN_METHODS: tuple[str, ...] = ("cholesky", "zca", "none")
DEFAULT_BLOCK_ROWS = 8192
#: Rows per float64 Gram product of :meth:`WhiteningStats.update`.
GRAM_ROWS = 16384
#: Fewer rows per whitened dimension than this draws a warning (covariance poorly estimated).
_ROWS_PER_DIM = 5


@dataclass
class WhiteningStats:
    r"""Running sums about a shift :math:`c`: :math:`n`, :math:`\sum (x-c)` and
    :math:`\sum (x-c)(x-c)^\top`, in float64.

    Mergeable (``a.merge(b)``, re-centred onto ``a``'s shift), so shards can be reduced in
    any order. The shift is set by the first :meth:`update` (its block's mean) and only
    serves precision: :math:`\mu` and :math:`\Sigma_0` do not depend on it.
    """

    dim: int
    n: int = 0
    sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    outer: np.ndarray = field(default=None)  # type: ignore[assignment]
    shift: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = np.zeros(self.dim, dtype=np.float64)
        if self.outer is None:
            self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)
        if self.shift is None:
            self.shift = np.zeros(self.dim, dtype=np.float64)

    def update(self, x: np.ndarray, block_rows: int = GRAM_ROWS) -> WhiteningStats:
        """Add the rows of ``x`` (shape (n, dim)), block by block."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TarotInputError(f"whitening statistics expect (n, {self.dim}) rows, got shape {x.shape}")
        for start in range(0, x.shape[0], block_rows):
            rows = x[start : start + block_rows]
            with np.errstate(invalid="ignore", over="ignore"):  # a non-finite row is reported below
                if self.n == 0 and not self.shift.any():
                    self.shift = np.mean(rows, axis=0, dtype=np.float64)
                # x - c cast to float64 in one pass over the rows (no float64 copy before the shift)
                block = np.subtract(rows, self.shift, dtype=np.float64)
            release_rows(x, start, start + block.shape[0])
            col_sum = block.sum(axis=0)
            if not np.isfinite(col_sum).all():  # float64 sums of finite rows stay finite
                raise TarotInputError(
                    f"features rows {start}..{start + block.shape[0]} hold NaN or infinite values; "
                    "rerun the gradient step (a diverged proxy?)"
                )
            self.n += block.shape[0]
            self.sum += col_sum
            self.outer += block.T @ block  # one buffer and its transpose: numpy calls syrk
        return self

    def recentred(self, shift: np.ndarray) -> WhiteningStats:
        r"""The same statistics about another shift :math:`c'` (:math:`\delta = c - c'`):
        :math:`\sum(x-c') = S_1 + n\delta`, :math:`\sum(x-c')(x-c')^\top = S_2 + S_1\delta^\top
        + \delta S_1^\top + n\delta\delta^\top`."""
        delta = self.shift - np.asarray(shift, dtype=np.float64)
        s1 = self.sum + self.n * delta
        s2 = self.outer + np.outer(self.sum, delta) + np.outer(delta, self.sum) + self.n * np.outer(delta, delta)
        return WhiteningStats(self.dim, self.n, s1, s2, np.array(shift, dtype=np.float64))

    def merge(self, other: WhiteningStats) -> WhiteningStats:
        """Add another accumulator's sums into this one."""
        if other.dim != self.dim:
            raise TarotInputError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        if self.n == 0:
            self.shift = other.shift.copy()
        moved = other.recentred(self.shift)
        self.n += moved.n
        self.sum += moved.sum
        self.outer += moved.outer
        return self

    @property
    def mean(self) -> np.ndarray:
        r""":math:`\mu = c + \frac1n\sum (x-c)`, shape (dim,)."""
        if self.n == 0:
            raise TarotInputError("no rows were added to the whitening statistics")
        return self.shift + self.sum / self.n

    @property
    def covariance(self) -> np.ndarray:
        r""":math:`\Sigma_0 = \frac1n\sum (x-c)(x-c)^\top - (\mu-c)(\mu-c)^\top`, shape (dim, dim)."""
        if self.n == 0:
            raise TarotInputError("no rows were added to the whitening statistics")
        centre = self.sum / self.n
        cov = self.outer / self.n - np.outer(centre, centre)
        return (cov + cov.T) / 2.0

    def save(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
        """Save the sums as ``.npz`` with a checked sidecar, atomically (for scatter–gather over shards)."""
        save_npz(
            path,
            {"n": np.int64(self.n), "sum": self.sum, "outer": self.outer, "shift": self.shift},
            {"kind": "whitening statistics", "dim": self.dim, "rows": self.n, **(meta or {})},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WhiteningStats:
        """Read what :meth:`save` wrote (checked against its sidecar; a file without one is read as is).

        Raises
        ------
        TarotInputError
            If the file is missing, truncated, changed since it was written, or its arrays do not fit.
        """
        try:
            z = load_npz(path, keys=("n", "sum", "outer"))
        except TarotInputError as exc:
            raise TarotInputError(f"cannot read whitening statistics: {exc}") from None
        n, total, outer = z["n"], z["sum"], z["outer"]
        shift = z.get("shift", np.zeros(total.shape, dtype=np.float64))
        d = total.shape[0] if total.ndim == 1 else -1
        if (
            n.shape != ()
            or n.dtype.kind not in "iu"
            or int(n) < 0
            or d < 0
            or outer.shape != (d, d)
            or total.dtype.kind != "f"
            or outer.dtype.kind != "f"
            or shift.shape != (d,)
        ):
            raise TarotInputError(
                f"{path}: not whitening statistics (n {n.shape} {n.dtype}, sum {total.shape}, outer {outer.shape}); "
                "delete it and rerun the step that made it (snakemake reruns it)"
            )
        return cls(
            dim=d,
            n=int(n),
            sum=total.astype(np.float64),
            outer=outer.astype(np.float64),
            shift=shift.astype(np.float64),
        )


class Whitener:
    r"""Fit a whitening map on joint features and apply it.

    Parameters
    ----------
    method : {"cholesky", "zca", "none"}
        Whitening transform (see module docstring). ``"none"`` leaves the features as
        they are (no centring), the paper's "w/o whitened" ablation.
    normalize : bool
        Scale every output row to unit L2 norm (the WFD's last step).
    eps : float
        Relative ridge: :math:`\lambda = \varepsilon\,\mathrm{tr}(\Sigma_0)/d` is added to the
        diagonal before factorising (keeps rank-deficient covariances invertible).
    compute_dtype : numpy dtype
        dtype of the block matmul in :meth:`transform` (float32 by default, float64 for
        reference computations). Statistics are always float64.

    Attributes
    ----------
    mean_ : np.ndarray, shape (d,) or None
    matrix_ : np.ndarray, shape (d, d) or None
        :math:`W`; row features are mapped to :math:`(x-\mu) W`.
    ridge_ : float
        The absolute ridge :math:`\lambda` that was added.
    """

    def __init__(
        self,
        method: WhitenMethod = "cholesky",
        normalize: bool = True,
        eps: float = 1e-5,
        compute_dtype: np.dtype | type = np.float32,
    ) -> None:
        if method not in WHITEN_METHODS:
            raise TarotInputError(f"unknown whitening method {method!r}; choose one of {', '.join(WHITEN_METHODS)}")
        if not (np.isfinite(eps) and eps >= 0):
            raise TarotInputError(f"whitening eps must be finite and >= 0, got {eps!r}")
        self.method = method
        self.normalize = normalize
        self.eps = float(eps)
        self.compute_dtype = np.dtype(compute_dtype)
        self.mean_: np.ndarray | None = None
        self.matrix_: np.ndarray | None = None
        self.ridge_: float = 0.0
        self.dim_: int | None = None
        self._cast: tuple[np.ndarray, np.ndarray] | None = None  # W and mu in compute_dtype

    # ------------------------------------------------------------------ fitting
    def fit(self, *arrays: np.ndarray, block_rows: int = GRAM_ROWS) -> Whitener:
        """Fit on the rows of all ``arrays`` jointly (e.g. ``fit(candidates, targets)``)."""
        if not arrays:
            raise TarotInputError("Whitener.fit needs at least one array")
        dim = arrays[0].shape[1]
        self.dim_ = dim
        if self.method == "none":
            return self
        stats = WhiteningStats(dim)
        for arr in arrays:
            stats.update(arr, block_rows=block_rows)
        return self.fit_stats(stats)

    def fit_stats(self, stats: WhiteningStats) -> Whitener:
        """Fit from accumulated statistics (shard-by-shard whitening)."""
        self.dim_ = stats.dim
        self._cast = None
        if self.method == "none":
            return self
        cov = stats.covariance
        d = cov.shape[0]
        if stats.n < _ROWS_PER_DIM * d:
            log.warning(
                "whitening %d dimensions from only %d rows: the covariance is poorly estimated and its small "
                "eigenvalues (amplified by whitening) are mostly noise; use at least %d rows per dimension "
                "(a smaller proj_dim, or features.combine: sum)",
                d,
                stats.n,
                _ROWS_PER_DIM,
            )
        scale = float(np.trace(cov)) / d
        if not np.isfinite(scale) or scale <= 0:
            raise TarotInputError("features have zero variance: every row is identical, nothing to whiten")
        self.ridge_ = self.eps * scale
        cov = cov + self.ridge_ * np.eye(d)
        if self.method == "cholesky":
            try:
                lower = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                raise TarotInputError(
                    f"covariance is not positive definite even with ridge {self.ridge_:.3g}; raise eps"
                ) from None
            # W = L^{-T}: solve L Y = I for Y = L^{-1}, then transpose.
            self.matrix_ = linalg.solve_triangular(lower, np.eye(d), lower=True).T
        else:  # zca
            evals, evecs = linalg.eigh(cov)
            if evals.min() <= 0:
                raise TarotInputError(
                    f"covariance has a non-positive eigenvalue with ridge {self.ridge_:.3g}; raise eps"
                )
            self.matrix_ = (evecs * evals**-0.5) @ evecs.T
        self.mean_ = stats.mean
        log.info("fitted %s whitening on %d rows x %d dims (ridge %.3g)", self.method, stats.n, d, self.ridge_)
        return self

    # -------------------------------------------------------------- transforming
    def transform(
        self,
        x: np.ndarray,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Whiten (and normalise) the rows of ``x``, shape (n, d) -> (n, d).

        ``out`` may be a preallocated (e.g. memory-mapped) array to write into.
        """
        if self.dim_ is None:
            raise TarotInputError("Whitener is not fitted: call fit() or fit_stats() first")
        if x.ndim != 2 or x.shape[1] != self.dim_:
            raise TarotInputError(f"whitener was fitted on {self.dim_} dims, got shape {x.shape}")
        if out is None:
            out = np.empty(x.shape, dtype=self.compute_dtype)
        for start in range(0, x.shape[0], block_rows):
            z = np.array(x[start : start + block_rows], dtype=self.compute_dtype, order="C")
            stop = start + z.shape[0]
            release_rows(x, start, stop)
            out[start:stop] = self.transform_block(z)
            release_rows(out, start, stop)
        return out

    def transform_block(self, z: np.ndarray) -> np.ndarray:
        """Whiten (and normalise) the rows of ``z``, shape (b, d) -> (b, d).

        ``z`` must be a C-contiguous array of ``compute_dtype`` that the caller owns (e.g. a
        fresh copy of a row block): it is centred in place, so no other copy is made. The
        product with :math:`W` is a general matmul even for Cholesky's triangular
        :math:`W`: BLAS ``trmm`` halves its flops, but on this OpenBLAS the next ``gemm``
        (the neighbour scores) then ran 30–50 % slower, a net loss (measured at d = 256 and
        1024).
        """
        if self.dim_ is None:
            raise TarotInputError("Whitener is not fitted: call fit() or fit_stats() first")
        if z.dtype != self.compute_dtype or not z.flags.c_contiguous or z.ndim != 2 or z.shape[1] != self.dim_:
            raise TarotInputError(
                f"transform_block needs a C-contiguous {self.compute_dtype} block of {self.dim_} columns, "
                f"got {z.dtype} {z.shape}{'' if z.flags.c_contiguous else ' (not C-contiguous)'}"
            )
        if self.matrix_ is not None and self.mean_ is not None:
            w, mu = self._matrix_as(z.dtype)
            z -= mu
            z = z @ w
        if self.normalize:
            z /= np.maximum(np.sqrt(np.einsum("ij,ij->i", z, z)), np.finfo(z.dtype).tiny)[:, None]
        return z

    def _matrix_as(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        r""":math:`W` and :math:`\mu` in ``dtype`` (cast once, then cached)."""
        if self._cast is None or self._cast[0].dtype != dtype:
            self._cast = (np.asarray(self.matrix_, dtype=dtype), np.asarray(self.mean_, dtype=dtype))
        return self._cast

    def fit_transform(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Fit jointly on ``arrays`` and return each one transformed."""
        self.fit(*arrays)
        return [self.transform(a) for a in arrays]

    def metadata(self) -> dict:
        """Settings for a sidecar."""
        return {"method": self.method, "normalize": self.normalize, "eps": self.eps, "ridge": self.ridge_}


def whiten(
    candidates: np.ndarray,
    targets: np.ndarray,
    method: WhitenMethod = "cholesky",
    normalize: bool = True,
    eps: float = 1e-5,
    compute_dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a :class:`Whitener` on candidates ∪ targets and return both transformed."""
    w = Whitener(method=method, normalize=normalize, eps=eps, compute_dtype=compute_dtype)
    cand, targ = w.fit_transform(candidates, targets)
    return cand, targ


@dataclass(frozen=True)
class WhitenedFiles:
    """What :func:`whiten_files` wrote and how long each part took.

    Attributes
    ----------
    candidates, targets : Path
        The WFD feature files (float32, one row per input row).
    neighbors : Path or None
        The nearest-candidate lists, if asked for.
    whitener : Whitener
        The fitted map (its ``metadata()`` is in both sidecars).
    seconds : dict
        ``fit`` (statistics and factorisation), ``transform`` (whitening, normalising,
        writing, and the neighbour search when asked for), ``neighbors`` (the search's share).
    """

    candidates: Path
    targets: Path
    neighbors: Path | None
    whitener: Whitener
    seconds: dict


def whiten_files(
    candidates: str | os.PathLike[str],
    targets: str | os.PathLike[str],
    out_candidates: str | os.PathLike[str],
    out_targets: str | os.PathLike[str],
    *,
    method: WhitenMethod = "cholesky",
    normalize: bool = True,
    eps: float = 1e-5,
    combine: str = "sum",
    stats: Sequence[str | os.PathLike[str]] | None = None,
    out_neighbors: str | os.PathLike[str] | None = None,
    neighbors_k: int = 16,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> WhitenedFiles:
    r"""Fit the whitening on candidates ∪ targets (feature files) and stream both to WFD files.

    The checkpoint blocks of every row are first merged as ``combine`` says
    (:func:`~tarot_select.combine.combine_checkpoints`; ``sum`` is the paper's Eq. 4), one
    row block at a time. With ``stats`` (per-shard :class:`WhiteningStats` of the combined
    rows), the fit merges them instead of reading the features. The transform streams row
    blocks of :math:`z = W^\top(x-\mu)/\lVert\cdot\rVert` to ``out_candidates``; with
    ``out_neighbors`` the same pass keeps the ``neighbors_k`` nearest WFD candidates of every
    target (:class:`~tarot_select.knn.TopK`) and saves them, so selections need not search
    the pool again. Memory: a few row blocks, the :math:`d\times d` map and the targets.

    Parameters
    ----------
    candidates, targets : path
        Feature files (``.npy`` with sidecar, float32 or float16, read as memory maps).
    out_candidates, out_targets : path
        WFD feature files to write (atomically, with sidecars naming the inputs and the map).
    method, normalize, eps
        As for :class:`Whitener`.
    combine : {"sum", "lr_sum", "concat"}
        How checkpoint blocks merge before whitening.
    stats : sequence of path, optional
        Saved :class:`WhiteningStats` covering exactly the candidates and targets.
    out_neighbors : path, optional
        Where to save the :class:`~tarot_select.knn.Neighbors` of the targets.
    neighbors_k : int
        Neighbours per target (capped at the pool size).
    block_rows : int
        Rows per streamed block.

    Returns
    -------
    WhitenedFiles
    """
    t0 = time.perf_counter()
    cand, targ = load_features(candidates), load_features(targets)

    def combined(feats: FeatureSet, start: int = 0, stop: int | None = None) -> np.ndarray:
        rows = feats.array[start:stop]
        out = combine_checkpoints(rows, feats.checkpoint_dims, feats.checkpoint_weights, combine)
        out = np.array(out, dtype=np.float32, order="C")  # a copy in memory, so that the file's pages can go
        release_rows(feats.array, start, start + rows.shape[0])
        return out

    n = cand.array.shape[0]
    targ_c = np.array(combined(targ), dtype=np.float32)
    dim = targ_c.shape[1]
    w = Whitener(method, normalize=normalize, eps=eps)
    if method == "none":
        w.dim_ = dim
    elif stats:
        merged = WhiteningStats(dim)
        for path in stats:
            merged.merge(WhiteningStats.load(path))
        expected = n + targ.array.shape[0]
        if merged.n != expected or merged.dim != dim:
            raise TarotInputError(
                f"whitening statistics cover {merged.n} rows of {merged.dim} columns, the features {expected} "
                f"rows of {dim} (combine: {combine}); rerun dump_gradients"
            )
        w.fit_stats(merged)
    else:
        acc = WhiteningStats(dim)
        for start in tqdm(range(0, n, GRAM_ROWS), desc="whitening statistics", unit="block", disable=n < 500_000):
            rows = cand.array[start : start + GRAM_ROWS]  # no float32 copy: update casts to float64 once
            acc.update(combine_checkpoints(rows, cand.checkpoint_dims, cand.checkpoint_weights, combine))
            release_rows(cand.array, start, start + rows.shape[0])
        w.fit_stats(acc.update(targ_c))
    t1 = time.perf_counter()
    targ_w = w.transform(targ_c)
    meta = {"source": str(targets), "whitening": w.metadata(), "combine": combine, "made_from": targ.meta}
    with open_row_writer(out_targets, targ_w.shape, dtype=np.float32, meta=meta) as out:
        out.write(targ_w)
    top = TopK(targ_w, min(int(neighbors_k), n)) if out_neighbors is not None else None
    t_nb = 0.0
    meta = {"source": str(candidates), "whitening": w.metadata(), "combine": combine, "made_from": cand.meta}
    with open_row_writer(out_candidates, (n, dim), dtype=np.float32, meta=meta) as out:
        for start in tqdm(range(0, n, block_rows), desc="whiten", unit="block", disable=n < 500_000):
            z = w.transform_block(combined(cand, start, start + block_rows))  # a float32 copy this loop owns
            out.write(z)
            if top is not None:
                t2 = time.perf_counter()
                top.add(z, start)
                t_nb += time.perf_counter() - t2
    nb_path = None
    if top is not None and out_neighbors is not None:
        top.result().save(out_neighbors, meta={"features": str(out_candidates)})
        nb_path = Path(out_neighbors)
    t3 = time.perf_counter()
    log.info("whitened %d + %d rows of %d dims in %.1f s (fit %.1f s)", n, len(targ_c), dim, t3 - t0, t1 - t0)
    return WhitenedFiles(
        Path(out_candidates),
        Path(out_targets),
        nb_path,
        w,
        {"fit": t1 - t0, "transform": t3 - t1, "neighbors": t_nb},
    )


def neighbors_of_files(
    candidates: str | os.PathLike[str],
    targets: str | os.PathLike[str],
    k: int,
    *,
    rows: tuple[int, int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> Neighbors:
    """Nearest WFD candidates of every target among rows ``rows = (start, stop)`` of a WFD file.

    One shard of a sharded neighbour search: the lists carry global candidate indices and
    their scores, so :func:`~tarot_select.knn.merge_neighbors` of all shards equals one
    search of the whole file. ``k`` is capped at the shard's size.
    """
    cand = load_features(candidates).array
    targ = np.array(load_features(targets).array, dtype=np.float32)
    n = cand.shape[0]
    start, stop = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start < stop <= n:
        raise TarotInputError(f"rows {start}..{stop} are not a non-empty range of the {n} candidates")
    return nearest_neighbors(
        cand, targ, min(int(k), stop - start), block_rows=block_rows, progress=n >= 500_000, rows=(start, stop)
    )
