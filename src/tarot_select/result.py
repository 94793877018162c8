"""The one result type every selection method returns."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TarotInputError
from .io import atomic_path, integrity_of, library_versions, read_sidecar, sidecar_path, verify, write_json_atomic

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """A selected subset of the candidate pool.

    Attributes
    ----------
    indices : np.ndarray, shape (s,), int64
        Unique candidate indices, in the order the method picked them (OTM: ascending,
        the union of its folds).
    method : str
        ``tarot``, ``otm``, ``random``, ``dsdm``, ``less``, ...
    n_candidates : int
        Size of the pool the indices refer to.
    budget : int or None
        The requested size (None for OTM, which chooses its own size).
    weights : np.ndarray, shape (s,), or None
        Per-sample weights: integer repeat counts (OT-potential weighting), mass shares
        (OT-optimal weights) or None for uniform.
    weighting : str or None
        How ``weights`` were made (``"potential"``, ``"optimal"`` or None).
    ot_distance : float or None
        OT distance of the (uniformly weighted) selection to the target, if evaluated.
    ot_trace : tuple of float
        OT distances the method monitored while growing the selection (OTM: per step,
        concatenated over folds; see ``info``).
    chosen_ratio : float or None
        For OTM: ``len(indices) / n_candidates``, the ratio it chose.
    timings : mapping of str to float
        Seconds per stage.
    info : mapping
        Method-specific details (parameters, per-fold traces, rounds, ...).
    """

    indices: np.ndarray
    method: str
    n_candidates: int
    budget: int | None = None
    weights: np.ndarray | None = None
    weighting: str | None = None
    ot_distance: float | None = None
    ot_trace: tuple[float, ...] = ()
    chosen_ratio: float | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of selected samples."""
        return len(self.indices)

    @property
    def ratio(self) -> float:
        """Selected fraction of the pool."""
        return self.size / self.n_candidates

    def with_updates(self, **changes: Any) -> Selection:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def metadata(self) -> dict[str, Any]:
        """Everything but the arrays, for a JSON sidecar."""
        return {
            "method": self.method,
            "n_candidates": self.n_candidates,
            "budget": self.budget,
            "size": self.size,
            "ratio": self.ratio,
            "weighting": self.weighting,
            "ot_distance": self.ot_distance,
            "ot_trace": list(self.ot_trace),
            "chosen_ratio": self.chosen_ratio,
            "timings": dict(self.timings),
            "info": dict(self.info),
            "versions": library_versions(),
        }

    def to_csv(self, path: str | os.PathLike[str], extra_meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``index,weight`` rows (weight 1 when unweighted) and a JSON sidecar, atomically.

        The sidecar records the file's ``integrity`` (size, rows, checksum), which
        :func:`read_selection` checks.
        """
        weights = np.ones(self.size) if self.weights is None else np.asarray(self.weights)
        is_int = np.issubdtype(weights.dtype, np.integer)
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write("index,weight\n")
                fh.writelines(
                    f"{i},{w}\n" if is_int else f"{i},{w:.10g}\n"
                    for i, w in zip(self.indices.tolist(), weights.tolist())
                )
            record = integrity_of(tmp, rows=self.size)
        meta = self.metadata()
        if extra_meta:
            meta.update(extra_meta)
        meta["integrity"] = record
        write_json_atomic(sidecar_path(path), meta)
        return Path(path)


def read_selection(csv_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Indices, weights and sidecar of a selection CSV written by :meth:`Selection.to_csv`.

    The CSV is checked against its sidecar (``integrity``: size, rows and checksum; for
    sidecars written before that record existed, the row count ``size``), so a file cut
    short or edited since it was written is refused rather than trained on.

    Returns
    -------
    indices : np.ndarray, shape (k,), int64
    weights : np.ndarray, shape (k,)
        int64 repeat counts for potential-weighted selections, float64 otherwise.
    meta : dict
        The JSON sidecar.

    Raises
    ------
    TarotInputError
        Naming the file and how to regenerate it, if the CSV or its sidecar is missing,
        damaged, truncated or changed.
    """
    p = Path(csv_path)
    hint = f"delete it (and its {sidecar_path(p).name}) and rerun the selection that made it (snakemake reruns it)"
    if not p.is_file():
        raise TarotInputError(f"selection file not found: {p}")
    meta = read_sidecar(p, required=True)
    verify(p, meta)
    try:
        lines = [ln for ln in p.read_bytes().decode("utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise TarotInputError(f"{p}: not a readable text file ({exc}); {hint}") from None
    if not lines or lines[0].strip() != "index,weight":
        raise TarotInputError(f"{p}: expected the header 'index,weight', got {lines[0][:40] if lines else 'nothing'!r}")
    rows = lines[1:]
    size = meta.get("size")
    if isinstance(size, int) and size != len(rows):
        raise TarotInputError(
            f"{p}: truncated or changed since it was written (sidecar: {size} rows, file: {len(rows)}); {hint}"
        )
    table = np.empty((len(rows), 2))
    for k, row in enumerate(rows):
        cells = row.split(",")
        try:
            if len(cells) != 2:
                raise ValueError(f"{len(cells)} cells")
            table[k] = float(cells[0]), float(cells[1])
        except ValueError:
            raise TarotInputError(f"{p}: line {k + 2} is not 'index,weight': {row[:60]!r}; {hint}") from None
    indices = table[:, 0].astype(np.int64)
    weights = table[:, 1]
    if (indices != table[:, 0]).any() or (indices < 0).any():
        raise TarotInputError(f"{p}: indices must be non-negative integers; {hint}")
    n = meta.get("n_candidates")
    if isinstance(n, int) and len(indices) and indices.max() >= n:
        raise TarotInputError(f"{p}: index {int(indices.max())} is outside the pool of {n} candidates; {hint}")
    if len(np.unique(indices)) != len(indices):
        raise TarotInputError(f"{p}: holds repeated indices; {hint}")
    if not np.isfinite(weights).all():
        raise TarotInputError(f"{p}: holds non-finite weights; {hint}")
    if meta.get("weighting") == "potential":
        weights = weights.astype(np.int64)
    return indices, weights, meta
