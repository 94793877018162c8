"""Self-describing arrays on disk: ``.npy`` plus a JSON sidecar, written atomically.

A feature file ``X.npy`` has a sidecar ``X.json`` that says how it was made (shape,
dtype, projector, seed, dimension, parameter subset, checkpoints, library versions).
Both are written to a temporary file in the same directory and renamed into place,
so a job killed half way never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
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
    "open_row_writer",
    "release_rows",
    "take_rows",
]


def _whole_memmap(arr: np.ndarray) -> mmap.mmap | None:
    """The mapping behind ``arr`` if it is a whole, C-contiguous ``np.memmap`` (not a view of one)."""
    mm = getattr(arr, "_mmap", None)
    return mm if mm is not None and arr.base is mm and arr.flags.c_contiguous else None


def release_rows(arr: np.ndarray, start: int, stop: int) -> None:
    """Drop rows ``[start, stop)`` of a memory-mapped array from this process's resident set.

    Streaming a large ``np.memmap`` block by block otherwise leaves every page read (or
    written) mapped, so resident memory grows to the file size. ``madvise(MADV_DONTNEED)``
    unmaps the pages; the kernel's page cache keeps them (and writes dirty pages of a
    shared writable map back to the file), so no data is lost and a later read is served
    from the cache. Arrays that are not a whole C-contiguous ``np.memmap`` are left alone.
    """
    mm = _whole_memmap(arr)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row = arr.strides[0] if arr.ndim else arr.itemsize
    base = arr.offset % mmap.ALLOCATIONGRANULARITY  # where the data starts inside the mapping
    page = mmap.PAGESIZE
    lo = base + start * row
    hi = base + stop * row
    lo = -(-lo // page) * page  # whole pages inside the range only
    hi = min(hi, len(mm)) // page * page
    if hi > lo:
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # pragma: no cover - best effort
            pass


def take_rows(arr: np.ndarray, indices: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
    """Copy of ``arr[indices]`` (any order) that leaves no pages of a memory map resident.

    Fancy indexing a memory map faults in whole page-cache folios around each row, so a
    few hundred scattered rows can map hundreds of MiB. For a whole, C-contiguous
    ``np.memmap`` the rows are read with ``readinto`` from its file instead (runs of
    consecutive rows in one call); other arrays are indexed as usual.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if _whole_memmap(arr) is None or not getattr(arr, "filename", None):
        return np.array(arr[idx], dtype=dtype)
    if len(idx) and (idx.min() < 0 or idx.max() >= arr.shape[0]):
        raise IndexError(f"row indices outside [0, {arr.shape[0]})")
    order = np.argsort(idx, kind="stable")
    rows = idx[order]
    buf = np.empty((len(idx),) + arr.shape[1:], dtype=arr.dtype)
    row_bytes = arr.strides[0]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    with open(arr.filename, "rb", buffering=0) as fh:
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            view = memoryview(buf[lo:hi]).cast("B")
            fh.seek(arr.offset + int(rows[lo]) * row_bytes)
            got = fh.readinto(view)
            if got != len(view):
                raise OSError(f"short read from {arr.filename}: {got} of {len(view)} bytes")
    out = np.empty_like(buf, dtype=arr.dtype if dtype is None else dtype)
    out[order] = buf
    return out


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


class RowWriter:
    """Appends row blocks to an open ``.npy`` file (see :func:`open_row_writer`).

    Writes run on one background thread (the copy into the page cache releases the GIL),
    so the caller computes the next block meanwhile; at most two blocks wait in line.
    """

    def __init__(self, fh: Any, shape: tuple[int, int], dtype: np.dtype) -> None:
        self._fh = fh
        self.shape = shape
        self.dtype = dtype
        self.rows = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="row-writer")
        self._pending: list[Future] = []

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` (shape (b, d)), converted to the file's dtype."""
        block = np.array(block, dtype=self.dtype, order="C")  # a private copy for the writer thread
        if block.ndim != 2 or block.shape[1] != self.shape[1]:
            raise TarotInputError(f"expected row blocks of width {self.shape[1]}, got shape {block.shape}")
        if self.rows + block.shape[0] > self.shape[0]:
            raise TarotInputError(f"more than the {self.shape[0]} rows declared")
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._fh.write, memoryview(block).cast("B")))
        self.rows += block.shape[0]

    def close(self) -> None:
        """Wait for the queued writes (re-raising their errors) and stop the thread."""
        try:
            for fut in self._pending:
                fut.result()
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


@contextlib.contextmanager
def open_row_writer(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    dtype: str | np.dtype = "float32",
    meta: Mapping[str, Any] | None = None,
) -> Iterator[RowWriter]:
    """Yield a :class:`RowWriter` whose rows become ``path`` only if all arrive and the block exits cleanly.

    Sequential ``write`` calls, unlike stores into a memory map, neither fault pages in
    nor keep them resident, so streaming a large array costs only its row blocks.
    """
    dt = np.dtype(dtype)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": tuple(shape)}
            )
            writer = RowWriter(fh, tuple(shape), dt)
            try:
                yield writer
            finally:
                writer.close()
            if writer.rows != shape[0]:
                raise TarotInputError(f"{path}: {writer.rows} rows written, {shape[0]} declared")
    write_json_atomic(sidecar_path(path), _full_meta(tuple(shape), dt, meta))


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
