"""Random projections that shrink gradient features (Johnson-Lindenstrauss sketches).

A projector maps rows ``x`` of dimension ``in_dim`` (the number of model parameters)
to ``dim`` numbers so that squared norms and inner products are preserved in
expectation::

    E ||P x||^2 = ||x||^2,        E <P x, P y> = <x, y>.

Three sketches are provided:

* :class:`DenseProjector` — ``P x = R^T x / sqrt(dim)`` with a dense ``(in_dim, dim)``
  matrix ``R`` of iid Rademacher (``±1``) or standard Gaussian entries.
* :class:`CountSketchProjector` — every input coordinate is added, with a random sign,
  to one random output bucket; cost ``O(in_dim)`` per row instead of ``O(in_dim * dim)``.
* :class:`IdentityProjector` — no projection (``P x = x``).

The random matrix is a pure function of ``(kind, seed, in_dim, dim)``: it is built from
fixed-size row blocks, each drawn from a CPU :class:`torch.Generator` whose seed is a
hash of ``(seed, block index)``. Chunk size, cache setting and device therefore never
change the numbers (up to float rounding of the matrix product).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Final

import torch

from .errors import TarotInputError

__all__ = [
    "BLOCK_ROWS",
    "COUNTSKETCH_BLOCK",
    "PROJECTOR_KINDS",
    "CountSketchProjector",
    "DenseProjector",
    "IdentityProjector",
    "Projector",
    "make_projector",
]

logger = logging.getLogger(__name__)

#: Rows of ``R`` drawn from one generator seed (the unit of chunking for dense sketches).
BLOCK_ROWS: Final[int] = 512
#: Input coordinates whose buckets and signs are drawn from one generator seed (count sketch).
COUNTSKETCH_BLOCK: Final[int] = 1 << 16
#: Projector kinds accepted by :func:`make_projector`.
PROJECTOR_KINDS: Final[tuple[str, ...]] = ("rademacher", "gaussian", "countsketch", "none")

_MIB: Final[int] = 1 << 20
_MASK64: Final[int] = (1 << 64) - 1
_MASK63: Final[int] = (1 << 63) - 1
# Stream tags keep the dense and count-sketch generators apart for the same user seed.
_STREAM_DENSE: Final[int] = 0x5EED_DE45
_STREAM_COUNT: Final[int] = 0x5EED_C0C5


def _splitmix64(z: int) -> int:
    """One round of the SplitMix64 finaliser (a bijective 64-bit integer hash)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _block_seed(seed: int, stream: int, block: int) -> int:
    """Seed of the generator for block ``block`` of a sketch with user seed ``seed``.

    ``h = splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ block)``, kept within 63 bits
    so that it is a valid :meth:`torch.Generator.manual_seed` argument on every platform.
    """
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ stream)
    h = _splitmix64(h ^ block)
    return h & _MASK63


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TarotInputError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise TarotInputError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TarotInputError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise TarotInputError(f"seed must be >= 0, got {seed}")
    return int(seed)


