"""Cutting ScenarioNet scenarios into agent-centric samples (:class:`~.sample.MotionSamples`).

Steps, for one scenario (:func:`cut_scenario`):

1. **Resampling** to the sample rate ``dt`` (default 0.1 s = 10 Hz) when the scenario's own
   step differs (:func:`resample_scenario`; nuScenes is annotated at 2 Hz, nuPlan logged at
   20 Hz). New times are ``t'_k = t_0 + k·dt`` for ``k = 0 .. floor((t_{T-1} - t_0)/dt)``.
   With ``t_i <= t'_k < t_{i+1}`` and ``w = (t'_k - t_i) / (t_{i+1} - t_i)``:

   - positions, velocities, sizes: ``(1 - w)·a_i + w·a_{i+1}`` (linear);
   - heading on the circle: ``h_i + w·wrap(h_{i+1} - h_i)``, wrapped to ``[-π, π)``, where
     ``wrap(a) = (a + π) mod 2π - π`` takes the short way round (3.0 → -3.0 rad passes π);
   - validity: ``valid_i and valid_{i+1}``; a new time that falls on an old one
     (``|w| < 1e-6``) copies that step and its validity.

2. **Current steps**: ``c = current_index`` (default ``history - 1``, UniTraj's convention:
   the first ``history`` steps are the past), then every ``stride`` steps while a future step
   is left (``stride = 0``: one window per scenario).

3. **Focal agents** at step ``c``: the dataset's ``tracks_to_predict`` when it names some (and
   ``use_tracks_to_predict``), taken as given if valid at ``c`` with a valid future step;
   otherwise every track of ``focal_types`` valid at ``c`` with at least
   ``min_history_valid`` valid history steps, ``min_future_valid`` valid future steps
   (default: all ``Tf``) and a displacement
   ``max_t ||p_t - p_c||`` over its valid steps in ``[c - Th + 1, c + Tf]`` of at least
   ``min_displacement`` metres (the paper keeps nuPlan trajectories moving more than 2 m).
   At most ``max_focal`` per current step (the first in track order).

4. **Frame**: with the focal agent's position ``(p_x, p_y)`` and heading ``θ`` at ``c``,
   every point becomes ``x' = cos θ·(x - p_x) + sin θ·(y - p_y)``,
   ``y' = -sin θ·(x - p_x) + cos θ·(y - p_y)`` (rotation by ``-θ`` after the translation),
   every velocity and direction ``(v_x, v_y)`` is rotated the same way without translation,
   and a heading ``h`` becomes ``h - θ`` (stored as its cosine and sine). A car heading
   north (``θ = π/2``) at ``(10, 5)`` sees the point ``(10, 15)`` at ``(10, 0)``.

5. **Agents**: the focal agent in row 0, then the other tracks of ``agent_types`` valid at
   ``c``, nearest first by ``||p_j(c) - p_focal(c)||`` (ties in track order), up to
   ``A - 1``; history steps ``c - Th + 1 .. c`` (steps before 0 are padding).

6. **Map**: features of the four classes (:func:`map_class`) are resampled along their arc
   length to points at most ``point_spacing`` apart (lanes by their centre line, areas by
   their closed outline), cut into pieces of ``P`` points that share their end points
   (points ``0..P-1``, ``P-1..2P-2``, ...), and the ``M`` pieces whose nearest point is
   closest to the focal agent are kept, nearest first. ``dx, dy`` is the unit direction to
   the next point; the last point repeats the previous direction (a one-point piece: 0).

Everything missing is zero-filled with a False mask. The result is a deterministic function
of the scenario and the :class:`CutConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ...errors import TarotInputError
from .sample import (
    AGENT_FEATURES,
    AGENT_TYPE_COLUMNS,
    MAP_FEATURES,
    MAP_TYPE_COLUMNS,
    MAP_TYPES,
    OBJECT_TYPES,
    MotionSamples,
)
from .scenarionet import Scenario, Track, list_scenarios, read_scenario

__all__ = [
    "CutConfig",
    "cut_folder",
    "cut_scenario",
    "cut_scenarios",
    "map_class",
    "map_pieces",
    "resample_scenario",
    "resample_track",
    "to_agent_frame",
    "wrap_angle",
]

logger = logging.getLogger(__name__)

_EPS: Final[float] = 1e-6


@dataclass(frozen=True)
class CutConfig:
    """Sizes and rules of the agent-centric cutting (see the module docstring).

    Attributes
    ----------
    history, future : int
        ``Th`` (current step included) and ``Tf``. Paper: 21 and 60 at 10 Hz.
    agents, polylines, points : int
        ``A`` (focal agent included), ``M``, ``P``.
    dt : float
        Sample step in seconds (0.1 = 10 Hz).
    point_spacing : float
        Largest distance between map points after resampling (metres).
    current_index : int or None
        First current step (default ``history - 1``).
    stride : int
        Further current steps every ``stride`` steps (0: one window).
    use_tracks_to_predict : bool
        Use the dataset's ``tracks_to_predict`` as focal agents when it names some.
    focal_types : tuple of str
        Object types of automatically chosen focal agents.
    agent_types : tuple of str
        Object types kept as agents (others, e.g. traffic cones, are ignored).
    min_displacement : float
        Metres an automatically chosen focal agent must move from its current position.
    min_history_valid : int
        Valid history steps (current included) an automatically chosen focal agent needs.
    min_future_valid : int or None
        Valid future steps it needs (default: all ``Tf``).
    max_focal : int or None
        Focal agents per current step at most.
    """

    history: int = 21
    future: int = 60
    agents: int = 32
    polylines: int = 64
    points: int = 20
    dt: float = 0.1
    point_spacing: float = 1.0
    current_index: int | None = None
    stride: int = 0
    use_tracks_to_predict: bool = True
    focal_types: tuple[str, ...] = ("VEHICLE",)
    agent_types: tuple[str, ...] = OBJECT_TYPES
    min_displacement: float = 2.0
    min_history_valid: int = 1
    min_future_valid: int | None = None
    max_focal: int | None = None

    def __post_init__(self) -> None:
        for name in ("history", "future", "agents", "polylines", "points"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TarotInputError(f"motion cutting: {name} must be a positive integer, got {v!r}")
        if self.points < 2:
            raise TarotInputError(f"motion cutting: points must be >= 2, got {self.points}")
        for name in ("dt", "point_spacing"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise TarotInputError(f"motion cutting: {name} must be a positive number, got {v!r}")
        if not isinstance(self.min_displacement, int | float) or not self.min_displacement >= 0:
            raise TarotInputError(f"motion cutting: min_displacement must be >= 0, got {self.min_displacement!r}")
        if self.stride < 0 or (self.current_index is not None and self.current_index < 0):
            raise TarotInputError("motion cutting: stride and current_index must be >= 0")
        if not 1 <= self.min_history_valid <= self.history:
            raise TarotInputError(f"motion cutting: min_history_valid must be in [1, {self.history}]")
        if self.min_future_valid is not None and not 1 <= self.min_future_valid <= self.future:
            raise TarotInputError(f"motion cutting: min_future_valid must be in [1, {self.future}]")
        if self.max_focal is not None and self.max_focal < 1:
            raise TarotInputError("motion cutting: max_focal must be >= 1")
        object.__setattr__(self, "focal_types", tuple(self.focal_types))
        object.__setattr__(self, "agent_types", tuple(self.agent_types))

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-serialisable values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- resampling


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    """``(a + π) mod 2π - π``: angles in ``[-π, π)``."""
    return np.mod(np.asarray(a, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi


def resample_track(track: Track, times: np.ndarray, new_times: np.ndarray) -> Track:
    """``track`` (sampled at ``times``) at ``new_times`` (see the module docstring for the formulas).

    Parameters
    ----------
    track : Track
    times : (T,) float, strictly increasing
    new_times : (T',) float, within ``[times[0], times[-1]]`` (others are invalid)

    Returns
    -------
    Track
        ``T'`` steps; invalid steps zero-filled.
    """
    t = np.asarray(times, dtype=np.float64)
    nt = np.asarray(new_times, dtype=np.float64)
    n_old = len(t)
    if n_old == 1:
        i = np.zeros(len(nt), dtype=np.int64)
        w = np.zeros(len(nt))
        inside = np.abs(nt - t[0]) < _EPS
    else:
        i = np.clip(np.searchsorted(t, nt, side="right") - 1, 0, n_old - 2)
        w = (nt - t[i]) / (t[i + 1] - t[i])
        inside = (w > -_EPS) & (w < 1 + _EPS)
    j = np.minimum(i + 1, n_old - 1)
    on_i = np.abs(w) < _EPS
    on_j = np.abs(w - 1) < _EPS
    w = np.where(on_i, 0.0, np.where(on_j, 1.0, w))
    valid = np.where(on_i, track.valid[i], np.where(on_j, track.valid[j], track.valid[i] & track.valid[j])) & inside

    def lerp(a: np.ndarray) -> np.ndarray:
        ww = w.reshape((-1,) + (1,) * (a.ndim - 1))
        return (1 - ww) * a[i] + ww * a[j]

    heading = wrap_angle(track.heading[i] + w * wrap_angle(track.heading[j] - track.heading[i]))
    pos, vel, size = lerp(track.position), lerp(track.velocity), lerp(track.size)
    pos[~valid] = 0.0
    vel[~valid] = 0.0
    size[~valid] = 0.0
    heading = np.where(valid, heading, 0.0)
    return Track(
        track_id=track.track_id,
        object_type=track.object_type,
        position=pos,
        heading=heading,
        velocity=vel,
        valid=valid,
        size=size,
    )


def resample_scenario(scenario: Scenario, dt: float = 0.1) -> Scenario:
    """The scenario at steps of ``dt`` seconds (unchanged if its step is already ``dt``).

    New times are ``t_0 + k·dt``, ``k = 0 .. floor((t_{T-1} - t_0)/dt + 1e-6)``; the
    ``current_time_index`` moves to the new step nearest its time. Map features are kept.
    """
    ts = np.asarray(scenario.timestamps, dtype=np.float64)
    if scenario.length >= 2 and np.allclose(np.diff(ts), dt, rtol=1e-4, atol=1e-6):
        return scenario
    k = math.floor((ts[-1] - ts[0]) / dt + _EPS) + 1
    new_ts = ts[0] + dt * np.arange(k)
    tracks = {tid: resample_track(tr, ts, new_ts) for tid, tr in scenario.tracks.items()}
    cur = scenario.current_time_index
    if cur is not None:
        cur = int(np.clip(round((ts[cur] - ts[0]) / dt), 0, k - 1))
    return dataclasses.replace(scenario, timestamps=new_ts, tracks=tracks, current_time_index=cur)


# --------------------------------------------------------------------------- frame


def to_agent_frame(points: np.ndarray, origin: np.ndarray, heading: float, translate: bool = True) -> np.ndarray:
    """Rotate ``points`` (``(..., 2)``) by ``-heading`` about ``origin`` (after moving ``origin`` to 0).

    ``x' = cos θ·(x - o_x) + sin θ·(y - o_y)``, ``y' = -sin θ·(x - o_x) + cos θ·(y - o_y)``;
    with ``translate=False`` (velocities, directions) the origin is not subtracted.
    """
    p = np.asarray(points, dtype=np.float64)
    d = p - np.asarray(origin, dtype=np.float64)[:2] if translate else p
    c, s = math.cos(heading), math.sin(heading)
    out = np.empty_like(d)
    out[..., 0] = c * d[..., 0] + s * d[..., 1]
    out[..., 1] = -s * d[..., 0] + c * d[..., 1]
    return out


# --------------------------------------------------------------------------- map


def map_class(feature_type: str) -> str | None:
    """The map class of a ScenarioNet feature type, or None (not kept).

    ``lane``: ``LANE_*`` (surface street, freeway, bike lane, unstructured, unknown);
    ``road_line``: ``ROAD_LINE_*`` and ``UNKNOWN_LINE``; ``road_edge``: ``ROAD_EDGE_*``
    (boundary, median, sidewalk); ``crosswalk``: ``CROSSWALK``. Stop signs, speed bumps,
    driveways and anything else are dropped.
    """
    t = str(feature_type).upper()
    if t.startswith("LANE_") and not t.startswith("LANE_STATE_"):
        return "lane"
    if t.startswith("ROAD_LINE_") or t == "UNKNOWN_LINE":
        return "road_line"
    if t.startswith("ROAD_EDGE_"):
        return "road_edge"
    if t == "CROSSWALK":
        return "crosswalk"
    return None


def _resample_line(pts: np.ndarray, spacing: float) -> np.ndarray:
    """Points along the polyline ``pts`` (``(N, 2)``) at most ``spacing`` apart, ends kept."""
    if len(pts) == 0:
        return pts
    keep = np.ones(len(pts), bool)
    keep[1:] = np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-9
    pts = pts[keep]
    if len(pts) == 1:
        return pts
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, math.ceil(s[-1] / spacing - 1e-9) + 1)
    q = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(q, s, pts[:, 0]), np.interp(q, s, pts[:, 1])], axis=1)


def _directions(pts: np.ndarray) -> np.ndarray:
    """Unit vectors to the next point (``(..., P, 2)``), the last repeating the previous one."""
    d = np.zeros_like(pts)
    if pts.shape[-2] < 2:
        return d
    diff = pts[..., 1:, :] - pts[..., :-1, :]
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    d[..., :-1, :] = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 1e-12)
    d[..., -1, :] = d[..., -2, :]
    return d


def map_pieces(
    scenario: Scenario, points: int, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every map piece of a scenario, world frame.

    Returns
    -------
    xy : (K, P, 2) float64
        Piece points (zero padding).
    direction : (K, P, 2) float64
        Unit direction to the next point (see :func:`_directions`), zero on padding.
    mask : (K, P) bool
    kind : (K,) int
        Index of the map class in :data:`~.sample.MAP_TYPES`.
    """
    xy_list, dir_list, mask_list, kind_list = [], [], [], []
    for feat in scenario.map_features.values():
        cls = map_class(feat.feature_type)
        if cls is None:
            continue
        if feat.polyline is not None and (cls == "lane" or feat.polygon is None):
            line = feat.polyline[:, :2]
        elif feat.polygon is not None:
            line = np.concatenate([feat.polygon[:, :2], feat.polygon[:1, :2]])  # closed outline
        else:  # pragma: no cover - the reader keeps only features with geometry
            continue
        pts = _resample_line(line, spacing)
        n = len(pts)
        if n == 0:
            continue
        starts = [0] if n <= points else list(range(0, n - 1, points - 1))
        for st in starts:
            chunk = pts[st : st + points]
            k = len(chunk)
            xy = np.zeros((points, 2))
            xy[:k] = chunk
            d = np.zeros((points, 2))
            d[:k] = _directions(chunk)
            m = np.zeros(points, bool)
            m[:k] = True
            xy_list.append(xy)
            dir_list.append(d)
            mask_list.append(m)
            kind_list.append(MAP_TYPES.index(cls))
    if not xy_list:
        return np.zeros((0, points, 2)), np.zeros((0, points, 2)), np.zeros((0, points), bool), np.zeros(0, np.int64)
    return np.stack(xy_list), np.stack(dir_list), np.stack(mask_list), np.asarray(kind_list, np.int64)


# --------------------------------------------------------------------------- cutting


def _current_steps(cfg: CutConfig, length: int) -> list[int]:
    c0 = cfg.history - 1 if cfg.current_index is None else cfg.current_index
    if c0 >= length - 1:
        return []
    if cfg.stride == 0:
        return [c0]
    return list(range(c0, length - 1, cfg.stride))


def _focal_candidates(scenario: Scenario, ids: list[str], types: np.ndarray, cfg: CutConfig) -> tuple[list[int], bool]:
    """Row indices of focal candidates, and whether they come from ``tracks_to_predict``."""
    if cfg.use_tracks_to_predict and scenario.tracks_to_predict:
        rows = [ids.index(t) for t in scenario.tracks_to_predict if t in ids]
        if rows:
            return rows, True
    focal = set(cfg.focal_types)
    return [r for r in range(len(ids)) if types[r] in focal], False


def cut_scenario(scenario: Scenario, cfg: CutConfig = CutConfig(), source: str = "") -> MotionSamples:
    """Agent-centric samples of one scenario (see the module docstring for every rule).

    Parameters
    ----------
    scenario : Scenario
        As read by :func:`~.scenarionet.read_scenario` (any step; resampled to ``cfg.dt``).
    cfg : CutConfig
    source : str
        Recorded in every sample's ``source``.

    Returns
    -------
    MotionSamples
        Possibly empty; ``meta`` holds ``cfg``.
    """
    sc = resample_scenario(scenario, cfg.dt)
    th, tf, na, nm, npts = cfg.history, cfg.future, cfg.agents, cfg.polylines, cfg.points
    keep_types = set(cfg.agent_types)
    tracks = [tr for tr in sc.tracks.values() if tr.object_type in keep_types]
    empty = MotionSamples.empty(na, th, tf, nm, npts)
    if not tracks:
        return dataclasses.replace(empty, meta={"cut": cfg.as_dict()})
    ids = [tr.track_id for tr in tracks]
    types = np.asarray([tr.object_type for tr in tracks])
    pos = np.stack([tr.position[:, :2] for tr in tracks])  # (N, T, 2)
    head = np.stack([tr.heading for tr in tracks])  # (N, T)
    vel = np.stack([tr.velocity for tr in tracks])  # (N, T, 2)
    valid = np.stack([tr.valid for tr in tracks])  # (N, T)
    onehot = np.zeros((len(tracks), 3), np.float64)
    for r, t in enumerate(types):
        if t in AGENT_TYPE_COLUMNS:
            onehot[r, AGENT_TYPE_COLUMNS[t] - AGENT_TYPE_COLUMNS["VEHICLE"]] = 1.0
    big_t = sc.length
    pieces_xy, pieces_dir, pieces_mask, pieces_kind = map_pieces(sc, npts, cfg.point_spacing)
    candidates, given = _focal_candidates(sc, ids, types, cfg)
    need_future = tf if cfg.min_future_valid is None else cfg.min_future_valid

    out: dict[str, list[Any]] = {k: [] for k in ("a", "am", "m", "mm", "f", "fm", "tid")}
    for c in _current_steps(cfg, big_t):
        lo, hi = c - th + 1, c + tf  # inclusive window
        hist_idx = np.arange(lo, c + 1)
        fut_idx = np.arange(c + 1, hi + 1)
        h_ok = (hist_idx >= 0) & (hist_idx < big_t)
        f_ok = fut_idx < big_t
        hist_c = np.clip(hist_idx, 0, big_t - 1)
        fut_c = np.clip(fut_idx, 0, big_t - 1)
        alive = valid[:, c]
        chosen = 0
        for r in candidates:
            if not alive[r]:
                continue
            fut_valid = valid[r, fut_c] & f_ok
            if not fut_valid.any():
                continue
            if not given:
                hist_valid = valid[r, hist_c] & h_ok
                if hist_valid.sum() < cfg.min_history_valid or fut_valid.sum() < need_future:
                    continue
                win = np.concatenate([hist_c[hist_valid], fut_c[fut_valid]])
                disp = np.linalg.norm(pos[r, win] - pos[r, c], axis=1).max()
                if disp < cfg.min_displacement:
                    continue
            if cfg.max_focal is not None and chosen >= cfg.max_focal:
                break
            chosen += 1
            origin = pos[r, c]
            theta = float(head[r, c])
            # agents: focal first, then nearest valid others
            others = np.flatnonzero(alive)
            others = others[others != r]
            dist = np.linalg.norm(pos[others, c] - origin, axis=1)
            others = others[np.argsort(dist, kind="stable")][: na - 1]
            rows = np.concatenate([[r], others]).astype(np.int64)
            a = np.zeros((na, th, len(AGENT_FEATURES)), np.float32)
            am = np.zeros((na, th), bool)
            m_valid = valid[rows][:, hist_c] & h_ok[None, :]  # (k, Th)
            xy = to_agent_frame(pos[rows][:, hist_c], origin, theta)
            v = to_agent_frame(vel[rows][:, hist_c], origin, theta, translate=False)
            rel = head[rows][:, hist_c] - theta
            feat = np.concatenate(
                [
                    xy,
                    v,
                    np.cos(rel)[..., None],
                    np.sin(rel)[..., None],
                    np.broadcast_to(onehot[rows][:, None, :], (len(rows), th, 3)),
                ],
                axis=-1,
            )
            feat[~m_valid] = 0.0
            a[: len(rows)] = feat
            am[: len(rows)] = m_valid
            # future of the focal agent
            f = np.zeros((tf, 2), np.float32)
            fxy = to_agent_frame(pos[r, fut_c], origin, theta)
            fxy[~fut_valid] = 0.0
            f[:] = fxy
            # map: nearest pieces
            mp = np.zeros((nm, npts, len(MAP_FEATURES)), np.float32)
            mmask = np.zeros((nm, npts), bool)
            if len(pieces_xy):
                d = np.linalg.norm(pieces_xy - origin, axis=-1)
                d = np.where(pieces_mask, d, np.inf).min(axis=1)
                pick = np.argsort(d, kind="stable")[:nm]
                pxy = to_agent_frame(pieces_xy[pick], origin, theta)
                pdir = to_agent_frame(pieces_dir[pick], origin, theta, translate=False)
                pm = pieces_mask[pick]
                block = np.zeros((len(pick), npts, len(MAP_FEATURES)))
                block[..., 0:2] = pxy
                block[..., 2:4] = pdir
                for q, kind in enumerate(pieces_kind[pick]):
                    block[q, :, MAP_TYPE_COLUMNS[MAP_TYPES[kind]]] = 1.0
                block[~pm] = 0.0
                mp[: len(pick)] = block
                mmask[: len(pick)] = pm
            out["a"].append(a)
            out["am"].append(am)
            out["m"].append(mp)
            out["mm"].append(mmask)
            out["f"].append(f)
            out["fm"].append(fut_valid)
            out["tid"].append(ids[r])
    if not out["a"]:
        return dataclasses.replace(empty, meta={"cut": cfg.as_dict()})
    n = len(out["a"])
    return MotionSamples(
        agents=np.stack(out["a"]),
        agents_mask=np.stack(out["am"]),
        map=np.stack(out["m"]),
        map_mask=np.stack(out["mm"]),
        future=np.stack(out["f"]),
        future_mask=np.stack(out["fm"]),
        source=np.full(n, source or sc.dataset or "unknown"),
        scenario_id=np.full(n, sc.scenario_id),
        track_id=np.asarray(out["tid"]),
        meta={"cut": cfg.as_dict()},
    )


def cut_scenarios(scenarios: Iterable[Scenario], cfg: CutConfig = CutConfig(), source: str = "") -> MotionSamples:
    """The samples of every scenario, concatenated in order (empty if none has any)."""
    parts = [p for p in (cut_scenario(sc, cfg, source) for sc in scenarios) if len(p)]
    if not parts:
        return dataclasses.replace(
            MotionSamples.empty(cfg.agents, cfg.history, cfg.future, cfg.polylines, cfg.points),
            meta={"cut": cfg.as_dict()},
        )
    return MotionSamples.concatenate(parts, meta={"cut": cfg.as_dict(), "source": source})


def cut_folder(
    folder: str | os.PathLike[str], cfg: CutConfig = CutConfig(), source: str = "", limit: int | None = None
) -> MotionSamples:
    """Read a ScenarioNet folder (its first ``limit`` scenarios) and cut every scenario.

    A scenario that cannot be read stops the cutting with its ``TarotInputError`` (naming
    the file): a damaged dataset is reported, not silently thinned.
    """
    entries = list_scenarios(folder)
    if limit is not None:
        entries = entries[:limit]
    logger.info("cutting %d scenarios of %s", len(entries), folder)
    return cut_scenarios((read_scenario(e) for e in entries), cfg, source)
