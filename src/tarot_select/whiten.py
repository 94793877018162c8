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

Ablations of the paper's Table 6: ``method="none"`` uses the raw projected gradients (no
centring, no whitening); ``normalize=False`` skips the unit normalisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import linalg

from .errors import TarotInputError
from .io import load_npz, release_rows, save_npz

__all__ = ["WhiteningStats", "Whitener", "whiten", "WHITEN_METHODS"]

log = logging.getLogger(__name__)

WhitenMethod = Literal["cholesky", "zca", "none"]
WHITEN_METHODS: tuple[str, ...] = ("cholesky", "zca", "none")
DEFAULT_BLOCK_ROWS = 4096
#: Fewer rows per whitened dimension than this draws a warning (covariance poorly estimated).
_ROWS_PER_DIM = 5


@dataclass
class WhiteningStats:
    r"""Running sums :math:`n`, :math:`\sum x` and :math:`\sum x x^\top` in float64.

    Mergeable (``a.merge(b)``), so shards can be reduced in any order.
    """

    dim: int
    n: int = 0
    sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    outer: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = np.zeros(self.dim, dtype=np.float64)
        if self.outer is None:
            self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, x: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> "WhiteningStats":
        """Add the rows of ``x`` (shape (n, dim)), block by block."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TarotInputError(f"whitening statistics expect (n, {self.dim}) rows, got shape {x.shape}")
        for start in range(0, x.shape[0], block_rows):
            block = np.asarray(x[start : start + block_rows], dtype=np.float64)
            release_rows(x, start, start + block.shape[0])
            self.n += block.shape[0]
            self.sum += block.sum(axis=0)
            self.outer += block.T @ block
        return self

    def merge(self, other: "WhiteningStats") -> "WhiteningStats":
        """Add another accumulator's sums into this one."""
        if other.dim != self.dim:
            raise TarotInputError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    @property
    def mean(self) -> np.ndarray:
        """:math:`\\mu = \\frac1n\\sum x`, shape (dim,)."""
        if self.n == 0:
            raise TarotInputError("no rows were added to the whitening statistics")
        return self.sum / self.n

    @property
    def covariance(self) -> np.ndarray:
        """:math:`\\Sigma_0 = \\frac1n\\sum x x^\\top - \\mu\\mu^\\top`, shape (dim, dim)."""
        mu = self.mean
        cov = self.outer / self.n - np.outer(mu, mu)
        return (cov + cov.T) / 2.0

    def save(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
        """Save the sums as ``.npz`` with a checked sidecar, atomically (for scatter–gather over shards)."""
        save_npz(
            path,
            {"n": np.int64(self.n), "sum": self.sum, "outer": self.outer},
            {"kind": "whitening statistics", "dim": self.dim, "rows": self.n, **(meta or {})},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "WhiteningStats":
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
        d = total.shape[0] if total.ndim == 1 else -1
        if (
            n.shape != ()
            or n.dtype.kind not in "iu"
            or int(n) < 0
            or d < 0
            or outer.shape != (d, d)
            or total.dtype.kind != "f"
            or outer.dtype.kind != "f"
        ):
            raise TarotInputError(
                f"{path}: not whitening statistics (n {n.shape} {n.dtype}, sum {total.shape}, outer {outer.shape}); "
                "delete it and rerun the step that made it (snakemake reruns it)"
            )
        return cls(dim=d, n=int(n), sum=total.astype(np.float64), outer=outer.astype(np.float64))


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

    # ------------------------------------------------------------------ fitting
    def fit(self, *arrays: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> "Whitener":
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

    def fit_stats(self, stats: WhiteningStats) -> "Whitener":
        """Fit from accumulated statistics (shard-by-shard whitening)."""
        self.dim_ = stats.dim
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
        dt = torch.float64 if self.compute_dtype == np.float64 else torch.float32
        w = None if self.matrix_ is None else torch.as_tensor(self.matrix_, dtype=dt)
        mu = None if self.mean_ is None else torch.as_tensor(self.mean_, dtype=dt)
        tiny = torch.finfo(dt).tiny
        for start in range(0, x.shape[0], block_rows):
            z = torch.from_numpy(np.array(x[start : start + block_rows], dtype=self.compute_dtype))
            stop = start + z.shape[0]
            release_rows(x, start, stop)
            if w is not None:
                z = torch.matmul(z.sub_(mu), w)
            if self.normalize:
                z.div_(torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_(min=tiny))
            out[start:stop] = z.numpy()
            release_rows(out, start, stop)
        return out

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
