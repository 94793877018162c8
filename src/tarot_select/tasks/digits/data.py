"""Base images and source transforms of the digits task (numpy / scipy only, no torch).

See :mod:`tarot_select.tasks.digits` for the sources and the seeding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final

import numpy as np
from scipy import ndimage

from ...errors import TarotInputError

__all__ = ["ALL_SOURCES", "NON_TARGET_STYLES", "N_CLASSES", "N_DIGITS", "base_images", "transform_images"]

#: Every candidate source the task knows, in a fixed order (the order seeds the streams).
ALL_SOURCES: Final[tuple[str, ...]] = ("clean", "rotated", "inverted", "noisy", "blurred", "shifted", "label_noise")
#: Sources that may not appear in the target mixture (target labels are always correct).
NON_TARGET_STYLES: Final[frozenset[str]] = frozenset({"label_noise"})
#: Number of images in ``sklearn.datasets.load_digits()`` (checked when the data are loaded).
N_DIGITS: Final[int] = 1797
N_CLASSES: Final[int] = 10


@functools.lru_cache(maxsize=2)
def base_images(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Base images as read-only ``(images float32 in [0, 1], labels int64)``.

    ``path`` is None for scikit-learn's bundled copy, or a local ``.npz`` with ``images``
    (N, 8, 8), values 0..16 as in UCI optdigits, and ``labels`` (N,) in 0..9, e.g. the full
    5,620-image UCI set.
    """
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from exc
        bunch = load_digits()
        raw, labels = np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
        if raw.shape != (N_DIGITS, 8, 8):
            raise RuntimeError(f"load_digits() returned images of shape {raw.shape}, expected ({N_DIGITS}, 8, 8)")
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                raw, labels = np.asarray(z["images"], dtype=np.float64), np.asarray(z["labels"], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise TarotInputError(
                f"digits: images: cannot read {path} (need arrays 'images', 'labels'): {exc}"
            ) from None
        if raw.ndim != 3 or raw.shape[1:] != (8, 8) or labels.shape != (raw.shape[0],):
            raise TarotInputError(f"digits: images: {path} holds images {raw.shape} and labels {labels.shape}")
        if labels.min() < 0 or labels.max() >= N_CLASSES or raw.min() < 0 or raw.max() > 16:
            raise TarotInputError(f"digits: images: {path} needs labels in 0..9 and pixel values in 0..16")
    images = (raw / 16.0).astype(np.float32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(20.0, 40.0, size=len(x)) * rng.choice([-1.0, 1.0], size=len(x))
    out = [
        ndimage.rotate(img, angle, reshape=False, order=1, mode="constant", cval=0.0) for img, angle in zip(x, angles)
    ]
    return np.clip(np.stack(out) if out else x.copy(), 0.0, 1.0)


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    offsets = rng.choice([-2, -1, 1, 2], size=(len(x), 2))
    out = [ndimage.shift(img, off, order=0, mode="constant", cval=0.0) for img, off in zip(x, offsets)]
    return np.stack(out) if out else x.copy()


def _noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + 0.3 * rng.standard_normal(x.shape), 0.0, 1.0)


def _blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0.0, 0.8, 0.8))


_IMAGE_TRANSFORMS: Final[dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "clean": lambda x, rng: x.copy(),
    "rotated": _rotate,
    "inverted": lambda x, rng: 1.0 - x,
    "noisy": _noisy,
    "blurred": _blur,
    "shifted": _shift,
    "label_noise": lambda x, rng: x.copy(),
}


def transform_images(
    style: str, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply source ``style`` to a stack of images and their labels.

    Parameters
    ----------
    style : str
        One of :data:`ALL_SOURCES`.
    images : np.ndarray, shape (n, 8, 8)
        Values in ``[0, 1]``.
    labels : np.ndarray, shape (n,)
        Digit labels ``0..9``.
    rng : np.random.Generator
        Source of the transform's random parameters.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``float32`` images in ``[0, 1]`` of shape ``(n, 8, 8)`` and ``int64`` labels; only
        ``label_noise`` changes labels (each to a uniformly drawn different digit).
    """
    if style not in _IMAGE_TRANSFORMS:
        raise TarotInputError(f"unknown digits source {style!r}; choose from {', '.join(ALL_SOURCES)}")
    x = _IMAGE_TRANSFORMS[style](np.asarray(images, dtype=np.float64), rng).astype(np.float32)
    y = np.asarray(labels, dtype=np.int64).copy()
    if style == "label_noise":
        y = (y + rng.integers(1, N_CLASSES, size=len(y))) % N_CLASSES
    return x, y
