"""Reading pickles from a user's folder without running what they name.

``pickle.load`` calls any function a file names (``os.system``, ``builtins.exec``,
``subprocess.Popen``, ...), so a crafted dataset file runs its payload as soon as it is
read. :func:`safe_load` unpickles with a :class:`pickle.Unpickler` whose ``find_class``
resolves only the globals a caller allows, and refuses every other one with a
:class:`~tarot_select.errors.TarotInputError` that names the file and the global, before
anything is called.

The allowed sets below cover what dataset pickles written by Python 2 or 3 and numpy 1 or
2 need: the builtin containers (the opcodes build dicts, lists, tuples, strings and
numbers themselves; protocol 2 names ``set``/``frozenset``), and the numpy globals that
rebuild an array (``_reconstruct``, or ``_frombuffer`` for protocol 5, under their numpy 1
and numpy 2 module paths, ``ndarray``, ``dtype``, ``scalar``). Python 3's protocol 2 writes ``bytes`` as
``_codecs.encode(text, "latin1")``; that global resolves to a wrapper that accepts only
the latin-1 encoding.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Collection
from typing import IO, Any, Final

from ..errors import TarotInputError

__all__ = ["BUILTIN_GLOBALS", "NUMPY_ARRAY_GLOBALS", "safe_load"]

#: Builtin types that protocol 0-2 pickles name as globals (``__builtin__`` is Python 2's
#: spelling of ``builtins``; both are accepted).
BUILTIN_GLOBALS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("_codecs", "encode"),
    }
)

#: What a pickled numpy array or scalar needs (numpy 1 writes ``numpy.core``, numpy 2 ``numpy._core``).
NUMPY_ARRAY_GLOBALS: Final[frozenset[tuple[str, str]]] = BUILTIN_GLOBALS | frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 (out-of-band buffers)
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)

#: Python 2 module names that pickles carry for today's ones.
_PY2_MODULES: Final[dict[str, str]] = {"__builtin__": "builtins", "copy_reg": "copyreg"}

#: numpy 2 moved ``numpy.core`` to ``numpy._core``; a pickle may name either.
_NUMPY_CORE_ALIASES: Final[dict[str, str]] = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy._core.multiarray": "numpy.core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
    "numpy._core.numeric": "numpy.core.numeric",
}

#: Errors of a damaged or foreign stream (each becomes one TarotInputError line).
_STREAM_ERRORS: Final[tuple[type[BaseException], ...]] = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
    MemoryError,
    ImportError,
    struct.error,
)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes``: latin-1 only."""
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only as latin-1 bytes, not {encoding!r}")
    return text.encode("latin1", errors)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``allowed`` ``(module, name)`` globals."""

    def __init__(self, fh: IO[bytes], allowed: Collection[tuple[str, str]], origin: str, encoding: str) -> None:
        super().__init__(fh, encoding=encoding, fix_imports=True)
        self._allowed = frozenset(allowed)
        self._origin = origin

    def find_class(self, module: str, name: str) -> Any:
        key = (_PY2_MODULES.get(module, module), name)
        if key not in self._allowed:
            raise TarotInputError(
                f"{self._origin}: refused to unpickle: it names {module}.{name}, which a data file never needs "
                "(a crafted file can run code this way); replace it with the original file"
            )
        if key == ("_codecs", "encode"):
            return _latin1_encode
        try:
            return super().find_class(*key)
        except ImportError:  # numpy 1 reading numpy 2's module path, or the other way round
            other = _NUMPY_CORE_ALIASES.get(key[0])
            if other is None:
                raise
            return super().find_class(other, name)

    def persistent_load(self, pid: Any) -> Any:
        raise TarotInputError(f"{self._origin}: refused to unpickle: it holds a persistent reference {pid!r}")


def safe_load(
    fh: IO[bytes] | bytes,
    allowed: Collection[tuple[str, str]] = NUMPY_ARRAY_GLOBALS,
    origin: str | None = None,
    encoding: str = "latin1",
) -> Any:
    """Unpickle ``fh`` resolving only the ``allowed`` globals.

    Parameters
    ----------
    fh : binary file or bytes
        The pickle stream.
    allowed : collection of (module, name), default NUMPY_ARRAY_GLOBALS
        Globals the stream may name (``builtins``, not ``__builtin__``). Containers,
        strings and numbers need none.
    origin : str, optional
        What to call the stream in errors (the file's path); default: the file's ``name``.
    encoding : str, default "latin1"
        How Python 2 ``str`` objects are decoded (latin-1 keeps numpy's raw bytes intact).

    Returns
    -------
    object
        What the pickle holds.

    Raises
    ------
    TarotInputError
        If the stream names a global outside ``allowed`` (nothing it names is called), or
        is not a readable pickle (truncated, damaged). One line, naming ``origin``.
    """
    if isinstance(fh, bytes | bytearray):
        fh = io.BytesIO(fh)
    where = origin if origin is not None else str(getattr(fh, "name", "<pickle>"))
    try:
        return _RestrictedUnpickler(fh, allowed, where, encoding).load()
    except TarotInputError:
        raise
    except _STREAM_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TarotInputError(
            f"{where}: not a readable pickle ({type(exc).__name__}: {detail[:200]}); replace it with the original file"
        ) from None