class Projector(ABC):
    """A linear map from ``in_dim`` to ``dim`` numbers per row.

    Attributes
    ----------
    in_dim : int
        Input dimension (e.g. the number of selected model parameters).
    dim : int
        Output dimension.
    seed : int
        Seed that, with ``kind``, ``in_dim`` and ``dim``, fixes the map.
    kind : str
        One of :data:`PROJECTOR_KINDS`.
    """

    in_dim: int
    dim: int
    seed: int
    kind: str

    @abstractmethod
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Project a validated float32 tensor of shape (B, in_dim)."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project the rows of ``x``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, in_dim)
            Any floating dtype; it is cast to float32.

        Returns
        -------
        torch.Tensor, shape (B, dim), float32, on ``x.device``.
        """
        if not isinstance(x, torch.Tensor):
            raise TarotInputError(f"{self.kind} projector expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise TarotInputError(f"{self.kind} projector expects shape (B, {self.in_dim}), got {tuple(x.shape)}")
        with torch.no_grad():
            return self._project(x.detach().to(torch.float32))

    __call__ = project

    def metadata(self) -> dict[str, Any]:
        """Settings that fix the map, for feature sidecars (JSON-serialisable)."""
        return {"kind": self.kind, "in_dim": self.in_dim, "dim": self.dim, "seed": self.seed}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_dim={self.in_dim}, dim={self.dim}, seed={self.seed})"


class DenseProjector(Projector):
    """Dense Johnson-Lindenstrauss sketch ``P x = R^T x / sqrt(dim)``.

    ``R`` has shape ``(in_dim, dim)`` with iid entries, ``±1`` with equal probability
    (``kind="rademacher"``) or ``N(0, 1)`` (``kind="gaussian"``), so that for every ``x``

        E ||P x||^2 = ||x||^2,    Var(||P x||^2 / ||x||^2) <= 2 / dim.

    ``R`` is defined block by block: rows ``[b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)`` are drawn
    by a CPU generator seeded from ``(seed, b)`` and then moved to the input's device.
    It is held in memory whole only if ``in_dim * dim * 4 <= cache_bytes`` (and then kept
    across calls); otherwise it is regenerated for every call, ``max_chunk_bytes`` worth of
    whole blocks at a time.

    Parameters
    ----------
    in_dim : int
        Input dimension.
    dim : int
        Output dimension.
    seed : int, default 0
    kind : {"rademacher", "gaussian"}, default "rademacher"
    max_chunk_bytes : int, default 256 MiB
        Memory for one chunk of ``R`` when it is not cached (at least one block is used).
    cache_bytes : int, default 512 MiB
        Cache ``R`` when its float32 size is at most this; ``0`` disables the cache.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        seed: int = 0,
        kind: str = "rademacher",
        max_chunk_bytes: int = 256 * _MIB,
        cache_bytes: int = 512 * _MIB,
    ) -> None:
        self.in_dim = _check_positive_int("in_dim", in_dim)
        self.dim = _check_positive_int("dim", dim)
        self.seed = _check_seed(seed)
        if kind not in ("rademacher", "gaussian"):
            raise TarotInputError(f"dense projector kind must be 'rademacher' or 'gaussian', got {kind!r}")
        self.kind = kind
        self.max_chunk_bytes = _check_positive_int("max_chunk_bytes", max_chunk_bytes)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise TarotInputError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        self.cache_bytes = int(cache_bytes)
        self._n_blocks = -(-self.in_dim // BLOCK_ROWS)
        block_bytes = BLOCK_ROWS * self.dim * 4
        self.blocks_per_chunk = max(1, self.max_chunk_bytes // block_bytes)
        self._cache: torch.Tensor | None = None

    @property
    def cached(self) -> bool:
        """Whether ``R`` is small enough to be kept in memory across calls."""
        return self.in_dim * self.dim * 4 <= self.cache_bytes

    def _block(self, b: int) -> torch.Tensor:
        """Rows of block ``b`` of ``R`` (unscaled), float32 on CPU."""
        start = b * BLOCK_ROWS
        rows = min(BLOCK_ROWS, self.in_dim - start)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_block_seed(self.seed, _STREAM_DENSE, b))
        if self.kind == "gaussian":
            return torch.randn((rows, self.dim), generator=gen, dtype=torch.float32)
        bits = torch.randint(0, 2, (rows, self.dim), generator=gen, dtype=torch.int8)
        return bits.to(torch.float32).mul_(2.0).sub_(1.0)

    def _rows(self, first_block: int, last_block: int) -> torch.Tensor:
        """Blocks ``first_block .. last_block - 1`` of ``R`` stacked, float32 on CPU."""
        return torch.cat([self._block(b) for b in range(first_block, last_block)], dim=0)

    def matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The unscaled matrix ``R`` of shape (in_dim, dim) (for tests and small problems)."""
        return self._rows(0, self._n_blocks).to(device)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(self.dim)
        if self.cached:
            if self._cache is None or self._cache.device != x.device:
                self._cache = self.matrix(x.device)
            return (x @ self._cache).mul_(scale)
        out = torch.zeros((x.shape[0], self.dim), dtype=torch.float32, device=x.device)
        for first in range(0, self._n_blocks, self.blocks_per_chunk):
            last = min(first + self.blocks_per_chunk, self._n_blocks)
            r = self._rows(first, last).to(x.device)
            lo, hi = first * BLOCK_ROWS, first * BLOCK_ROWS + r.shape[0]
            out.addmm_(x[:, lo:hi], r)
        return out.mul_(scale)

    def metadata(self) -> dict[str, Any]:
        """Kind, dimensions, seed, block size and scaling (JSON-serialisable)."""
        meta = super().metadata()
        meta.update(
            {
                "block_rows": BLOCK_ROWS,
                "scale": "1/sqrt(dim)",
                "scheme": "dense-blocks-splitmix64-v1",
            }
        )
        return meta


class CountSketchProjector(Projector):
    """Count sketch: ``out[:, h(i)] += s(i) * x[:, i]`` for every input coordinate ``i``.

    The bucket ``h(i)`` is uniform on ``[0, dim)`` and the sign ``s(i)`` uniform on
    ``{-1, +1}``, independently, so that

        E <P x, P y> = <x, y>,   E ||P x||^2 = ||x||^2.

    Buckets and signs are drawn per block of :data:`COUNTSKETCH_BLOCK` coordinates by a CPU
    generator seeded from ``(seed, block)``; memory is ``O(block)`` unless the whole hash
    (12 bytes per coordinate) fits in ``cache_bytes``, in which case it is kept.

    On CUDA, :meth:`torch.Tensor.index_add_` uses atomic adds, so the result can differ in
    the last bits between runs; on CPU it is deterministic.

    Parameters
    ----------
    in_dim : int
    dim : int
    seed : int, default 0
    cache_bytes : int, default 512 MiB
    """

    kind = "countsketch"

    def __init__(self, in_dim: int, dim: int, seed: int = 0, cache_bytes: int = 512 * _MIB) -> None:
        self.in_dim = _check_positive_int("in_dim", in_dim)
        self.dim = _check_positive_int("dim", dim)
        self.seed = _check_seed(seed)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise TarotInputError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        self.cache_bytes = int(cache_bytes)
        self._n_blocks = -(-self.in_dim // COUNTSKETCH_BLOCK)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def cached(self) -> bool:
        """Whether the buckets and signs are small enough to be kept across calls."""
        return self.in_dim * 12 <= self.cache_bytes

    def _hash_block(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets (int64) and signs (float32 ±1) of the coordinates of block ``b``, on CPU."""
        start = b * COUNTSKETCH_BLOCK
        n = min(COUNTSKETCH_BLOCK, self.in_dim - start)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_block_seed(self.seed, _STREAM_COUNT, b))
        buckets = torch.randint(0, self.dim, (n,), generator=gen, dtype=torch.int64)
        signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2.0).sub_(1.0)
        return buckets, signs

    def hashes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All buckets ``h`` (in_dim,) and signs ``s`` (in_dim,), on CPU."""
        parts = [self._hash_block(b) for b in range(self._n_blocks)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], self.dim), dtype=torch.float32, device=x.device)
        if self.cached:
            if self._cache is None or self._cache[0].device != x.device:
                h, s = self.hashes()
                self._cache = (h.to(x.device), s.to(x.device))
            h, s = self._cache
            return out.index_add_(1, h, x * s)
        for b in range(self._n_blocks):
            lo = b * COUNTSKETCH_BLOCK
            h, s = self._hash_block(b)
            hi = lo + h.shape[0]
            out.index_add_(1, h.to(x.device), x[:, lo:hi] * s.to(x.device))
        return out

    def metadata(self) -> dict[str, Any]:
        """Kind, dimensions, seed and hashing scheme (JSON-serialisable)."""
        meta = super().metadata()
        meta.update({"block": COUNTSKETCH_BLOCK, "scheme": "countsketch-blocks-splitmix64-v1"})
        return meta


class IdentityProjector(Projector):
    """No projection: ``P x = x`` (as float32), ``dim = in_dim``."""

    kind = "none"

    def __init__(self, in_dim: int) -> None:
        self.in_dim = _check_positive_int("in_dim", in_dim)
        self.dim = self.in_dim
        self.seed = 0

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x


_KIND_OPTIONS: Final[dict[str, frozenset[str]]] = {
    "rademacher": frozenset({"max_chunk_bytes", "cache_bytes"}),
    "gaussian": frozenset({"max_chunk_bytes", "cache_bytes"}),
    "countsketch": frozenset({"cache_bytes"}),
    "none": frozenset(),
}


def make_projector(kind: str, in_dim: int, dim: int | None, seed: int = 0, **kw: Any) -> Projector:
    """Build a projector by name.

    Parameters
    ----------
    kind : {"rademacher", "gaussian", "countsketch", "none"}
    in_dim : int
        Input dimension (> 0).
    dim : int or None
        Output dimension (> 0). For ``kind="none"`` it may be ``None`` or must equal ``in_dim``.
    seed : int, default 0
    **kw
        Kind-specific options: ``max_chunk_bytes`` and ``cache_bytes`` for the dense kinds,
        ``cache_bytes`` for ``countsketch``.

    Raises
    ------
    TarotInputError
        Unknown kind, non-positive dimensions, or options the kind does not take.
    """
    if kind not in _KIND_OPTIONS:
        raise TarotInputError(f"unknown projector kind {kind!r}; allowed: {', '.join(PROJECTOR_KINDS)}")
    in_dim = _check_positive_int("in_dim", in_dim)
    unknown = sorted(set(kw) - _KIND_OPTIONS[kind])
    if unknown:
        allowed = ", ".join(sorted(_KIND_OPTIONS[kind])) or "none"
        raise TarotInputError(f"projector kind {kind!r} does not take {unknown}; options: {allowed}")
    if kind == "none":
        if dim is not None and dim != in_dim:
            raise TarotInputError(f"projector kind 'none' keeps all {in_dim} dimensions; got dim={dim!r} (pass None)")
        return IdentityProjector(in_dim)
    if dim is None:
        raise TarotInputError(f"projector kind {kind!r} needs an output dimension (dim), got None")
    dim = _check_positive_int("dim", dim)
    if dim > in_dim:
        logger.warning("projection dimension %d exceeds input dimension %d", dim, in_dim)
    if kind == "countsketch":
        return CountSketchProjector(in_dim, dim, seed=seed, **kw)
    return DenseProjector(in_dim, dim, seed=seed, kind=kind, **kw)
