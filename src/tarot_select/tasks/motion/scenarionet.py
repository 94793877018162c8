"""Reading and writing ScenarioNet-format folders (the converted form of WOMD, AV2, nuPlan, nuScenes).

Layout (as written by ScenarioNet's converters and read by UniTraj)
-------------------------------------------------------------------
::

    <root>/dataset_summary.pkl     {scenario file name: summary dict (the scenario's metadata)}
    <root>/dataset_mapping.pkl     {scenario file name: folder holding it, relative to <root>}
    <root>/<root name>_0/sd_<dataset>_<version>_<id>.pkl ...   one pickle per scenario
    <root>/<root name>_0/dataset_summary.pkl, dataset_mapping.pkl   (each worker's own copies)
    <root>/<root name>_1/...

A scenario's file is ``<root>/<mapping[name]>/<name>``; the mapping's value is ``""`` when the
file sits beside the summary, and may climb out of ``<root>`` (``../other``) in a database that
ScenarioNet merged from folders elsewhere. An empty mapping means every file sits at the top
(as MetaDrive reads it). Summaries hold arrays as lists, sets as tuples and
``collections.defaultdict(int)`` counters.

A scenario pickle is a dict (MetaDrive's ``ScenarioDescription``)::

    id, version, length (T), metadata, tracks, dynamic_map_states, map_features
    metadata:  ts (T,) seconds, sdc_id, dataset, scenario_id, coordinate, metadrive_processed,
               optional current_time_index, sdc_track_index, sample_rate,
               tracks_to_predict {track id: {track_index, track_id, difficulty, object_type}},
               object_summary, number_summary
    tracks:    {track id (str): {type: VEHICLE|PEDESTRIAN|CYCLIST|OTHER|TRAFFIC_CONE|...,
               state: {position (T,3), heading (T,), velocity (T,2), valid (T,) bool or 0./1.,
               length/width/height (T,) or (T,1)}, metadata: {type, object_id, track_length, ...}}}
    map_features: {feature id: {type: LANE_SURFACE_STREET|ROAD_LINE_*|ROAD_EDGE_*|CROSSWALK|...,
               polyline (N,2|3) and/or polygon (N,2|3); stop signs only a position}}

(learnt from metadrive ``scenario/scenario_description.py`` and ``scenario/utils.py``,
scenarionet ``converter/utils.py``, ``builder/utils.py`` and the WOMD, AV2 and nuScenes
converters, and UniTraj ``datasets/base_dataset.py``; no code taken from them.)

Safety
------
Every pickle is read through :func:`tarot_select.tasks._safe_pickle.safe_load` with
:data:`SCENARIONET_GLOBALS`: numpy arrays, dtypes and scalars (numpy 1 and 2 module paths),
``set``/``frozenset`` and ``collections.defaultdict`` with ``int``. Any other global (a
crafted ``os.system`` reduce, a class) is refused with a
:class:`~tarot_select.errors.TarotInputError` before anything it names is called.

API
---
:func:`list_scenarios` reads only the summary and the mapping (cheap: the settings check
calls it in the Snakemake process). :func:`read_scenario` reads one pickle into a
:class:`Scenario` of plain numpy arrays, checked (missing keys, wrong shapes, no valid track
raise ``TarotInputError`` naming the file). :func:`write_scenarionet` writes scenarios as
the converters do (per-worker sub-folders, each file atomically), readable by this module
and by ScenarioNet / UniTraj.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ...errors import TarotInputError
from ...io import atomic_path, is_file
from .._safe_pickle import NUMPY_ARRAY_GLOBALS, safe_load

__all__ = [
    "DEFAULT_DT",
    "MAPPING_FILE",
    "SCENARIONET_GLOBALS",
    "SUMMARY_FILE",
    "MapFeature",
    "Scenario",
    "ScenarioEntry",
    "Track",
    "WriteOptions",
    "iter_scenarios",
    "list_scenarios",
    "parse_scenario",
    "read_scenario",
    "scenario_file_name",
    "scenario_to_dict",
    "write_scenarionet",
]

logger = logging.getLogger(__name__)

SUMMARY_FILE: Final[str] = "dataset_summary.pkl"
MAPPING_FILE: Final[str] = "dataset_mapping.pkl"
#: Step of ScenarioNet data when a scenario says nothing about time (seconds).
DEFAULT_DT: Final[float] = 0.1

#: The globals a ScenarioNet pickle may name: numpy arrays/dtypes/scalars, set/frozenset,
#: and ``defaultdict(int)`` (summaries count objects per type in one).
SCENARIONET_GLOBALS: Final[frozenset[tuple[str, str]]] = NUMPY_ARRAY_GLOBALS | frozenset(
    {("collections", "defaultdict"), ("builtins", "int")}
)

_MAX_NAMED: Final[int] = 3


# --------------------------------------------------------------------------- typed structure


@dataclass(frozen=True, eq=False)
class Track:
    """One road user over the scenario's ``T`` steps (world frame, float64).

    Attributes
    ----------
    track_id : str
    object_type : str
        ScenarioNet type (``VEHICLE``, ``PEDESTRIAN``, ``CYCLIST``, ``OTHER``, ...).
    position : (T, 3) float64
        x, y, z (z is 0 where the file has 2-D positions).
    heading : (T,) float64
        Radians, counter-clockwise from +x.
    velocity : (T, 2) float64
        m/s in the world frame.
    valid : (T,) bool
    size : (T, 3) float64
        length, width, height (0 where the file has none).
    """

    track_id: str
    object_type: str
    position: np.ndarray
    heading: np.ndarray
    velocity: np.ndarray
    valid: np.ndarray
    size: np.ndarray

    def __post_init__(self) -> None:
        t = len(self.valid)
        for name, shape in (
            ("position", (t, 3)),
            ("heading", (t,)),
            ("velocity", (t, 2)),
            ("valid", (t,)),
            ("size", (t, 3)),
        ):
            arr = np.asarray(getattr(self, name), dtype=bool if name == "valid" else np.float64)
            if arr.shape != shape:
                raise TarotInputError(f"track {self.track_id}: {name} has shape {arr.shape}, expected {shape}")
            object.__setattr__(self, name, arr)


@dataclass(frozen=True, eq=False)
class MapFeature:
    """One static map element: a line (``polyline``) and/or an area outline (``polygon``), world frame.

    Attributes
    ----------
    feature_id : str
    feature_type : str
        ScenarioNet type (``LANE_SURFACE_STREET``, ``ROAD_LINE_SOLID_SINGLE_WHITE``,
        ``ROAD_EDGE_BOUNDARY``, ``CROSSWALK``, ...).
    polyline, polygon : (N, 3) float64 or None
        Points (z = 0 where the file has 2-D points).
    """

    feature_id: str
    feature_type: str
    polyline: np.ndarray | None = None
    polygon: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Scenario:
    """One scenario, read from (or to be written to) a ScenarioNet pickle.

    Attributes
    ----------
    scenario_id, dataset, version : str
    timestamps : (T,) float64
        Seconds (``metadata["ts"]``).
    tracks : mapping str -> Track
    map_features : mapping str -> MapFeature
    sdc_id : str or None
        The recording vehicle's track id.
    tracks_to_predict : tuple of str
        Track ids the dataset marks for prediction (empty when it has none).
    current_time_index : int or None
        The dataset's "current" step, when it names one.
    coordinate : str
        The coordinate convention the converter recorded (``waymo``, ``right-handed``, ...).
    path : Path or None
        The file it was read from.
    """

    scenario_id: str
    dataset: str
    version: str
    timestamps: np.ndarray
    tracks: Mapping[str, Track]
    map_features: Mapping[str, MapFeature]
    sdc_id: str | None = None
    tracks_to_predict: tuple[str, ...] = ()
    current_time_index: int | None = None
    coordinate: str = "waymo"
    path: Path | None = None
    extra_metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """``T``, the number of steps."""
        return len(self.timestamps)

    @property
    def dt(self) -> float:
        """The time step (seconds): the median difference of ``timestamps``, :data:`DEFAULT_DT` for one step."""
        if self.length < 2:
            return DEFAULT_DT
        return float(np.median(np.diff(self.timestamps)))


@dataclass(frozen=True)
class ScenarioEntry:
    """A scenario listed in a summary: its file name, where the file is, and its summary dict."""

    name: str
    path: Path
    summary: Mapping[str, Any]


# --------------------------------------------------------------------------- reading


def _load_pickle(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return safe_load(fh, SCENARIONET_GLOBALS, origin=str(path))
    except OSError as exc:
        raise TarotInputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def _shown(names: Sequence[str]) -> str:
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return ", ".join(names[:_MAX_NAMED]) + more


def list_scenarios(folder: str | os.PathLike[str], check_files: bool = True) -> list[ScenarioEntry]:
    """The scenarios of a ScenarioNet folder, from its summary and mapping only.

    Parameters
    ----------
    folder : path
        The dataset root (the folder holding ``dataset_summary.pkl``).
    check_files : bool, default True
        Check that every mapped scenario file exists (one ``stat`` each).

    Returns
    -------
    list of ScenarioEntry
        In the summary's order.

    Raises
    ------
    TarotInputError
        Naming the path: the folder, the summary or the mapping is missing or not a
        readable (safe) pickle of a dict; a summary name is not a ``.pkl`` file name, has no
        mapping entry or maps to an absolute path; a mapped file is absent.
    """
    root = Path(folder)
    if not root.is_dir():
        raise TarotInputError(f"{root}: ScenarioNet folder not found")
    files = {}
    for fname, what in ((SUMMARY_FILE, "summary"), (MAPPING_FILE, "mapping")):
        p = root / fname
        if not is_file(p, f"ScenarioNet {what}"):
            raise TarotInputError(f"{p}: ScenarioNet {what} file not found (is {root} a converted ScenarioNet folder?)")
        obj = _load_pickle(p, what)
        if not isinstance(obj, dict):
            raise TarotInputError(f"{p}: holds a {type(obj).__name__}, not a dict of scenario file names")
        files[what] = obj
    summary, mapping = files["summary"], files["mapping"]
    if not mapping:
        mapping = {k: "" for k in summary}
    entries = []
    missing: list[str] = []
    for name, info in summary.items():
        if not isinstance(name, str) or not name.endswith(".pkl") or "/" in name or "\\" in name or name in ("..", "."):
            raise TarotInputError(f"{root / SUMMARY_FILE}: {name!r} is not a scenario file name (sd_*.pkl)")
        if name not in mapping:
            raise TarotInputError(f"{root / MAPPING_FILE}: no entry for the scenario {name} of the summary")
        rel = mapping[name]
        if not isinstance(rel, str) or os.path.isabs(rel):
            raise TarotInputError(
                f"{root / MAPPING_FILE}: the folder of {name} is {rel!r}; expected a path relative to {root}"
            )
        path = root / rel / name
        if check_files and not is_file(path, "scenario file"):
            missing.append(str(path))
        entries.append(ScenarioEntry(name=name, path=path, summary=info if isinstance(info, dict) else {}))
    if missing:
        raise TarotInputError(f"{root}: {len(missing)} scenario file(s) of the summary are missing: {_shown(missing)}")
    return entries


def _array(value: Any, where: str, name: str, dtype: Any = np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TarotInputError(f"{where}: {name} is not numeric ({str(exc)[:80]})") from None
    return arr


def _per_step(value: Any, t: int, where: str, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A ``(T,)`` array from a ``(T,)`` or ``(T, 1)`` value."""
    arr = _array(value, where, name, dtype)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (t,):
        raise TarotInputError(f"{where}: {name} has shape {arr.shape}, expected ({t},) or ({t}, 1)")
    return arr


