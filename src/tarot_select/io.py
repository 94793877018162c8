"""Self-describing arrays on disk: ``.npy`` plus a JSON sidecar, written atomically.

A feature file ``X.npy`` has a sidecar ``X.json`` that says how it was made (shape,
dtype, projector, seed, dimension, parameter subset, checkpoints, library versions).
Both are written to a temporary file in the same directory and renamed into place,
so a job killed half way never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TarotInputError

__all__ = [
    "FeatureSet",
    "atomic_path",
    "library_versions",
    "load_features",
    "save_features",
    "sidecar_path",
    "write_json_atomic",
    "open_feature_writer",
]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Return the JSON sidecar path of a file (``X.npy`` -> ``X.json``, ``S.csv`` -> ``S.json``)."""
    p = Path(path)
    return p.with_suffix(".json") if p.suffix and p.suffix != ".json" else p.with_name(p.name + ".json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, for provenance."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "ot", "scipy", "tarot_select"):
        try:
            mod = __import__(name)
            versions[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:  # pragma: no cover - optional at read time
            continue
    return versions


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass(frozen=True)
class FeatureSet:
    """An array of features with the metadata that says how it was made.

    Attributes
    ----------
    array : np.ndarray, shape (n, d)
        The features (possibly a read-only memory map).
    meta : dict
        The sidecar contents (``shape``, ``dtype``, ``projector``, ``checkpoints``, ...).
    """

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_dims(self) -> list[int] | None:
        """Feature dimensions of each checkpoint block, if the sidecar records them."""
        ckpts = self.meta.get("checkpoints")
        if not ckpts or any("dim" not in c for c in ckpts):
            return None
        return [int(c["dim"]) for c in ckpts]

    @property
    def checkpoint_weights(self) -> list[float] | None:
        """Per-checkpoint weights (e.g. learning rates), if the sidecar records them."""
        ckpts = self.meta.get("checkpoints")
        if not ckpts:
            return None
        return [float(c.get("weight", 1.0)) for c in ckpts]


def _full_meta(array_shape: tuple[int, ...], dtype: np.dtype, meta: Mapping[str, Any] | None) -> dict:
    out = dict(meta or {})
    out["shape"] = list(array_shape)
    out["dtype"] = str(np.dtype(dtype))
    out.setdefault("versions", library_versions())
    return out


def save_features(
    path: str | os.PathLike[str],
    array: np.ndarray,
    meta: Mapping[str, Any] | None = None,
    dtype: str | np.dtype | None = None,
) -> Path:
    """Save ``array`` to ``path`` (``.npy``) and its sidecar, both atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.npy`` file.
    array : np.ndarray, shape (n, d)
    meta : mapping, optional
        Provenance to record; ``shape``, ``dtype`` and ``versions`` are filled in.
    dtype : dtype, optional
        Storage dtype (``float16`` or ``float32``); defaults to the array's.
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
    write_json_atomic(sidecar_path(path), _full_meta(arr.shape, arr.dtype, meta))
    return Path(path)


@contextlib.contextmanager
def open_feature_writer(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    dtype: str | np.dtype = "float32",
    meta: Mapping[str, Any] | None = None,
) -> Iterator[np.memmap]:
    """Yield a writable memory map that becomes ``path`` only if the block exits cleanly.

    Use it to stream features of a large pool to disk row block by row block.
    """
    with atomic_path(path) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
        yield mm
        mm.flush()
        del mm
    write_json_atomic(sidecar_path(path), _full_meta(tuple(shape), np.dtype(dtype), meta))


def load_features(path: str | os.PathLike[str], mmap: bool = True) -> FeatureSet:
    """Load a feature array (memory-mapped by default) and its sidecar, if any.

    Raises
    ------
    TarotInputError
        If the file is missing, not a 2-D numeric ``.npy`` array, or disagrees with its sidecar.
    """
    p = Path(path)
    if not p.is_file():
        raise TarotInputError(f"feature file not found: {p}")
    try:
        arr = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise TarotInputError(f"cannot read {p} as a .npy array: {exc}") from None
    if arr.ndim != 2:
        raise TarotInputError(f"{p}: expected a 2-D array (samples x dims), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TarotInputError(f"{p}: expected a floating-point array, got dtype {arr.dtype}")
    meta: dict[str, Any] = {}
    side = sidecar_path(p)
    if side.is_file():
        meta = json.loads(side.read_text())
        if "shape" in meta and list(meta["shape"]) != list(arr.shape):
            raise TarotInputError(f"{p}: sidecar {side.name} says shape {meta['shape']}, file has {list(arr.shape)}")
    return FeatureSet(array=arr, meta=meta)
