"""Reading a local CIFAR-10 (numpy and pickle; torchvision, if installed, is imported only
when the images are read). Nothing is ever downloaded.

The batch files are pickles; they are read with :func:`~tarot_select.tasks._safe_pickle.safe_load`,
which resolves only the builtin and numpy globals a batch needs, so a crafted file in the
user's folder is refused instead of running what it names.

See :mod:`tarot_select.tasks.cifar10` for the layout of the folder.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from ...errors import TarotInputError
from .._safe_pickle import NUMPY_ARRAY_GLOBALS, safe_load

__all__ = [
    "BATCH_FOLDER",
    "IMAGE_SHAPE",
    "META_FILE",
    "N_CLASSES",
    "TEST_FILES",
    "TRAIN_FILES",
    "batch_dir",
    "load_cifar10",
    "missing_files",
]

logger = logging.getLogger(__name__)

N_CLASSES: Final[int] = 10
IMAGE_SHAPE: Final[tuple[int, int, int]] = (3, 32, 32)
#: Folder under ``root`` that torchvision's ``CIFAR10`` reads.
BATCH_FOLDER: Final[str] = "cifar-10-batches-py"
TRAIN_FILES: Final[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES: Final[tuple[str, ...]] = ("test_batch",)
META_FILE: Final[str] = "batches.meta"


def batch_dir(root: str | Path) -> Path:
    """The folder of the batch files under ``root``."""
    return Path(root) / BATCH_FOLDER


def missing_files(root: str | Path) -> list[str]:
    """Names of the CIFAR-10 files missing under ``root/cifar-10-batches-py`` (existence only)."""
    folder = batch_dir(root)
    return [name for name in (*TRAIN_FILES, *TEST_FILES, META_FILE) if not (folder / name).is_file()]


def _check_arrays(x: Any, y: Any, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 3, 32, 32), int64 (N,))`` from ``(N, 3072)`` / ``(N, 3, 32, 32)`` pixels, or TarotInputError."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 2 and x.shape[1] == int(np.prod(IMAGE_SHAPE)):
        x = x.reshape(len(x), *IMAGE_SHAPE)
    if x.shape[1:] != IMAGE_SHAPE or y.shape != (x.shape[0],) or len(x) == 0:
        raise TarotInputError(
            f"cifar10: {origin} holds images {x.shape} and labels {y.shape}; need (N, 3072) or (N, 3, 32, 32) and (N,)"
        )
    if x.dtype != np.uint8:
        raise TarotInputError(f"cifar10: {origin} holds pixels of dtype {x.dtype}; CIFAR-10 pixels are uint8")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= N_CLASSES:
        raise TarotInputError(f"cifar10: {origin} needs integer labels in 0..9")
    return x, y.astype(np.int64)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (n, 3, 32, 32)`` and labels ``int64 (n,)`` of one CIFAR-10 pickle."""
    try:
        with open(path, "rb") as fh:
            entry = safe_load(fh, NUMPY_ARRAY_GLOBALS, origin=f"cifar10: {path}")
    except OSError as exc:
        raise TarotInputError(f"cifar10: cannot read {path} as a CIFAR-10 batch: {exc}") from None
    if not isinstance(entry, Mapping):
        raise TarotInputError(f"cifar10: {path} holds a {type(entry).__name__}, not a CIFAR-10 batch dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise TarotInputError(f"cifar10: {path} lacks 'data' or 'labels' (has {sorted(map(str, entry))})")
    return _check_arrays(entry["data"], entry["labels"], str(path))


def _read_pickles(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = batch_dir(root)
    parts = [[_read_batch(folder / name) for name in names] for names in (TRAIN_FILES, TEST_FILES)]
    (x_tr, y_tr), (x_te, y_te) = [
        (np.concatenate([p[0] for p in part]), np.concatenate([p[1] for p in part])) for part in parts
    ]
    return x_tr, y_tr, x_te, y_te


def _read_torchvision(root: Path, datasets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out: list[np.ndarray] = []
    for train in (True, False):
        try:
            ds = datasets.CIFAR10(root=str(root), train=train, download=False)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise TarotInputError(
                f"cifar10: torchvision cannot read CIFAR-10 under {root} ({exc}); the files are missing, "
                "incomplete, or not the original ones (torchvision checks their md5 sums)"
            ) from None
        images = np.asarray(ds.data)  # (N, 32, 32, 3), channels last
        if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise TarotInputError(f"cifar10: torchvision read images of shape {images.shape} from {root}")
        x, y = _check_arrays(
            np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
            np.asarray(ds.targets),
            f"{batch_dir(root)} ({'train' if train else 'test'})",
        )
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def _torchvision_datasets() -> Any | None:
    """``torchvision.datasets`` if it imports, else None (then the pickles are read directly)."""
    try:
        from torchvision import datasets
    except ImportError:
        return None
    except (RuntimeError, OSError) as exc:  # e.g. a torchvision built for another torch
        logger.warning("cifar10: torchvision is installed but does not import (%s); reading the pickles directly", exc)
        return None
    return datasets


def load_cifar10(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All images of a local CIFAR-10, read-only, never downloading.

    Parameters
    ----------
    root : str
        Folder that contains ``cifar-10-batches-py/`` (see :mod:`tarot_select.tasks.cifar10`).

    Returns
    -------
    x_train : np.ndarray, uint8, shape (N_train, 3, 32, 32)
        Training images in file order (``data_batch_1`` … ``data_batch_5``).
    y_train : np.ndarray, int64, shape (N_train,)
    x_test : np.ndarray, uint8, shape (N_test, 3, 32, 32)
        ``test_batch``.
    y_test : np.ndarray, int64, shape (N_test,)

    Raises
    ------
    TarotInputError
        If a file is missing or does not hold a CIFAR-10 batch.

    Notes
    -----
    Read by ``torchvision.datasets.CIFAR10(root, train=…, download=False)`` (with its md5
    checks) when torchvision imports, else from the pickles directly. The last result is
    cached, keyed by ``root`` and the size and modification time of every file.
    """
    path = Path(root)
    missing = missing_files(path)
    if missing:
        raise TarotInputError(f"cifar10: {batch_dir(path)} lacks {', '.join(missing)}")
    stats = [(batch_dir(path) / name).stat() for name in (*TRAIN_FILES, *TEST_FILES, META_FILE)]
    return _load_cached(str(path), tuple((st.st_size, st.st_mtime_ns) for st in stats))


@functools.lru_cache(maxsize=1)
def _load_cached(
    root: str, signature: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`load_cifar10` for a root whose files have the given ``(size, mtime)`` signature."""
    path = Path(root)
    datasets = _torchvision_datasets()
    if datasets is not None:
        logger.debug("cifar10: reading %s with torchvision (download=False)", path)
        arrays = _read_torchvision(path, datasets)
    else:
        logger.debug("cifar10: reading the pickles under %s", path)
        arrays = _read_pickles(path)
    for a in arrays:
        a.flags.writeable = False
    return arrays