def _points(value: Any, where: str, name: str) -> np.ndarray:
    """``(N, 3)`` from ``(N, 2)`` or ``(N, 3)`` (or more columns: the first three)."""
    arr = _array(value, where, name)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise TarotInputError(f"{where}: {name} has shape {arr.shape}, expected (N, 2) or (N, 3)")
    out = np.zeros((arr.shape[0], 3))
    k = min(3, arr.shape[1])
    out[:, :k] = arr[:, :k]
    return out


def _velocity_from_positions(pos: np.ndarray, valid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``(T, 2)`` finite differences: forward where the next step is valid, else backward, else 0."""
    vel = np.zeros((len(ts), 2))
    if len(ts) < 2:
        return vel
    step = np.diff(pos[:, :2], axis=0) / np.diff(ts)[:, None]  # (T-1, 2): from t to t+1
    pair = valid[:-1] & valid[1:]
    fwd = np.zeros(len(ts), bool)
    fwd[:-1] = pair
    bwd = np.zeros(len(ts), bool)
    bwd[1:] = pair
    vel[:-1][pair] = step[pair]
    only_back = bwd & ~fwd
    vel[only_back] = step[only_back[1:]]
    return vel


def _parse_track(tid: str, raw: Any, t: int, ts: np.ndarray, where: str) -> Track:
    w = f"{where}: track {tid}"
    if not isinstance(raw, dict) or not isinstance(raw.get("state"), dict):
        raise TarotInputError(f"{w}: not a dict with a 'state' dict")
    state = raw["state"]
    for key in ("position", "heading", "valid"):
        if key not in state:
            raise TarotInputError(f"{w}: state has no {key!r}")
    valid = _per_step(state["valid"], t, w, "valid", np.float64) != 0
    pos = _points(state["position"], w, "position")
    if pos.shape[0] != t:
        raise TarotInputError(f"{w}: position has {pos.shape[0]} steps, the scenario {t}")
    heading = _per_step(state["heading"], t, w, "heading")
    if "velocity" in state:
        vel = _array(state["velocity"], w, "velocity")
        if vel.shape != (t, 2):
            raise TarotInputError(f"{w}: velocity has shape {vel.shape}, expected ({t}, 2)")
    else:  # not in every converter's output: finite differences of valid neighbours
        vel = _velocity_from_positions(pos, valid & np.isfinite(pos).all(1), ts)
    size = np.zeros((t, 3))
    for j, key in enumerate(("length", "width", "height")):
        if key in state:
            size[:, j] = _per_step(state[key], t, w, key)
    good = np.isfinite(pos).all(1) & np.isfinite(heading) & np.isfinite(vel).all(1)
    if np.any(valid & ~good):
        logger.warning(
            "%s: %d valid step(s) hold non-finite values; they are treated as invalid", w, int(np.sum(valid & ~good))
        )
        valid = valid & good
    # invalid steps are zero-filled so that nothing downstream reads stale values
    pos[~valid] = 0.0
    heading = np.where(valid, heading, 0.0)
    vel[~valid] = 0.0
    size[~valid] = 0.0
    otype = raw.get("type")
    return Track(
        track_id=tid,
        object_type=str(otype) if otype is not None else "UNSET",
        position=pos,
        heading=heading,
        velocity=vel,
        valid=valid,
        size=np.nan_to_num(size),
    )


def _timestamps(meta: Mapping[str, Any], t: int, where: str) -> np.ndarray:
    for key in ("ts", "timestep", "timestamps_seconds"):
        if key in meta and meta[key] is not None:
            ts = _array(meta[key], where, f"metadata[{key!r}]").reshape(-1)
            if len(ts) > 1 and not (np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0)):
                raise TarotInputError(f"{where}: metadata[{key!r}] is not strictly increasing")
            if len(ts) == t:
                return ts
            if len(ts) < 2:
                raise TarotInputError(f"{where}: metadata[{key!r}] has {len(ts)} steps, the scenario {t}")
            # a float ``arange`` in a converter can give one stamp too many or too few: keep the step
            logger.warning("%s: metadata[%r] has %d steps, the scenario %d; using its step", where, key, len(ts), t)
            return ts[0] + np.arange(t, dtype=np.float64) * float(np.median(np.diff(ts)))
    dt = meta.get("sample_rate", DEFAULT_DT)
    if not isinstance(dt, int | float) or not math.isfinite(dt) or dt <= 0:
        raise TarotInputError(f"{where}: metadata['sample_rate'] is {dt!r}, not a positive number of seconds")
    return np.arange(t, dtype=np.float64) * float(dt)


def _parse_map(raw: Any, where: str) -> dict[str, MapFeature]:
    if not isinstance(raw, dict):
        raise TarotInputError(f"{where}: map_features is a {type(raw).__name__}, not a dict")
    out = {}
    for fid, feat in raw.items():
        w = f"{where}: map feature {fid}"
        if not isinstance(feat, dict) or "type" not in feat:
            raise TarotInputError(f"{w}: not a dict with a 'type'")
        line = feat.get("polyline")
        poly = feat.get("polygon")
        line = _points(line, w, "polyline") if line is not None and len(line) else None
        poly = _points(poly, w, "polygon") if poly is not None and len(poly) else None
        if line is None and poly is None:
            continue  # stop signs (a position), features without geometry
        out[str(fid)] = MapFeature(feature_id=str(fid), feature_type=str(feat["type"]), polyline=line, polygon=poly)
    return out


def _tracks_to_predict(value: Any, tracks: Mapping[str, Track]) -> tuple[str, ...]:
    if value is None:
        return ()
    ids = list(value.keys()) if isinstance(value, dict) else list(value) if isinstance(value, list | tuple) else []
    return tuple(str(i) for i in ids if str(i) in tracks)


_KEPT_METADATA: Final[frozenset[str]] = frozenset(
    {
        "ts",
        "timestep",
        "timestamps_seconds",
        "sdc_id",
        "dataset",
        "scenario_id",
        "id",
        "coordinate",
        "tracks_to_predict",
        "current_time_index",
        "object_summary",
        "number_summary",
    }
)


def parse_scenario(raw: Any, where: str = "<scenario>") -> Scenario:
    """Check a scenario dict (as unpickled) and convert it to a :class:`Scenario`.

    Raises
    ------
    TarotInputError
        Naming ``where``: not a dict, a missing key (``length``, ``metadata``, ``tracks``,
        ``map_features``), arrays of the wrong shape, or no track with a valid step.
    """
    if not isinstance(raw, dict):
        raise TarotInputError(f"{where}: holds a {type(raw).__name__}, not a scenario dict")
    missing = [k for k in ("length", "metadata", "tracks", "map_features") if k not in raw]
    if missing:
        raise TarotInputError(f"{where}: not a ScenarioNet scenario (no {', '.join(missing)})")
    t = raw["length"]
    if isinstance(t, np.integer):
        t = int(t)
    if not isinstance(t, int) or isinstance(t, bool) or t < 1:
        raise TarotInputError(f"{where}: length is {t!r}, not a positive number of steps")
    meta = raw["metadata"]
    if not isinstance(meta, dict):
        raise TarotInputError(f"{where}: metadata is a {type(meta).__name__}, not a dict")
    if not isinstance(raw["tracks"], dict):
        raise TarotInputError(f"{where}: tracks is a {type(raw['tracks']).__name__}, not a dict")
    ts = _timestamps(meta, t, where)
    tracks = {str(k): _parse_track(str(k), v, t, ts, where) for k, v in raw["tracks"].items()}
    if not any(tr.valid.any() for tr in tracks.values()):
        raise TarotInputError(f"{where}: no track has a valid step ({len(tracks)} track(s)); the scenario is empty")
    cur = meta.get("current_time_index")
    cur = int(cur) if isinstance(cur, int | np.integer) and not isinstance(cur, bool) and 0 <= cur < t else None
    sdc = meta.get("sdc_id")
    sid = raw.get("id", meta.get("scenario_id", meta.get("id", Path(where).stem)))
    return Scenario(
        scenario_id=str(sid),
        dataset=str(meta.get("dataset", "")),
        version=str(raw.get("version", "")),
        timestamps=ts,
        tracks=tracks,
        map_features=_parse_map(raw["map_features"], where),
        sdc_id=None if sdc is None else str(sdc),
        tracks_to_predict=_tracks_to_predict(meta.get("tracks_to_predict"), tracks),
        current_time_index=cur,
        coordinate=str(meta.get("coordinate", "")),
        extra_metadata={k: v for k, v in meta.items() if k not in _KEPT_METADATA and isinstance(k, str)},
    )


def read_scenario(path: str | os.PathLike[str] | ScenarioEntry) -> Scenario:
    """Read one scenario pickle (through the restricted unpickler) into a :class:`Scenario`.

    Raises
    ------
    TarotInputError
        Naming the file: missing, not a safe readable pickle (a global outside
        :data:`SCENARIONET_GLOBALS`), or a malformed scenario (see :func:`parse_scenario`).
    """
    p = path.path if isinstance(path, ScenarioEntry) else Path(path)
    if not is_file(p, "scenario file"):
        raise TarotInputError(f"{p}: scenario file not found")
    raw = _load_pickle(p, "scenario")
    return dataclasses.replace(parse_scenario(raw, str(p)), path=p)


def iter_scenarios(folder: str | os.PathLike[str]) -> Iterator[Scenario]:
    """Every scenario of a folder, read in the summary's order."""
    for entry in list_scenarios(folder):
        yield read_scenario(entry)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class WriteOptions:
    """How :func:`write_scenarionet` lays out arrays (converters differ; the reader accepts all).

    Attributes
    ----------
    float_dtype : numpy dtype, default float32
        Of positions, headings, velocities, sizes and map points.
    size_as_column : bool, default False
        ``length``/``width``/``height`` as ``(T, 1)`` (nuScenes converter) instead of ``(T,)`` (WOMD).
    valid_as_float : bool, default False
        ``valid`` as 0./1. floats (nuScenes converter) instead of bool.
    map_dims : int, default 3
        2 or 3 columns in map points.
    """

    float_dtype: Any = np.float32
    size_as_column: bool = False
    valid_as_float: bool = False
    map_dims: int = 3


def scenario_file_name(dataset: str, version: str, scenario_id: str) -> str:
    """``sd_<dataset>_<version>_<id>.pkl``, the converters' file name of a scenario."""
    return f"sd_{dataset}_{version}_{scenario_id}.pkl"


def _object_summary(tr: Track) -> dict[str, Any]:
    pts = tr.position[tr.valid, :2]
    dist = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()) if len(pts) > 1 else 0.0
    first = int(np.argmax(tr.valid)) if tr.valid.any() else 0
    run = 0
    for v in tr.valid[first:]:
        if not v:
            break
        run += 1
    return {
        "type": tr.object_type,
        "object_id": tr.track_id,
        "track_length": len(tr.valid),
        "moving_distance": dist,
        "valid_length": int(tr.valid.sum()),
        "continuous_valid_length": run,
    }


