"""The agent-centric sample format of the motion task, and its folder on disk.

One sample is one focal agent at one *current* step of one scenario, everything expressed in
the focal agent's frame at that step: origin at its position, ``x`` axis along its heading
(see :mod:`.agent_centric` for the transform). Sizes are parameters of the cutting:

``A``  agents (the focal agent at index 0, then the ``A - 1`` nearest others at the current step)
``Th`` history steps, the current step last (paper: 21 = 2.1 s at 10 Hz)
``Tf`` future steps after the current one (paper: 60 = 6 s)
``M``  map polylines (the nearest ``M`` pieces), ``P`` points each

Arrays of ``N`` samples (float32 unless said; padding rows and steps are zero and masked out):

=============== ================= =========================================================
``agents``      ``(N, A, Th, 9)`` x, y, vx, vy, cos(heading), sin(heading), is_vehicle,
                                  is_pedestrian, is_cyclist (:data:`AGENT_FEATURES`)
``agents_mask`` ``(N, A, Th)``    bool, valid steps
``map``         ``(N, M, P, 8)``  x, y, dx, dy (unit direction to the next point, the last
                                  point repeats the previous direction), is_lane,
                                  is_road_line, is_road_edge, is_crosswalk (:data:`MAP_FEATURES`)
``map_mask``    ``(N, M, P)``     bool, real points
``future``      ``(N, Tf, 2)``    the focal agent's future x, y
``future_mask`` ``(N, Tf)``       bool, valid future steps
``source``      ``(N,)``          str, the source (dataset) a sample comes from
``scenario_id`` ``(N,)``          str
``track_id``    ``(N,)``          str, the focal agent's track id
=============== ================= =========================================================

On disk (:meth:`MotionSamples.save`, :meth:`MotionSamples.load`) a samples folder holds one
``<name>.npy`` per array (string arrays as fixed-width unicode, never pickled objects) and
``manifest.json``, written last, that records the format version, the sizes, the feature
names, every array's shape and dtype and an integrity record (size and checksum, see
:func:`tarot_select.io.integrity_of`). Every file is written atomically; loading memory-maps
the arrays (``mmap_mode="r"``) and raises :class:`~tarot_select.errors.TarotInputError`
naming the file when one is missing, truncated, changed or of the wrong shape.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ...errors import TarotInputError
from ...io import atomic_path, integrity_of, is_file, load_npy, write_json_atomic

__all__ = [
    "AGENT_COS",
    "AGENT_FEATURES",
    "AGENT_IS_CYCLIST",
    "AGENT_IS_PEDESTRIAN",
    "AGENT_IS_VEHICLE",
    "AGENT_SIN",
    "AGENT_TYPE_COLUMNS",
    "AGENT_VX",
    "AGENT_VY",
    "AGENT_X",
    "AGENT_Y",
    "ARRAY_NAMES",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MAP_DX",
    "MAP_DY",
    "MAP_FEATURES",
    "MAP_IS_CROSSWALK",
    "MAP_IS_LANE",
    "MAP_IS_ROAD_EDGE",
    "MAP_IS_ROAD_LINE",
    "MAP_TYPES",
    "MAP_TYPE_COLUMNS",
    "MAP_X",
    "MAP_Y",
    "OBJECT_TYPES",
    "STRING_NAMES",
    "MotionSamples",
]

logger = logging.getLogger(__name__)

#: Feature columns of ``agents`` (last axis).
AGENT_FEATURES: Final[tuple[str, ...]] = (
    "x",
    "y",
    "vx",
    "vy",
    "cos_heading",
    "sin_heading",
    "is_vehicle",
    "is_pedestrian",
    "is_cyclist",
)
AGENT_X, AGENT_Y, AGENT_VX, AGENT_VY, AGENT_COS, AGENT_SIN, AGENT_IS_VEHICLE, AGENT_IS_PEDESTRIAN, AGENT_IS_CYCLIST = (
    range(len(AGENT_FEATURES))
)

#: Object types with a one-hot column (ScenarioNet / MetaDrive type names); other types get zeros.
OBJECT_TYPES: Final[tuple[str, ...]] = ("VEHICLE", "PEDESTRIAN", "CYCLIST")
#: Column of each object type's one-hot flag in ``agents``.
AGENT_TYPE_COLUMNS: Final[dict[str, int]] = {
    "VEHICLE": AGENT_IS_VEHICLE,
    "PEDESTRIAN": AGENT_IS_PEDESTRIAN,
    "CYCLIST": AGENT_IS_CYCLIST,
}

#: Feature columns of ``map`` (last axis).
MAP_FEATURES: Final[tuple[str, ...]] = (
    "x",
    "y",
    "dx",
    "dy",
    "is_lane",
    "is_road_line",
    "is_road_edge",
    "is_crosswalk",
)
MAP_X, MAP_Y, MAP_DX, MAP_DY, MAP_IS_LANE, MAP_IS_ROAD_LINE, MAP_IS_ROAD_EDGE, MAP_IS_CROSSWALK = range(
    len(MAP_FEATURES)
)

#: The four map classes kept (see :func:`.agent_centric.map_class` for the ScenarioNet types of each).
MAP_TYPES: Final[tuple[str, ...]] = ("lane", "road_line", "road_edge", "crosswalk")
#: Column of each map class's one-hot flag in ``map``.
MAP_TYPE_COLUMNS: Final[dict[str, int]] = {
    "lane": MAP_IS_LANE,
    "road_line": MAP_IS_ROAD_LINE,
    "road_edge": MAP_IS_ROAD_EDGE,
    "crosswalk": MAP_IS_CROSSWALK,
}

#: Numeric arrays of a sample set, in file order.
ARRAY_NAMES: Final[tuple[str, ...]] = ("agents", "agents_mask", "map", "map_mask", "future", "future_mask")
#: Per-sample string arrays.
STRING_NAMES: Final[tuple[str, ...]] = ("source", "scenario_id", "track_id")

#: The manifest of a samples folder, and what it says it is.
MANIFEST: Final[str] = "manifest.json"
FORMAT: Final[str] = "tarot-motion-samples"
FORMAT_VERSION: Final[int] = 1

_FLOAT_NAMES: Final[frozenset[str]] = frozenset({"agents", "map", "future"})


def _as_strings(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, str(arr))
    if arr.shape != (n,):
        raise TarotInputError(f"MotionSamples: {name} has shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind != "U":
        arr = arr.astype(str)
    if arr.dtype.itemsize == 0:  # every string empty: numpy makes <U0, which cannot be saved sensibly
        arr = arr.astype("<U1")
    return arr


@dataclass(frozen=True, eq=False)
class MotionSamples:
    """``N`` agent-centric samples (see the module docstring for every array's shape and columns).

    Construction checks that all shapes agree (``TarotInputError`` otherwise) and converts
    features to float32, masks to bool and ids to unicode arrays; arrays are not copied when
    they already have those dtypes (memory maps stay memory maps).
    """

    agents: np.ndarray
    agents_mask: np.ndarray
    map: np.ndarray
    map_mask: np.ndarray
    future: np.ndarray
    future_mask: np.ndarray
    source: np.ndarray
    scenario_id: np.ndarray
    track_id: np.ndarray
    #: Free-form JSON-serialisable facts recorded in the manifest (e.g. the cutting settings).
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        conv = {}
        for name in ARRAY_NAMES:
            arr = getattr(self, name)
            want = np.float32 if name in _FLOAT_NAMES else np.bool_
            if not isinstance(arr, np.ndarray) or arr.dtype != want:
                arr = np.asarray(arr, dtype=want)
            conv[name] = arr
        a, am, m, mm, f, fm = (conv[k] for k in ARRAY_NAMES)
        if a.ndim != 4 or a.shape[-1] != len(AGENT_FEATURES):
            raise TarotInputError(
                f"MotionSamples: agents has shape {a.shape}, expected (N, A, Th, {len(AGENT_FEATURES)})"
            )
        n, na, th = a.shape[:3]
        if m.ndim != 4 or m.shape[0] != n or m.shape[-1] != len(MAP_FEATURES):
            raise TarotInputError(f"MotionSamples: map has shape {m.shape}, expected ({n}, M, P, {len(MAP_FEATURES)})")
        if f.ndim != 3 or f.shape[0] != n or f.shape[-1] != 2:
            raise TarotInputError(f"MotionSamples: future has shape {f.shape}, expected ({n}, Tf, 2)")
        for name, arr, want in (
            ("agents_mask", am, a.shape[:3]),
            ("map_mask", mm, m.shape[:3]),
            ("future_mask", fm, f.shape[:2]),
        ):
            if arr.shape != want:
                raise TarotInputError(f"MotionSamples: {name} has shape {arr.shape}, expected {want}")
        if na < 1 or th < 1 or f.shape[1] < 1:
            raise TarotInputError(f"MotionSamples: need at least one agent, history and future step, got {a.shape}")
        for name in STRING_NAMES:
            conv[name] = _as_strings(getattr(self, name), n, name)
        for name, arr in conv.items():
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "meta", dict(self.meta))

    # ------------------------------------------------------------------ sizes

    def __len__(self) -> int:
        return int(self.agents.shape[0])

    @property
    def num_agents(self) -> int:
        """``A``."""
        return int(self.agents.shape[1])

    @property
    def history(self) -> int:
        """``Th``."""
        return int(self.agents.shape[2])

    @property
    def future_steps(self) -> int:
        """``Tf``."""
        return int(self.future.shape[1])

    @property
    def num_polylines(self) -> int:
        """``M``."""
        return int(self.map.shape[1])

    @property
    def points(self) -> int:
        """``P``."""
        return int(self.map.shape[2])

    def sizes(self) -> dict[str, int]:
        """``{"n", "agents", "history", "future", "polylines", "points"}``."""
        return {
            "n": len(self),
            "agents": self.num_agents,
            "history": self.history,
            "future": self.future_steps,
            "polylines": self.num_polylines,
            "points": self.points,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every per-sample array by name (numeric then string arrays)."""
        return {name: getattr(self, name) for name in ARRAY_NAMES + STRING_NAMES}

    # ------------------------------------------------------------------ building

    def subset(self, indices: Sequence[int] | np.ndarray) -> MotionSamples:
        """The samples at ``indices`` (any order, repeats allowed), copied into memory."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise TarotInputError(f"MotionSamples.subset: indices outside [0, {len(self)})")
        return MotionSamples(**{k: np.array(v[idx]) for k, v in self.arrays().items()}, meta=self.meta)

    @staticmethod
    def empty(agents: int, history: int, future: int, polylines: int, points: int) -> MotionSamples:
        """No samples, with the given sizes."""
        return MotionSamples(
            agents=np.zeros((0, agents, history, len(AGENT_FEATURES)), np.float32),
            agents_mask=np.zeros((0, agents, history), bool),
            map=np.zeros((0, polylines, points, len(MAP_FEATURES)), np.float32),
            map_mask=np.zeros((0, polylines, points), bool),
            future=np.zeros((0, future, 2), np.float32),
            future_mask=np.zeros((0, future), bool),
            source=np.zeros(0, "<U1"),
            scenario_id=np.zeros(0, "<U1"),
            track_id=np.zeros(0, "<U1"),
        )

    @staticmethod
    def concatenate(parts: Sequence[MotionSamples], meta: Mapping[str, Any] | None = None) -> MotionSamples:
        """The samples of ``parts`` in order (they must share every size but ``N``).

        ``meta`` defaults to the first part's.
        """
        if not parts:
            raise TarotInputError("MotionSamples.concatenate: no parts")
        ref = parts[0].sizes()
        for i, p in enumerate(parts):
            s = p.sizes()
            if {k: v for k, v in s.items() if k != "n"} != {k: v for k, v in ref.items() if k != "n"}:
                raise TarotInputError(f"MotionSamples.concatenate: part {i} has sizes {s}, part 0 {ref}")
        return MotionSamples(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in ARRAY_NAMES + STRING_NAMES},
            meta=parts[0].meta if meta is None else meta,
        )

    # ------------------------------------------------------------------ disk

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the samples to ``folder`` (created if needed): one ``.npy`` per array, then ``manifest.json``.

        Every file is written to a temporary name and renamed into place; the manifest,
        written last, is what makes the folder complete (a folder without it is refused by
        :meth:`load`). An existing manifest is removed first, so a folder interrupted while
        being rewritten never pairs an old manifest with new arrays.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        records = {}
        for name, arr in self.arrays().items():
            target = out / f"{name}.npy"
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
                integrity = integrity_of(tmp, rows=len(self))
            records[name] = {
                "file": target.name,
                "shape": list(arr.shape),
                "dtype": arr.dtype.str,
                "integrity": integrity,
            }
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "sizes": self.sizes(),
            "agent_features": list(AGENT_FEATURES),
            "map_features": list(MAP_FEATURES),
            "arrays": records,
            "meta": dict(self.meta),
        }
        write_json_atomic(out / MANIFEST, manifest)
        logger.info("wrote %d motion samples to %s", len(self), out)
        return out

    @staticmethod
    def load(folder: str | os.PathLike[str], check: bool = True) -> MotionSamples:
        """Memory-map the samples saved in ``folder`` by :meth:`save`.

        Parameters
        ----------
        folder : path
            The samples folder.
        check : bool, default True
            Verify each file's size and checksum against the manifest (a full sha256 up to
            64 MiB, a sampled one above, see :func:`tarot_select.io.integrity_of`).

        Raises
        ------
        TarotInputError
            Naming the file: the folder or its manifest is missing or unreadable, the
            manifest is of another format or feature layout, an array file is missing,
            truncated, changed since it was written, or not of the recorded shape or dtype.
        """
        base = Path(folder)
        man_path = base / MANIFEST
        if not is_file(man_path, "motion samples manifest"):
            raise TarotInputError(
                f"{man_path}: motion samples manifest not found (the folder is missing or was not written to the end); "
                "rerun the step that cuts the samples"
            )
        try:
            manifest = json.loads(man_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            why = " ".join(str(exc).split())[:120]
            raise TarotInputError(
                f"{man_path}: not readable JSON ({why}); rerun the step that cuts the samples"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise TarotInputError(f"{man_path}: not a motion samples manifest (format is not {FORMAT!r})")
        if manifest.get("version") != FORMAT_VERSION:
            raise TarotInputError(
                f"{man_path}: motion samples format version {manifest.get('version')!r}, this library reads "
                f"{FORMAT_VERSION}; rerun the step that cuts the samples"
            )
        if manifest.get("agent_features") != list(AGENT_FEATURES) or manifest.get("map_features") != list(MAP_FEATURES):
            raise TarotInputError(f"{man_path}: feature columns differ from this library's; rerun the cutting step")
        records = manifest.get("arrays")
        sizes = manifest.get("sizes")
        if not isinstance(records, dict) or not isinstance(sizes, dict) or not isinstance(sizes.get("n"), int):
            raise TarotInputError(f"{man_path}: malformed manifest (no 'arrays' or 'sizes')")
        arrays: dict[str, np.ndarray] = {}
        for name in ARRAY_NAMES + STRING_NAMES:
            rec = records.get(name)
            if not isinstance(rec, dict) or not isinstance(rec.get("shape"), list):
                raise TarotInputError(f"{man_path}: no record of the array {name!r}")
            path = base / f"{name}.npy"
            if not is_file(path, f"motion samples {name}"):
                raise TarotInputError(f"{path}: missing from the motion samples folder {base}; rerun the cutting step")
            if check and isinstance(rec.get("integrity"), dict):
                now = integrity_of(path)
                want = rec["integrity"]
                if now["bytes"] != want.get("bytes") or now["digest"] != want.get("digest"):
                    raise TarotInputError(
                        f"{path}: truncated or changed since it was written ({now['bytes']} bytes, the manifest "
                        f"says {want.get('bytes')}, checksum differs); rerun the cutting step"
                    )
            arr, _ = load_npy(path, mmap=True, what=f"motion samples {name}")
            if list(arr.shape) != rec["shape"] or arr.dtype.str != rec.get("dtype", arr.dtype.str):
                raise TarotInputError(
                    f"{path}: holds {arr.dtype.str} {tuple(arr.shape)}, the manifest says {rec.get('dtype')} "
                    f"{tuple(rec['shape'])}; rerun the cutting step"
                )
            if arr.ndim == 0 or arr.shape[0] != sizes["n"]:
                raise TarotInputError(f"{path}: {arr.shape[0] if arr.ndim else 0} rows, the manifest says {sizes['n']}")
            arrays[name] = arr
        try:
            return MotionSamples(**arrays, meta=manifest.get("meta") or {})
        except TarotInputError as exc:
            raise TarotInputError(f"{base}: {exc}") from None
