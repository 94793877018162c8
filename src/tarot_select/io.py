"""Self-describing arrays on disk: ``.npy`` plus a JSON sidecar, written atomically.

A feature file ``X.npy`` has a sidecar ``X.json`` that says how it was made (shape,
dtype, projector, seed, dimension, parameter subset, checkpoints, library versions).
Both are written to a temporary file in the same directory and renamed into place,
so a job killed half way never leaves a file that looks finished; the next write of the
same file removes temporary files that killed jobs left behind (:func:`remove_stale_tmp`),
and finished files get the mode the umask allows (not a temporary file's ``0o600``).

Every sidecar the library writes (features, selections, ``.npz`` archives) also records
the file's ``integrity``: its size, rows and a checksum (a full sha256 up to
:data:`FULL_DIGEST_BYTES`, a sampled one above, so that checking a large file costs a few
tens of milliseconds). Readers check it (:func:`verify`), so a file cut short or changed
after it was written is refused, naming the file and how to regenerate it, instead of
being used. Files without the record (written before it existed) are read unchecked.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import math
import mmap
import os
import platform
import re
import secrets
import socket
import sys
import threading
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TarotInputError

log = logging.getLogger(__name__)

__all__ = [
    "FULL_DIGEST_BYTES",
    "FeatureSet",
    "atomic_path",
    "current_umask",
    "integrity_of",
    "library_versions",
    "load_features",
    "load_npy",
    "load_npz",
    "open_feature_writer",
    "open_row_writer",
    "read_sidecar",
    "release_rows",
    "remove_stale_tmp",
    "save_features",
    "save_npz",
    "sidecar_path",
    "take_rows",
    "verify",
    "write_json_atomic",
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


#: Modules whose versions go into sidecars, with their distribution names.
_VERSIONED = {"torch": "torch", "ot": "POT", "scipy": "scipy", "tarot_select": "tarot-select"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, for provenance.

    A module already imported reports its own ``__version__``; one that is not is not
    imported for this (importing torch costs seconds and hundreds of MiB): its installed
    distribution's version is read from the package metadata instead.
    """
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name, dist in _VERSIONED.items():
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__version__", None) is not None:
            versions[name] = str(mod.__version__)
            continue
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - optional at read time
            continue
    return versions


#: Files up to this size get a full sha256 in their sidecar; larger ones a sampled digest.
FULL_DIGEST_BYTES = 64 * 1024 * 1024
#: The sampled digest of a large file hashes its size, its first and last block and this many
#: evenly spaced blocks in between, each :data:`SAMPLE_BLOCK_BYTES` long.
SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_BYTES = 1024 * 1024

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``; else a locked set-and-restore)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # pragma: no cover - kernels without the Umask line
        old = os.umask(0o077)
        os.umask(old)
    return old


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def _tmp_prefix(target: Path) -> str:
    return f".{target.name[:150]}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or a pid we cannot ask about): keep its file
    return True