def _number_summary(sc: Scenario, objects: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per_type: dict[str, int] = {}
    for tr in sc.tracks.values():
        per_type[tr.object_type] = per_type.get(tr.object_type, 0) + 1
    moving: defaultdict[str, int] = defaultdict(int)
    for info in objects.values():
        if info["moving_distance"] > 1:
            moving[info["type"]] += 1
    return {
        "num_objects": len(sc.tracks),
        "object_types": {tr.object_type for tr in sc.tracks.values()},
        "num_objects_each_type": per_type,
        "num_moving_objects": int(sum(moving.values())),
        "num_moving_objects_each_type": moving,
        "num_traffic_lights": 0,
        "num_traffic_light_types": set(),
        "num_traffic_light_each_step": {},
        "num_map_features": len(sc.map_features),
    }


def scenario_to_dict(sc: Scenario, options: WriteOptions = WriteOptions()) -> dict[str, Any]:
    """The ScenarioNet dict of a scenario (what a converter pickles), with its summaries in ``metadata``."""
    fd = np.dtype(options.float_dtype)
    t = sc.length
    tracks = {}
    for tid, tr in sc.tracks.items():
        state: dict[str, np.ndarray] = {
            "position": tr.position.astype(fd),
            "heading": tr.heading.astype(fd),
            "velocity": tr.velocity.astype(fd),
            "valid": tr.valid.astype(fd) if options.valid_as_float else tr.valid.copy(),
        }
        for j, key in enumerate(("length", "width", "height")):
            col = tr.size[:, j].astype(fd)
            state[key] = col[:, None] if options.size_as_column else col
        tracks[str(tid)] = {
            "type": tr.object_type,
            "state": state,
            "metadata": {
                "type": tr.object_type,
                "object_id": str(tid),
                "track_length": t,
                "dataset": sc.dataset,
            },
        }
    feats = {}
    dims = 2 if options.map_dims == 2 else 3
    for fid, f in sc.map_features.items():
        d: dict[str, Any] = {"type": f.feature_type}
        if f.polyline is not None:
            d["polyline"] = f.polyline[:, :dims].astype(fd)
        if f.polygon is not None:
            d["polygon"] = f.polygon[:, :dims].astype(fd)
        feats[str(fid)] = d
    objects = {tid: _object_summary(tr) for tid, tr in sc.tracks.items()}
    meta: dict[str, Any] = {
        "id": sc.scenario_id,
        "scenario_id": sc.scenario_id,
        "dataset": sc.dataset,
        "coordinate": sc.coordinate,
        "metadrive_processed": False,
        "ts": np.asarray(sc.timestamps, dtype=np.float64),
        "track_length": t,
    }
    if sc.sdc_id is not None:
        meta["sdc_id"] = sc.sdc_id
    if sc.current_time_index is not None:
        meta["current_time_index"] = int(sc.current_time_index)
    if sc.tracks_to_predict:
        order = list(sc.tracks)
        meta["tracks_to_predict"] = {
            tid: {
                "track_index": order.index(tid),
                "track_id": tid,
                "difficulty": 0,
                "object_type": sc.tracks[tid].object_type,
            }
            for tid in sc.tracks_to_predict
        }
    meta.update({k: v for k, v in sc.extra_metadata.items() if k not in meta})
    meta["object_summary"] = objects
    meta["number_summary"] = _number_summary(sc, objects)
    return {
        "id": sc.scenario_id,
        "version": sc.version,
        "length": t,
        "metadata": meta,
        "tracks": tracks,
        "dynamic_map_states": {},
        "map_features": feats,
    }


def _summary_value(v: Any) -> Any:
    """A summary copy of metadata: arrays become lists and sets tuples (the converters' convention)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, set | frozenset):
        return tuple(sorted(v, key=str))
    if isinstance(v, defaultdict):
        out = defaultdict(v.default_factory)
        out.update({k: _summary_value(x) for k, x in v.items()})
        return out
    if isinstance(v, dict):
        return {k: _summary_value(x) for k, x in v.items()}
    return v


def _dump(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def write_scenarionet(
    folder: str | os.PathLike[str],
    scenarios: Sequence[Scenario],
    *,
    dataset: str | None = None,
    version: str | None = None,
    workers: int | None = 1,
    options: WriteOptions = WriteOptions(),
    overwrite: bool = False,
) -> list[Path]:
    """Write scenarios as a ScenarioNet folder (as the converters lay it out).

    Parameters
    ----------
    folder : path
        The dataset root; created. Refused if it already holds a summary, unless ``overwrite``.
    scenarios : sequence of Scenario
        Scenario ids must be unique.
    dataset, version : str, optional
        The ``<dataset>`` and ``<version>`` of the file names ``sd_<dataset>_<version>_<id>.pkl``
        (default: each scenario's own).
    workers : int or None, default 1
        ``k``: split the scenarios into ``k`` contiguous parts written to sub-folders
        ``<root name>_<i>/`` with their own summary and mapping, as the converters'
        workers do; ``None``: every file at the top (mapping ``""``).
    options : WriteOptions
        Array layout.
    overwrite : bool, default False

    Returns
    -------
    list of Path
        The scenario files written, in order.
    """
    root = Path(folder)
    if (root / SUMMARY_FILE).exists() and not overwrite:
        raise TarotInputError(f"{root}: already holds a ScenarioNet dataset ({SUMMARY_FILE}); pass overwrite=True")
    ids = [sc.scenario_id for sc in scenarios]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise TarotInputError(f"write_scenarionet: duplicate scenario ids {_shown(dup)}")
    if workers is not None and workers < 1:
        raise TarotInputError(f"write_scenarionet: workers must be >= 1 or None, got {workers}")
    root.mkdir(parents=True, exist_ok=True)
    (root / SUMMARY_FILE).unlink(missing_ok=True)  # overwriting: the folder is incomplete until the new summary
    n = len(scenarios)
    parts: list[tuple[str, Sequence[Scenario]]]
    if workers is None:
        parts = [("", scenarios)]
    else:
        k = max(1, min(workers, n))
        each = n // k
        parts = [(f"{root.name}_{i}", scenarios[i * each : (n if i == k - 1 else (i + 1) * each)]) for i in range(k)]
    summary: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    written: list[Path] = []
    for sub, group in parts:
        where = root / sub if sub else root
        where.mkdir(parents=True, exist_ok=True)
        sub_summary: dict[str, Any] = {}
        for sc in group:
            name = scenario_file_name(dataset or sc.dataset, version or sc.version, sc.scenario_id)
            d = scenario_to_dict(sc, options)
            _dump(where / name, d)
            written.append(where / name)
            sub_summary[name] = _summary_value(d["metadata"])
            mapping[name] = sub
        if sub:
            _dump(where / SUMMARY_FILE, sub_summary)
            _dump(where / MAPPING_FILE, {name: "" for name in sub_summary})
        summary.update(sub_summary)
    _dump(root / MAPPING_FILE, mapping)
    _dump(root / SUMMARY_FILE, summary)  # last: a folder with a summary is complete
    logger.info("wrote %d scenarios to %s", n, root)
    return written
