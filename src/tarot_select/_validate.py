"""Checks on user input shared by the API and the CLI (each raises TarotInputError)."""

from __future__ import annotations

import math

import numpy as np

from .errors import TarotInputError
from .io import release_rows

_CHECK_ROWS = 8192


def as_array(x: object, name: str) -> np.ndarray:
    """``x`` itself if it is an ``np.ndarray``, else ``np.asarray(x)`` (Python lists, tuples, ...).

    Raises TarotInputError if ``x`` cannot be made into a regular array (ragged lists, ...).
    """
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError, OverflowError) as exc:
        why = " ".join(str(exc).split())[:100]
        raise TarotInputError(f"{name}: cannot be read as an array ({why})") from None


def check_real(value: object, name: str, low: float | None = None, low_open: bool = False) -> float:
    """``value`` as a float; it must be a finite real number (not bool), ``>= low`` (``> low`` if ``low_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TarotInputError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)):
        bound = "" if low is None else f" and {'>' if low_open else '>='} {low:g}"
        raise TarotInputError(f"{name} must be finite{bound}, got {value!r}")
    return v


def check_int(value: object, name: str, low: int) -> int:
    """``value`` as an int; it must be an integer (not bool, not float) ``>= low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise TarotInputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_groups(groups: object, m: int) -> np.ndarray:
    """Subtask labels: one integer, string or finite float label per target, shape ``(m,)``."""
    arr = as_array(groups, "target_groups")
    if arr.shape != (m,):
        raise TarotInputError(f"target_groups must have one label per target ({m}), got shape {arr.shape}")
    if arr.dtype.kind not in "biuUSf":
        raise TarotInputError(f"target_groups must be integer or string labels, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise TarotInputError("target_groups holds NaN or Inf labels")
    return arr


def check_features(x: np.ndarray, name: str) -> np.ndarray:
    """Check that ``x`` is a non-empty 2-D floating array of finite values.

    The scan runs in row blocks so that memory-mapped files are not loaded whole (their
    pages are released again, :func:`~tarot_select.io.release_rows`).
    Returns ``x`` unchanged (no copy) if it is an array, else ``np.asarray(x)``.
    """
    arr = as_array(x, name)
    if arr.ndim != 2:
        raise TarotInputError(f"{name}: expected a 2-D array (samples x dims), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise TarotInputError(f"{name}: is empty (0 rows)")
    if arr.shape[1] == 0:
        raise TarotInputError(f"{name}: has 0 feature dimensions")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TarotInputError(f"{name}: expected floating-point features, got dtype {arr.dtype}")
    for start in range(0, arr.shape[0], _CHECK_ROWS):
        block = np.asarray(arr[start : start + _CHECK_ROWS])
        finite = np.isfinite(block).all(axis=1)
        release_rows(arr, start, start + len(block))
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            n_bad = int((~finite).sum())
            raise TarotInputError(
                f"{name}: row {bad} holds NaN or Inf ({n_bad} such rows in rows {start}..{start + len(block) - 1})"
            )
    return arr


def check_pair(candidates: np.ndarray, targets: np.ndarray) -> None:
    """Check candidates and targets separately and that their dimensions agree."""
    candidates = check_features(candidates, "candidates")
    targets = check_features(targets, "targets")
    if candidates.shape[1] != targets.shape[1]:
        raise TarotInputError(
            f"dimension mismatch: candidates have {candidates.shape[1]} dims, targets have {targets.shape[1]}"
        )


def resolve_budget(n_candidates: int, budget: int | None, ratio: float | None) -> int:
    """Turn ``budget`` or ``ratio`` into a number of samples, ``1 <= B <= n_candidates``.

    ``B = round(ratio * n_candidates)`` (at least 1) when a ratio is given.
    """
    if (budget is None) == (ratio is None):
        raise TarotInputError("give exactly one of budget or ratio")
    if ratio is not None:
        if isinstance(ratio, bool) or not (
            isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 < ratio <= 1.0
        ):
            raise TarotInputError(f"ratio must be in (0, 1], got {ratio!r}")
        budget = max(1, round(ratio * n_candidates))
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TarotInputError(f"budget must be an integer, got {budget!r}")
    if budget < 1:
        raise TarotInputError(f"budget must be at least 1, got {budget}")
    if budget > n_candidates:
        raise TarotInputError(f"budget {budget} is larger than the candidate pool ({n_candidates} samples)")
    return int(budget)


def check_masses(w: np.ndarray | None, n: int, name: str) -> np.ndarray:
    """Return masses that sum to one: uniform if ``w`` is None, else ``w / w.sum()``."""
    if w is None:
        return np.full(n, 1.0 / n)
    arr = np.asarray(w, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise TarotInputError(f"{name}: expected {n} masses, got {arr.shape[0]}")
    if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise TarotInputError(f"{name}: masses must be finite, non-negative and not all zero")
    return arr / arr.sum()