def remove_stale_tmp(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files of ``path`` left by killed processes of this host; return them.

    :func:`atomic_path` names its temporary files ``.{name}.{host}.{pid}.{random}.tmp``. A
    file whose host is this host, whose process no longer exists and that this user owns
    is stale (its writer was killed, e.g. by SIGKILL or an out-of-memory kill) and is
    removed. Files of other hosts (a shared file system) and of live processes are kept.
    """
    target = Path(path)
    prefix = _tmp_prefix(target)
    host = _host_tag()
    removed = []
    try:
        candidates = list(target.parent.glob(glob.escape(prefix) + "*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name[len(prefix) : -len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if tmp.lstat().st_uid != os.getuid() or not tmp.is_file():
                continue
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
        log.info("removed %s, a temporary file left by process %d (no longer running)", tmp, pid)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file is ``.{name}.{host}.{pid}.{random}.tmp``, so that a later write of
    the same file can tell a stale one (its process was killed) from one being written now
    (:func:`remove_stale_tmp`, called first). The finished file gets the mode a plain
    ``open()`` would give it (``0o666`` less the umask), not the private ``0o600`` of a
    temporary file. On an exception the temporary file is removed and ``path`` is left
    untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(target)
    stem = f"{_tmp_prefix(target)}{_host_tag()}.{os.getpid()}."
    while True:
        tmp_path = target.parent / f"{stem}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        break
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())
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


# --------------------------------------------------------------------------- integrity


def _rerun_hint(p: Path) -> str:
    side = sidecar_path(p)
    return f"delete it (and its {side.name}) and rerun the step that made it (snakemake reruns it)"


def _digest(path: Path, size: int, scheme: str | None = None) -> str:
    """``sha256:<hex>`` of the whole file up to :data:`FULL_DIGEST_BYTES`, else a sampled digest.

    The sampled digest, ``sha256-sampled-{k}x{b}:<hex>``, hashes the size, the first and
    the last ``b`` bytes and ``k`` evenly spaced blocks of ``b`` bytes in between
    (:data:`SAMPLE_BLOCKS`, :data:`SAMPLE_BLOCK_BYTES`: at most 18 MiB read, however large
    the file). Any change of size, of the header or of a sampled block is caught; a change
    confined to the unsampled bytes of a large file is not. ``scheme`` (the part of a
    recorded digest before ``:``) recomputes a digest the way it was recorded.
    """
    if scheme is None:
        scheme = "sha256" if size <= FULL_DIGEST_BYTES else f"sha256-sampled-{SAMPLE_BLOCKS}x{SAMPLE_BLOCK_BYTES}"
    with open(path, "rb") as fh:
        if scheme == "sha256":
            return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
        blocks, block = (int(v) for v in scheme.removeprefix("sha256-sampled-").split("x"))
        h = hashlib.sha256(size.to_bytes(8, "little"))
        last = max(0, size - block)
        offsets = [0] + [round(last * (i + 1) / (blocks + 1)) for i in range(blocks)] + [last]
        for off in offsets:
            fh.seek(off)
            h.update(fh.read(block))
        return f"{scheme}:{h.hexdigest()}"


_DIGEST = re.compile(r"^(sha256|sha256-sampled-([1-9][0-9]{0,3})x([1-9][0-9]{0,9})):[0-9a-f]+$")


def integrity_of(path: str | os.PathLike[str], rows: int | None = None) -> dict[str, Any]:
    """The ``integrity`` record of a sidecar: ``{"bytes", "rows", "digest"}`` of the file as it is now.

    ``digest`` is a full sha256 for files up to :data:`FULL_DIGEST_BYTES` and a sampled one
    above (see :func:`_digest`), so checking a large feature file stays cheap.
    """
    p = Path(path)
    size = p.stat().st_size
    return {"bytes": int(size), "rows": None if rows is None else int(rows), "digest": _digest(p, size)}


def read_sidecar(path: str | os.PathLike[str], required: bool = False) -> dict[str, Any]:
    """The JSON sidecar of ``path`` as a dict (``{}`` if there is none and it is not ``required``).

    Raises
    ------
    TarotInputError
        If the sidecar is required but missing, or cannot be read as one JSON object.
    """
    p = Path(path)
    side = sidecar_path(p)
    if not is_file(side, "sidecar") and not os.path.lexists(side):
        if required:
            raise TarotInputError(f"{p}: its sidecar {side.name} is missing; {_rerun_hint(p)}")
        return {}
    try:
        meta = json.loads(side.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = " ".join(str(exc).split())[:120]
        raise TarotInputError(
            f"{side}: the sidecar of {p.name} is not readable JSON ({why}); fix or delete it, "
            f"or rerun the step that made {p.name}"
        ) from None
    if not isinstance(meta, dict):
        raise TarotInputError(
            f"{side}: the sidecar of {p.name} holds a JSON {type(meta).__name__}, not an object; "
            f"fix or delete it, or rerun the step that made {p.name}"
        )
    return meta


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rows_in_file(p: Path) -> int | None:
    """Complete rows the file holds now (``.npy``: from its header and size; ``.csv``: data lines)."""
    try:
        if p.suffix == ".npy":
            shape, _, dtype, offset = _npy_header(p)
            row = dtype.itemsize * math.prod(shape[1:])
            return None if not shape or row == 0 else max(0, (p.stat().st_size - offset) // row)
        if p.suffix == ".csv":
            with open(p, "rb") as fh:
                return max(0, sum(1 for line in fh if line.strip()) - 1)
    except (OSError, TarotInputError):
        return None
    return None


def verify(path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
    """Check ``path`` against the ``integrity`` record of its sidecar (size, then checksum).

    ``meta`` is the sidecar if already read (else it is read here). A file without a
    sidecar, or whose sidecar has no ``integrity`` record (written before they existed),
    is not checked.

    Raises
    ------
    TarotInputError
        If the file was truncated or changed since it was written, or the record is malformed.
    """
    p = Path(path)
    if meta is None:
        meta = read_sidecar(p)
    rec = meta.get("integrity")
    if rec is None:
        return
    side = sidecar_path(p)
    if (
        not isinstance(rec, dict)
        or not _is_count(rec.get("bytes"))
        or not (rec.get("rows") is None or _is_count(rec.get("rows")))
        or not isinstance(rec.get("digest"), str)
        or not _DIGEST.match(rec["digest"])
    ):
        raise TarotInputError(
            f"{side}: malformed 'integrity' record {json.dumps(rec)[:120]}; {_rerun_hint(p)} "
            "(or remove the record to skip the check)"
        )
    try:
        size = p.stat().st_size
        same = size == rec["bytes"] and _digest(p, size, rec["digest"].split(":")[0]) == rec["digest"]
    except OSError as exc:
        raise TarotInputError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if same:
        return
    rows = rec.get("rows")
    now = _rows_in_file(p) if rows is not None else None
    if rows is not None and now is not None and now != rows:
        what = f"sidecar: {rows} rows, file: {now}"
    elif size != rec["bytes"]:
        what = f"sidecar: {rec['bytes']} bytes, file: {size}"
    else:
        what = "same size, different checksum"
    raise TarotInputError(f"{p}: truncated or changed since it was written ({what}); {_rerun_hint(p)}")


# --------------------------------------------------------------------------- .npy and .npz

#: What numpy's readers raise on a damaged file (they parse untrusted headers with ``ast``).
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    SyntaxError,
    OverflowError,
    TypeError,
    MemoryError,
    RecursionError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    tokenize.TokenError,
)


def _npy_header(p: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` file, checked."""
    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fh.tell()
    except _READ_ERRORS as exc:
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TarotInputError(f"cannot read {p} as a .npy file: {why}") from None
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise TarotInputError(f"{p}: the .npy header gives an impossible shape {shape}")
    return tuple(shape), bool(fortran), np.dtype(dtype), offset


def is_file(path: str | os.PathLike[str], what: str = "file") -> bool:
    """``Path(path).is_file()``, but a path that cannot even be looked at (a name too long, a
    directory without search permission) is a :class:`TarotInputError`, not an ``OSError``."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError) as exc:
        raise TarotInputError(f"{what} {path}: cannot be looked up ({getattr(exc, 'strerror', None) or exc})") from None


def load_npy(path: str | os.PathLike[str], mmap: bool = True, what: str = "array") -> tuple[np.ndarray, dict]:
    """Load a numeric ``.npy`` file and its sidecar (``{}`` if none), checking both.

    The sidecar's ``integrity`` record is verified (:func:`verify`), the header is parsed
    and the file size must match it. No pickled objects are read.

    Raises
    ------
    TarotInputError
        Naming the file, if it is missing, damaged, truncated, changed, or holds objects.
    """
    p = Path(path)
    if not is_file(p, f"{what} file"):
        raise TarotInputError(f"{what} file not found: {p}")
    meta = read_sidecar(p)
    verify(p, meta)
    shape, _, dtype, offset = _npy_header(p)
    if dtype.hasobject:
        raise TarotInputError(f"{p}: holds Python objects (dtype {dtype}); save a numeric array instead")
    expected = offset + dtype.itemsize * math.prod(shape)
    size = p.stat().st_size
    if size != expected:
        rows = _rows_in_file(p)
        held = f", {rows} complete" if rows is not None and shape else ""
        raise TarotInputError(
            f"{p}: {size} bytes where its header ({shape[0] if shape else 1} rows{held}) needs {expected}: "
            "truncated or damaged; recreate it"
        )
    try:
        arr = np.load(p, mmap_mode="r" if mmap and math.prod(shape) > 0 else None, allow_pickle=False)
    except _READ_ERRORS as exc:
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TarotInputError(f"cannot read {p} as a .npy array: {why}") from None
    return arr, meta


def save_npz(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
) -> Path:
    """Save named arrays to ``path`` (an uncompressed ``.npz``) and a sidecar, both atomically.

    The sidecar records ``meta``, each array's shape and dtype, the library versions and
    the file's ``integrity`` (checked by :func:`load_npz`).
    """
    arrs = {str(k): np.asarray(v) for k, v in arrays.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrs)
        record = integrity_of(tmp)
    out = dict(meta or {})
    out["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrs.items()}
    out.setdefault("versions", library_versions())
    out["integrity"] = record
    write_json_atomic(sidecar_path(path), out)
    return Path(path)


def load_npz(path: str | os.PathLike[str], keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (read into memory), checked against its sidecar if it has one.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file.
    keys : sequence of str
        Names that must be present.

    Raises
    ------
    TarotInputError
        Naming the file, if it is missing, truncated, changed, not a zip of ``.npy``
        arrays, holds pickled objects or lacks one of ``keys``.
    """
    p = Path(path)
    if not is_file(p):
        raise TarotInputError(f"{p}: not found; rerun the step that makes it")
    verify(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: np.array(z[k]) for k in z.files}
    except _READ_ERRORS as exc:
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TarotInputError(f"{p}: not a readable .npz archive ({why}); {_rerun_hint(p)}") from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise TarotInputError(f"{p}: lacks the arrays {missing} (has {sorted(out)}); {_rerun_hint(p)}")
    return out


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


def _full_meta(
    array_shape: tuple[int, ...], dtype: np.dtype, meta: Mapping[str, Any] | None, integrity: dict[str, Any]
) -> dict:
    out = dict(meta or {})
    out["shape"] = list(array_shape)
    out["dtype"] = str(np.dtype(dtype))
    out.setdefault("versions", library_versions())
    out["integrity"] = integrity
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
        Provenance to record; ``shape``, ``dtype``, ``versions`` and ``integrity`` (size,
        rows and checksum of the file, :func:`verify`) are filled in.
    dtype : dtype, optional
        Storage dtype (``float16`` or ``float32``); defaults to the array's.
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        record = integrity_of(tmp, rows=arr.shape[0] if arr.ndim else None)
    write_json_atomic(sidecar_path(path), _full_meta(arr.shape, arr.dtype, meta, record))
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
        record = integrity_of(tmp, rows=shape[0])
    write_json_atomic(sidecar_path(path), _full_meta(tuple(shape), np.dtype(dtype), meta, record))


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
        record = integrity_of(tmp, rows=shape[0])
    write_json_atomic(sidecar_path(path), _full_meta(tuple(shape), dt, meta, record))


def _check_feature_meta(p: Path, arr: np.ndarray, meta: Mapping[str, Any]) -> None:
    """The sidecar entries that the library reads must agree with the file and make sense."""
    side = sidecar_path(p).name
    fix = f"fix or delete {side}, or rerun the step that made {p.name}"
    shape = meta.get("shape")
    if shape is not None and (not isinstance(shape, list) or shape != list(arr.shape)):
        raise TarotInputError(f"{p}: sidecar {side} says shape {shape}, file has {list(arr.shape)}; {fix}")
    dtype = meta.get("dtype")
    if dtype is not None and dtype != str(arr.dtype):
        raise TarotInputError(f"{p}: sidecar {side} says dtype {dtype!r}, file has {arr.dtype}; {fix}")
    ckpts = meta.get("checkpoints")
    if ckpts is None:
        return
    if not isinstance(ckpts, list) or not all(isinstance(c, dict) for c in ckpts):
        raise TarotInputError(f"{p}: 'checkpoints' in sidecar {side} must be a list of objects; {fix}")
    for i, c in enumerate(ckpts):
        dim = c.get("dim")
        if dim is not None and not (_is_count(dim) and dim > 0):
            raise TarotInputError(f"{p}: checkpoint {i} of sidecar {side} has dim {dim!r}, not a positive integer")
        weight = c.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise TarotInputError(f"{p}: checkpoint {i} of sidecar {side} has weight {weight!r}, not a finite number")
    dims = [c["dim"] for c in ckpts if c.get("dim") is not None]
    if ckpts and len(dims) == len(ckpts) and sum(dims) != arr.shape[1]:
        raise TarotInputError(
            f"{p}: the checkpoint dims {dims} of sidecar {side} add up to {sum(dims)}, the file has "
            f"{arr.shape[1]} columns; {fix}"
        )


def load_features(path: str | os.PathLike[str], mmap: bool = True) -> FeatureSet:
    """Load a feature array (memory-mapped by default) and its sidecar, if any.

    The file is checked against the sidecar's ``integrity`` record (:func:`verify`): a
    file cut short or changed since it was written is refused.

    Raises
    ------
    TarotInputError
        If the file is missing, damaged, not a 2-D floating-point ``.npy`` array, or
        disagrees with its sidecar (which must be a JSON object).
    """
    p = Path(path)
    arr, meta = load_npy(p, mmap=mmap, what="feature")
    if arr.ndim != 2:
        raise TarotInputError(f"{p}: expected a 2-D array (samples x dims), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TarotInputError(f"{p}: expected a floating-point array, got dtype {arr.dtype}")
    _check_feature_meta(p, arr, meta)
    return FeatureSet(array=arr, meta=meta)
