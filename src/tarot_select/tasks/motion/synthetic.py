"""Generated driving scenes from synthetic "datasets" that differ the way WOMD, AV2, nuPlan and nuScenes do.

Nothing is downloaded: every scene is drawn from its own generator, seeded with
``[seed, style, split, index]`` (:func:`scene_rng`), so a scene does not change when other
styles, splits or counts change. Scenes are :class:`~.scenarionet.Scenario` objects and
:func:`write_synthetic` writes them **through the ScenarioNet writer**, so the mini task
reads them back with the same reader (and the same resampling and cutting) as real data.

Road layouts (right-hand traffic, lanes 3.5 m wide, arms 70 m long)
--------------------------------------------------------------------
``straight``      two lanes each way, an optional mid-block crosswalk with stop lines
``intersection``  four-way crossing, one lane each way per arm, straight / left / right
                  connectors (arcs of radius 8.75 and 5.25 m), crosswalks and stop lines
``roundabout``    one-lane ring of radius 14 m, counter-clockwise, four arms, crosswalks
``merge``         two lanes each way and an on-ramp joining the right lane at 12°, with a
                  yield line at its end

Routes are smoothed (a 6 m moving average), so headings turn continuously.

Behaviour
---------
Every vehicle follows a route with speed ``v`` integrated at 20 Hz:
``v ← v + clip(v_des - v, -b·Δt, a·Δt)``, ``s ← s + v·Δt``, where ``v_des`` is the smallest
of the driver's wish speed (normal, per style), the curve limit ``sqrt(a_lat / κ)`` at the
point 1.5 s ahead (``κ``: the route's curvature, ``a_lat`` per style) and, while a stop is
pending, ``sqrt(2·b·(d - 0.5))`` for a stop line ``d`` metres ahead; a stopped vehicle waits
1-4 s. Some vehicles change lanes (a 30 m smoothstep), some are parked (stationary beside
the road). Pedestrians walk sidewalks and crosswalks (0.9-1.6 m/s, some stand), cyclists
ride 1.2 m right of a lane centre. Heading is the route's tangent, velocity ``v`` along it.

Styles (what differs, as between the real datasets)
---------------------------------------------------
=========== ======= ====================================== ==================================
style       native  layouts, behaviour                      conventions, sensing
=========== ======= ====================================== ==================================
``womd``    10 Hz   intersections 55 %, straight 45 %;      random rotation, offsets ±2 km,
                    dense (10-16 vehicles), 10±3 m/s, many   σ = 3 cm; ``tracks_to_predict``
                    stops, pedestrians                       (4), road edges
``av2``     10 Hz   roundabouts 55 %, intersections 25 %;   random rotation, ±500 m, σ = 5 cm;
                    sparse (6-10), 7.5±2 m/s, turns          one focal track to predict;
                                                             **no road edges** (as converted)
``nuplan``  20 Hz   merges 50 %, straight 40 %; 13±4 m/s,   no rotation, offsets ±30 km (UTM
                    lane changes, many parked cars, 35 %     like), σ = 2 cm; resampled to 10 Hz
                    left-hand traffic (Singapore)
``nuscenes`` 2 Hz   intersections 35 %, roundabouts 25 %,   2 Hz annotations (resampled),
 (target)           merges 20 %, straight 20 %; 6.5±2.5,     σ = 8 cm, 2-D map points, sizes as
                    many stops and pedestrians, 40 %         ``(T, 1)``, ``valid`` as floats,
                    left-hand traffic (Boston/Singapore)     boundaries as solid white lines
``glitch``  10 Hz   target-like roads and behaviour, but    σ = 30 cm, heading noise 0.15 rad
 (hurts)            from a random moment the log's clock
                    drops every other frame: every agent
                    seems to double its speed (the recorded
                    velocity does not) — implausible futures
=========== ======= ====================================== ==================================

Left-hand traffic is the right-hand scene mirrored (``y → -y``, headings negated), which
is a consistent left-hand world. The target's mix of layouts and behaviours is that of no
single source (intersections and stops as in ``womd``, roundabouts as in ``av2``, merges
and left-hand traffic as in ``nuplan``, and slower than all of them); ``glitch`` looks like
the target in its history but has futures no real vehicle drives, so training on it hurts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from ...errors import TarotInputError
from .scenarionet import MapFeature, Scenario, Track, WriteOptions, write_scenarionet

__all__ = [
    "CANDIDATE_STYLES",
    "HARMFUL_STYLES",
    "LAYOUTS",
    "STYLES",
    "TARGET_STYLES",
    "StyleSpec",
    "generate_scenario",
    "generate_scenarios",
    "replace_style",
    "scene_rng",
    "style_names",
    "write_synthetic",
]

logger = logging.getLogger(__name__)

LANE_W: Final[float] = 3.5
ARM: Final[float] = 70.0
DS: Final[float] = 0.5  # route resolution (m)
SIM_DT: Final[float] = 0.05  # integration step (s)
LAYOUTS: Final[tuple[str, ...]] = ("straight", "intersection", "roundabout", "merge")


@dataclass(frozen=True)
class StyleSpec:
    """What makes one synthetic dataset differ from another (see the module docstring)."""

    name: str
    dataset: str
    native_dt: float
    layouts: tuple[tuple[str, float], ...]
    speed_mean: float
    speed_std: float
    lateral_accel: float
    turn_prob: float
    stop_prob: float
    lane_change_prob: float
    parked: tuple[int, int]
    vehicles: tuple[int, int]
    pedestrians: tuple[int, int]
    cyclists: tuple[int, int]
    left_hand_prob: float
    position_noise: float
    heading_noise: float
    velocity_noise: float
    offset_scale: float
    random_rotation: bool
    occlusion_prob: float
    edges: str  # "edge", "line" or "none": how road boundaries are encoded
    map_spacing: float
    tracks_to_predict: int
    clock_glitch: bool = False
    write: WriteOptions = dataclasses.field(default_factory=WriteOptions)
    version: str = "v1"


#: The target style (2 Hz annotations, a mix of every layout); ``glitch`` is a copy of it with a broken clock.
_NUSCENES = StyleSpec(
    name="nuscenes",
    dataset="nuscenes",
    native_dt=0.5,
    layouts=(("intersection", 0.35), ("roundabout", 0.25), ("merge", 0.2), ("straight", 0.2)),
    speed_mean=6.5,
    speed_std=2.5,
    lateral_accel=2.0,
    turn_prob=0.5,
    stop_prob=0.45,
    lane_change_prob=0.1,
    parked=(1, 3),
    vehicles=(6, 12),
    pedestrians=(3, 8),
    cyclists=(0, 2),
    left_hand_prob=0.4,
    position_noise=0.08,
    heading_noise=0.03,
    velocity_noise=0.2,
    offset_scale=800.0,
    random_rotation=True,
    occlusion_prob=0.15,
    edges="line",
    map_spacing=1.0,
    tracks_to_predict=0,
    write=WriteOptions(size_as_column=True, valid_as_float=True, map_dims=2),
    version="v1.0-trainval",
)

STYLES: Final[dict[str, StyleSpec]] = {
    "womd": StyleSpec(
        name="womd",
        dataset="womd",
        native_dt=0.1,
        layouts=(("intersection", 0.55), ("straight", 0.45)),
        speed_mean=10.0,
        speed_std=3.0,
        lateral_accel=3.0,
        turn_prob=0.45,
        stop_prob=0.4,
        lane_change_prob=0.15,
        parked=(0, 2),
        vehicles=(10, 16),
        pedestrians=(2, 6),
        cyclists=(0, 2),
        left_hand_prob=0.0,
        position_noise=0.03,
        heading_noise=0.01,
        velocity_noise=0.1,
        offset_scale=2000.0,
        random_rotation=True,
        occlusion_prob=0.1,
        edges="edge",
        map_spacing=0.5,
        tracks_to_predict=4,
    ),
    "av2": StyleSpec(
        name="av2",
        dataset="av2",
        native_dt=0.1,
        layouts=(("roundabout", 0.55), ("intersection", 0.25), ("straight", 0.2)),
        speed_mean=7.5,
        speed_std=2.0,
        lateral_accel=2.5,
        turn_prob=0.6,
        stop_prob=0.1,
        lane_change_prob=0.05,
        parked=(0, 1),
        vehicles=(6, 10),
        pedestrians=(1, 4),
        cyclists=(0, 2),
        left_hand_prob=0.0,
        position_noise=0.05,
        heading_noise=0.02,
        velocity_noise=0.1,
        offset_scale=500.0,
        random_rotation=True,
        occlusion_prob=0.05,
        edges="none",
        map_spacing=1.0,
        tracks_to_predict=1,
    ),
    "nuplan": StyleSpec(
        name="nuplan",
        dataset="nuplan",
        native_dt=0.05,
        layouts=(("merge", 0.5), ("straight", 0.4), ("intersection", 0.1)),
        speed_mean=13.0,
        speed_std=4.0,
        lateral_accel=3.5,
        turn_prob=0.3,
        stop_prob=0.15,
        lane_change_prob=0.3,
        parked=(3, 7),
        vehicles=(12, 20),
        pedestrians=(0, 3),
        cyclists=(0, 1),
        left_hand_prob=0.35,
        position_noise=0.02,
        heading_noise=0.01,
        velocity_noise=0.05,
        offset_scale=30000.0,
        random_rotation=False,
        occlusion_prob=0.05,
        edges="edge",
        map_spacing=0.5,
        tracks_to_predict=0,
    ),
    "nuscenes": _NUSCENES,
    # the target's roads and behaviour, logged at 10 Hz by a clock that drops every other
    # frame from a random moment on, with noisier sensing and road edges
    "glitch": dataclasses.replace(
        _NUSCENES,
        name="glitch",
        dataset="glitch",
        native_dt=0.1,
        position_noise=0.3,
        heading_noise=0.15,
        velocity_noise=0.5,
        edges="edge",
        clock_glitch=True,
        write=WriteOptions(),
        version="v1",
    ),
}

#: Candidate (source) styles: three useful ones and ``glitch``, which hurts.
CANDIDATE_STYLES: Final[tuple[str, ...]] = ("womd", "av2", "nuplan", "glitch")
#: Styles a target may be drawn from.
TARGET_STYLES: Final[tuple[str, ...]] = ("nuscenes",)
#: Styles whose samples should hurt a model of the target.
HARMFUL_STYLES: Final[tuple[str, ...]] = ("glitch",)


def _code(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def scene_rng(seed: int, style: str, split: str, index: int) -> np.random.Generator:
    """The generator of one scene: ``default_rng([seed, crc32(style), crc32(split), index])``."""
    return np.random.default_rng([int(seed), _code(style), _code(split), int(index)])


# --------------------------------------------------------------------------- geometry


def _line(p0: Sequence[float], p1: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    n = max(2, math.ceil(np.linalg.norm(b - a) / DS) + 1)
    return a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)


def _arc(centre: Sequence[float], radius: float, a0: float, a1: float) -> np.ndarray:
    n = max(2, math.ceil(radius * abs(a1 - a0) / DS) + 1)
    ang = np.linspace(a0, a1, n)
    return np.asarray(centre, float) + radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)


def _join(*parts: np.ndarray) -> np.ndarray:
    out = [parts[0]]
    for p in parts[1:]:
        out.append(p[1:] if np.linalg.norm(p[0] - out[-1][-1]) < 1e-6 else p)
    return np.concatenate(out)


def _resample(pts: np.ndarray, ds: float = DS) -> np.ndarray:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    pts = pts[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    n = max(2, round(s[-1] / ds) + 1)
    q = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(q, s, pts[:, 0]), np.interp(q, s, pts[:, 1])], axis=1)


def _smooth(pts: np.ndarray, window: float = 6.0) -> np.ndarray:
    """Moving average over ``window`` metres (ends held), then resampled at :data:`DS`."""
    p = _resample(pts)
    k = max(1, int(window / DS) // 2)
    if len(p) <= 2 * k + 1:
        return p
    pad = np.concatenate([np.repeat(p[:1], k, 0), p, np.repeat(p[-1:], k, 0)])
    c = np.cumsum(np.concatenate([np.zeros((1, 2)), pad]), axis=0)
    avg = (c[2 * k + 1 :] - c[: -2 * k - 1]) / (2 * k + 1)
    return _resample(avg)


def _rot(pts: np.ndarray, angle: float) -> np.ndarray:
    """Rows of ``pts`` rotated counter-clockwise by ``angle`` about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


@dataclass(frozen=True)
class _Route:
    xy: np.ndarray  # (K, 2), DS apart
    heading: np.ndarray  # (K,) unwrapped
    curvature: np.ndarray  # (K,) |dθ/ds|
    stop_s: float  # arc length of a stop line (inf: none)
    kind: str  # "through", "turn", "change"

    @property
    def length(self) -> float:
        return DS * (len(self.xy) - 1)


def _route(pts: np.ndarray, kind: str, stop_at: Sequence[float] | None = None, smooth: bool = True) -> _Route:
    xy = _smooth(pts) if smooth else _resample(pts)
    d = np.gradient(xy, axis=0)
    heading = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    curv = np.abs(np.gradient(heading)) / DS
    stop_s = math.inf
    if stop_at is not None:
        stop_s = float(DS * np.argmin(np.linalg.norm(xy - np.asarray(stop_at), axis=1)))
    return _Route(xy, heading, curv, stop_s, kind)


@dataclass(frozen=True)
class _Layout:
    routes: tuple[_Route, ...]
    walks: tuple[np.ndarray, ...]  # pedestrian paths
    features: tuple[tuple[str, str, np.ndarray], ...]  # (class, "polyline"|"polygon", points)


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _lane_change(y0: float, y1: float, x_start: float, direction: float) -> np.ndarray:
    x = np.arange(-ARM, ARM + 1e-9, DS) * direction
    u = np.clip((x * direction - x_start) / 30.0, 0.0, 1.0)
    y = y0 + (y1 - y0) * (3 * u**2 - 2 * u**3)
    return np.stack([x, y], axis=1)


@functools.cache
def _straight(crosswalk: bool) -> _Layout:
    w = LANE_W
    lanes = {  # (y, direction)
        "e1": (-w / 2, 1.0),
        "e2": (-3 * w / 2, 1.0),
        "w1": (w / 2, -1.0),
        "w2": (3 * w / 2, -1.0),
    }
    routes = []
    for y, d in lanes.values():
        stop = (d * 16.0, y) if crosswalk else None
        routes.append(_route(_line((-d * ARM, y), (d * ARM, y)), "through", stop, smooth=False))
    for (y0, d), (y1, _) in ((lanes["e1"], lanes["e2"]), (lanes["e2"], lanes["e1"]), (lanes["w1"], lanes["w2"])):
        for x_start in (-40.0, -15.0, 10.0):
            routes.append(_route(_lane_change(y0, y1, x_start, d), "change"))
    feats: list[tuple[str, str, np.ndarray]] = []
    for y, d in lanes.values():
        feats.append(("lane", "polyline", _line((-d * ARM, y), (d * ARM, y))))
    feats.append(("yellow", "polyline", _line((-ARM, 0.0), (ARM, 0.0))))
    feats.append(("white", "polyline", _line((-ARM, -w), (ARM, -w))))
    feats.append(("white", "polyline", _line((ARM, w), (-ARM, w))))
    feats.append(("edge", "polyline", _line((-ARM, -2 * w), (ARM, -2 * w))))
    feats.append(("edge", "polyline", _line((ARM, 2 * w), (-ARM, 2 * w))))
    walks = [_line((-ARM, -2 * w - 2), (ARM, -2 * w - 2)), _line((ARM, 2 * w + 2), (-ARM, 2 * w + 2))]
    if crosswalk:
        feats.append(("crosswalk", "polygon", _rect(18.0, 22.0, -2 * w, 2 * w)))
        walks.append(_line((20.0, -2 * w - 2), (20.0, 2 * w + 2)))
    return _Layout(tuple(routes), tuple(walks), tuple(feats))


@functools.cache
def _intersection() -> _Layout:
    w, b = LANE_W, 2 * LANE_W  # box half-size 7 m
    inc = _line((-ARM, -w / 2), (-b, -w / 2))  # west arm, heading +x
    out = _line((-b, w / 2), (-ARM, w / 2))  # west arm, heading -x
    through = _line((-b, -w / 2), (b, -w / 2))
    right = _arc((-b, -b), b - w / 2, math.pi / 2, 0.0)  # to the south arm
    left = _arc((-b, b), b + w / 2, -math.pi / 2, 0.0)  # to the north arm
    stop = (-b - 4.5, -w / 2)
    routes, feats, walks = [], [], []
    for k in range(4):
        ang = k * math.pi / 2
        r = functools.partial(_rot, angle=ang)  # arm k: the west arm turned by k quarter turns (k = 1: south)
        st = tuple(r(np.asarray([stop]))[0])
        routes.append(_route(_join(r(inc), r(through), r(_rot(out, math.pi))), "through", st))
        routes.append(_route(_join(r(inc), r(right), r(_rot(out, math.pi / 2))), "turn", st))
        routes.append(_route(_join(r(inc), r(left), r(_rot(out, -math.pi / 2))), "turn", st))
        feats += [
            ("lane", "polyline", r(inc)),
            ("lane", "polyline", r(out)),
            ("lane", "polyline", r(through)),
            ("lane", "polyline", r(right)),
            ("lane", "polyline", r(left)),
            ("yellow", "polyline", r(_line((-ARM, 0.0), (-b, 0.0)))),
            ("edge", "polyline", r(_line((-ARM, -w), (-b, -w)))),
            ("edge", "polyline", r(_line((-b, w), (-ARM, w)))),
            ("edge", "polyline", r(_arc((-b, -b), b - w, math.pi / 2, 0.0))),
            ("crosswalk", "polygon", r(_rect(-b - 4.0, -b - 1.0, -w, w))),
        ]
        walks += [r(_line((-b - 2.5, -w - 2), (-b - 2.5, w + 2))), r(_line((-ARM, -w - 2), (-b - 2, -w - 2)))]
    return _Layout(tuple(routes), tuple(walks), tuple(feats))


@functools.cache
def _roundabout() -> _Layout:
    w, rad = LANE_W, 14.0
    xe = -math.sqrt(rad**2 - (w / 2) ** 2)
    a_in = math.atan2(-w / 2, xe)  # entry angle of the west arm (counter-clockwise ring)
    a_out = math.atan2(w / 2, xe)
    inc = _line((-ARM, -w / 2), (xe, -w / 2))
    out = _line((xe, w / 2), (-ARM, w / 2))
    routes, feats, walks = [], [], []
    for i in range(4):
        r_i = functools.partial(_rot, angle=i * math.pi / 2)
        stop = tuple(r_i(np.asarray([[xe - 3.0, -w / 2]]))[0])
        for j in (1, 2, 3):  # exits: 1 = right, 2 = straight, 3 = left
            a0 = a_in + i * math.pi / 2
            a1 = a_out + (i + j) * math.pi / 2
            a1 = a0 + (a1 - a0) % (2 * math.pi)
            ring = _arc((0.0, 0.0), rad, a0, a1)
            r_j = functools.partial(_rot, angle=(i + j) * math.pi / 2)
            routes.append(_route(_join(r_i(inc), ring, r_j(out)), "through" if j == 2 else "turn", stop))
        feats += [
            ("lane", "polyline", r_i(inc)),
            ("lane", "polyline", r_i(out)),
            ("yellow", "polyline", r_i(_line((-ARM, 0.0), (-rad - w, 0.0)))),
            ("edge", "polyline", r_i(_line((-ARM, -w), (-rad - w + 1.0, -w)))),
            ("edge", "polyline", r_i(_line((-rad - w + 1.0, w), (-ARM, w)))),
            ("crosswalk", "polygon", r_i(_rect(-rad - 9.0, -rad - 6.0, -w, w))),
        ]
        walks.append(r_i(_line((-rad - 7.5, -w - 2), (-rad - 7.5, w + 2))))
    feats.append(("lane", "polyline", _arc((0.0, 0.0), rad, -math.pi, math.pi)))
    feats.append(("edge", "polyline", _arc((0.0, 0.0), rad + w / 2 + 0.5, -math.pi, math.pi)))
    feats.append(("median", "polyline", _arc((0.0, 0.0), rad - w / 2 - 0.5, -math.pi, math.pi)))
    walks.append(_arc((0.0, 0.0), rad + w + 3.0, -math.pi, math.pi / 2))
    return _Layout(tuple(routes), tuple(walks), tuple(feats))


@functools.cache
def _merge() -> _Layout:
    w = LANE_W
    base = _straight(False)
    slope = math.tan(math.radians(12.0))
    y_r = -3 * w / 2
    ramp = _line((-ARM, y_r - ARM * slope), (0.0, y_r))
    ramp_route = _route(_join(ramp, _line((0.0, y_r), (ARM, y_r))), "turn", (-1.0, y_r - slope))
    routes = [*list(base.routes), ramp_route, ramp_route]
    feats = [f for f in base.features if not (f[0] == "edge" and f[2][0, 1] < 0)]
    feats += [
        ("lane", "polyline", ramp),
        ("edge", "polyline", _line((-ARM, -2 * w - ARM * slope - 1.0), (10.0, -2 * w))),
        ("edge", "polyline", _line((10.0, -2 * w), (ARM, -2 * w))),
        ("edge", "polyline", _line((-ARM, y_r - ARM * slope + 2.5), (-20.0, y_r - 20.0 * slope + 2.5))),
    ]
    return _Layout(tuple(routes), base.walks, tuple(feats))


def _layout(name: str, rng: np.random.Generator) -> _Layout:
    if name == "straight":
        return _straight(bool(rng.random() < 0.5))
    if name == "intersection":
        return _intersection()
    if name == "roundabout":
        return _roundabout()
    if name == "merge":
        return _merge()
    raise TarotInputError(f"synthetic motion: unknown layout {name!r} (known: {', '.join(LAYOUTS)})")


# --------------------------------------------------------------------------- agents


@dataclass
class _Agents:
    kind: list[str]
    route: list[_Route]
    s0: list[float]
    v0: list[float]
    v_wish: list[float]
    accel: list[float]
    brake: list[float]
    stop: list[bool]
    wait: list[float]
    static: list[bool]
    offset: list[float]  # metres to the right of the route
    size: list[tuple[float, float, float]]


def _pick_route(lay: _Layout, st: StyleSpec, rng: np.random.Generator) -> _Route:
    groups = {k: [r for r in lay.routes if r.kind == k] for k in ("through", "turn", "change")}
    u = rng.random()
    if groups["turn"] and u < st.turn_prob:
        pool = groups["turn"]
    elif groups["change"] and rng.random() < st.lane_change_prob:
        pool = groups["change"]
    else:
        pool = groups["through"] or groups["turn"]
    return pool[int(rng.integers(len(pool)))]


def _walk_route(path: np.ndarray, rng: np.random.Generator) -> _Route:
    pts = path[::-1] if rng.random() < 0.5 else path
    return _route(pts, "walk", smooth=False)


def _draw_agents(lay: _Layout, st: StyleSpec, rng: np.random.Generator, span: float) -> _Agents:
    ag = _Agents([], [], [], [], [], [], [], [], [], [], [], [])

    def add(kind, route, s0, v0, wish, acc, brk, stop, wait, static, offset, size):
        for lst, val in zip(
            (
                ag.kind,
                ag.route,
                ag.s0,
                ag.v0,
                ag.v_wish,
                ag.accel,
                ag.brake,
                ag.stop,
                ag.wait,
                ag.static,
                ag.offset,
                ag.size,
            ),
            (kind, route, s0, v0, wish, acc, brk, stop, wait, static, offset, size),
            strict=True,
        ):
            lst.append(val)

    n_veh = int(rng.integers(st.vehicles[0], st.vehicles[1] + 1))
    for i in range(n_veh):
        route = _pick_route(lay, st, rng)
        wish = max(1.5, rng.normal(st.speed_mean, st.speed_std))
        stop = bool(rng.random() < st.stop_prob) and math.isfinite(route.stop_s)
        if i == 0:  # the recording vehicle starts early on its route
            s0 = rng.uniform(0.0, 0.15 * route.length)
        else:
            hi = max(1.0, route.length - 0.6 * wish * span)
            s0 = rng.uniform(0.0, hi)
        if stop and s0 > route.stop_s - 3.0:
            stop = False
        v0 = wish * rng.uniform(0.6, 1.0)
        size = (rng.normal(4.6, 0.4), rng.normal(1.9, 0.1), 1.6)
        add(
            "VEHICLE",
            route,
            s0,
            v0,
            wish,
            rng.uniform(1.5, 3.0),
            rng.uniform(2.5, 4.0),
            stop,
            rng.uniform(1.0, 4.0),
            False,
            0.0,
            size,
        )
    n_park = int(rng.integers(st.parked[0], st.parked[1] + 1))
    for _ in range(n_park):
        route = _pick_route(lay, st, rng)
        s0 = rng.uniform(0.0, route.length)
        add("VEHICLE", route, s0, 0.0, 0.0, 1.0, 1.0, False, 0.0, True, 2.8, (rng.normal(4.6, 0.4), 1.9, 1.6))
    n_ped = int(rng.integers(st.pedestrians[0], st.pedestrians[1] + 1))
    for _ in range(n_ped):
        route = _walk_route(lay.walks[int(rng.integers(len(lay.walks)))], rng)
        standing = bool(rng.random() < 0.2)
        wish = rng.uniform(0.9, 1.6)
        s0 = rng.uniform(0.0, max(0.5, route.length - wish * span))
        add(
            "PEDESTRIAN",
            route,
            s0,
            0.0 if standing else wish,
            wish,
            0.8,
            1.5,
            False,
            0.0,
            standing,
            0.0,
            (0.6, 0.6, 1.7),
        )
    n_cyc = int(rng.integers(st.cyclists[0], st.cyclists[1] + 1))
    for _ in range(n_cyc):
        route = _pick_route(lay, st, rng)
        wish = max(2.0, rng.normal(4.5, 1.0))
        s0 = rng.uniform(0.0, max(1.0, route.length - wish * span))
        add("CYCLIST", route, s0, wish, wish, 1.0, 2.0, False, 0.0, False, 1.2, (1.8, 0.6, 1.7))
    return ag


def _simulate(ag: _Agents, st: StyleSpec, rng: np.random.Generator, steps: int) -> dict[str, np.ndarray]:
    """Positions, headings, speeds and validity of every agent at ``steps`` steps of :data:`SIM_DT`."""
    n = len(ag.kind)
    kmax = max(len(r.xy) for r in ag.route)
    xy = np.zeros((n, kmax, 2))
    hd = np.zeros((n, kmax))
    vmax = np.full((n, kmax), 40.0)
    length = np.zeros(n)
    for i, r in enumerate(ag.route):
        k = len(r.xy)
        xy[i, :k], xy[i, k:] = r.xy, r.xy[-1]
        hd[i, :k], hd[i, k:] = r.heading, r.heading[-1]
        limit = np.sqrt(st.lateral_accel / np.maximum(r.curvature, 1e-4)) if ag.kind[i] != "PEDESTRIAN" else 40.0
        vmax[i, :k] = np.minimum(40.0, limit)
        length[i] = r.length
    s = np.asarray(ag.s0, float)
    v = np.asarray(ag.v0, float)
    wish = np.asarray(ag.v_wish, float)
    acc, brk = np.asarray(ag.accel), np.asarray(ag.brake)
    pending = np.asarray(ag.stop, bool)
    wait = np.asarray(ag.wait, float)
    stop_s = np.asarray([r.stop_s for r in ag.route])
    static = np.asarray(ag.static, bool)
    rows = np.arange(n)
    s_hist = np.zeros((n, steps))
    v_hist = np.zeros((n, steps))
    jitter = rng.normal(0.0, 0.15, size=(n, steps))  # drivers' small speed fluctuations (m/s²)
    for t in range(steps):
        s_hist[:, t], v_hist[:, t] = s, v
        ahead = np.clip(((s + 1.5 * v + 2.0) / DS).astype(np.int64), 0, kmax - 1)
        here = np.clip((s / DS).astype(np.int64), 0, kmax - 1)
        v_des = np.minimum(wish, np.minimum(vmax[rows, ahead], vmax[rows, here]))
        gap = stop_s - s
        brake_lim = np.sqrt(np.maximum(0.0, 2.0 * 2.0 * (gap - 0.5)))
        v_des = np.where(pending & (gap > -1.0), np.minimum(v_des, brake_lim), v_des)
        halted = pending & (v < 0.2) & (gap < 3.0)
        wait = np.where(halted, wait - SIM_DT, wait)
        pending = pending & (wait > 0)
        dv = np.clip(v_des - v, -brk * SIM_DT, acc * SIM_DT) + jitter[:, t] * SIM_DT
        v = np.where(static, 0.0, np.maximum(0.0, v + dv))
        s = s + v * SIM_DT
    u = np.clip(s_hist / DS, 0.0, kmax - 1.000001)
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    pos = xy[rows[:, None], i0] * (1 - f[..., None]) + xy[rows[:, None], i0 + 1] * f[..., None]
    head = hd[rows[:, None], i0] * (1 - f) + hd[rows[:, None], i0 + 1] * f
    off = np.asarray(ag.offset)[:, None, None]
    right = np.stack([np.sin(head), -np.cos(head)], axis=-1)
    pos = pos + off * right
    valid = s_hist <= length[:, None]
    return {"pos": pos, "head": head, "speed": v_hist, "valid": valid}


# --------------------------------------------------------------------------- scenes


def _choose(options: tuple[tuple[str, float], ...], rng: np.random.Generator) -> str:
    names = [o[0] for o in options]
    w = np.asarray([o[1] for o in options], float)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


_EDGE_TYPES: Final[dict[str, str | None]] = {
    "edge": "ROAD_EDGE_BOUNDARY",
    "line": "ROAD_LINE_SOLID_SINGLE_WHITE",
    "none": None,
}
_FEATURE_TYPES: Final[dict[str, str]] = {
    "lane": "LANE_SURFACE_STREET",
    "yellow": "ROAD_LINE_SOLID_DOUBLE_YELLOW",
    "white": "ROAD_LINE_BROKEN_SINGLE_WHITE",
    "crosswalk": "CROSSWALK",
}


def _spec(style: str | StyleSpec) -> StyleSpec:
    if isinstance(style, StyleSpec):
        return style
    if style not in STYLES:
        raise TarotInputError(f"synthetic motion: unknown style {style!r} (known: {', '.join(STYLES)})")
    return STYLES[style]


def generate_scenario(
    style: str | StyleSpec, index: int, seed: int = 0, steps: int = 81, split: str = "train"
) -> Scenario:
    """One synthetic scene of ``style``, covering ``(steps - 1) × 0.1`` seconds at the style's native rate.

    Parameters
    ----------
    style : str or StyleSpec
        A name of :data:`STYLES` or a spec.
    index, seed, split
        Select the scene's generator (:func:`scene_rng`).
    steps : int, default 81
        Steps at 10 Hz the scene must cover after resampling (history + future).

    Returns
    -------
    Scenario
        World-frame tracks (the recording vehicle ``"0"`` first) and map, with the style's
        conventions (offset, rotation, mirroring, native rate, noise) applied.
    """
    st = _spec(style)
    if steps < 2:
        raise TarotInputError(f"synthetic motion: steps must be >= 2, got {steps}")
    rng = scene_rng(seed, st.name, split, index)
    span = (steps - 1) * 0.1
    native_steps = math.floor(span / st.native_dt + 1e-6) + 1
    factor = round(st.native_dt / SIM_DT)
    sim_span = span * (2.0 if st.clock_glitch else 1.0)
    sim_steps = round(sim_span / SIM_DT) + 1
    lay = _layout(_choose(st.layouts, rng), rng)
    ag = _draw_agents(lay, st, rng, sim_span)
    sim = _simulate(ag, st, rng, sim_steps)
    idx = np.arange(native_steps) * factor
    if st.clock_glitch:  # from step g on, every other frame is lost
        g = int(rng.integers(int(0.2 * native_steps), int(0.5 * native_steps) + 1))
        t = np.arange(native_steps)
        idx = np.where(t < g, t, g + 2 * (t - g)) * factor
    idx = np.minimum(idx, sim_steps - 1)
    pos, head, speed, valid = (sim[k][:, idx] for k in ("pos", "head", "speed", "valid"))
    n, t_n = valid.shape
    # occlusions: a gap of 0.5-2 s for some agents (never the recording vehicle)
    for i in range(1, n):
        if rng.random() < st.occlusion_prob:
            length = int(rng.uniform(0.5, 2.0) / st.native_dt) + 1
            start = int(rng.integers(0, max(1, t_n - length)))
            valid[i, start : start + length] = False
    vel = speed[..., None] * np.stack([np.cos(head), np.sin(head)], axis=-1)
    pos = pos + rng.normal(0.0, st.position_noise, pos.shape)
    head = head + rng.normal(0.0, st.heading_noise, head.shape)
    vel = vel + rng.normal(0.0, st.velocity_noise, vel.shape) * (speed[..., None] > 0)
    # conventions: mirrored (left-hand) world, then a global rotation and offset
    mirror = bool(rng.random() < st.left_hand_prob)
    phi = float(rng.uniform(-math.pi, math.pi)) if st.random_rotation else 0.0
    offset = rng.uniform(-st.offset_scale, st.offset_scale, size=2)

    def world(p: np.ndarray, translate: bool = True) -> np.ndarray:
        q = p * np.array([1.0, -1.0]) if mirror else p
        q = _rot(q, phi)
        return q + offset if translate else q

    pos = world(pos)
    vel = world(vel, translate=False)
    head = np.mod((-head if mirror else head) + phi + np.pi, 2 * np.pi) - np.pi
    tracks = {}
    for i in range(n):
        v = valid[i]
        p3 = np.zeros((t_n, 3))
        p3[:, :2] = pos[i]
        size = np.tile(np.asarray(ag.size[i], float), (t_n, 1))
        tracks[str(i)] = Track(
            track_id=str(i),
            object_type=ag.kind[i],
            position=np.where(v[:, None], p3, 0.0),
            heading=np.where(v, head[i], 0.0),
            velocity=np.where(v[:, None], vel[i], 0.0),
            valid=v,
            size=np.where(v[:, None], size, 0.0),
        )
    feats = {}
    edge_type = _EDGE_TYPES[st.edges]
    for j, (cls, geom, pts) in enumerate(lay.features):
        ftype = _FEATURE_TYPES.get(cls)
        if cls in ("edge", "median"):
            ftype = edge_type
            if ftype == "ROAD_EDGE_BOUNDARY" and cls == "median":
                ftype = "ROAD_EDGE_MEDIAN"
        if ftype is None:
            continue
        p = pts if geom == "polygon" else _resample(pts, st.map_spacing)
        p3 = np.zeros((len(p), 3))
        p3[:, :2] = world(p)
        feats[str(1000 + j)] = MapFeature(
            feature_id=str(1000 + j),
            feature_type=ftype,
            polyline=p3 if geom == "polyline" else None,
            polygon=p3 if geom == "polygon" else None,
        )
    to_predict: tuple[str, ...] = ()
    if st.tracks_to_predict:
        moving = [
            str(i)
            for i in range(n)
            if valid[i].all() and ag.kind[i] != "PEDESTRIAN" and np.linalg.norm(pos[i, -1] - pos[i, 0]) > 2.0
        ]
        if moving:
            k = min(st.tracks_to_predict, len(moving))
            to_predict = tuple(sorted(rng.choice(moving, size=k, replace=False).tolist(), key=int))
    return Scenario(
        scenario_id=f"{st.name}-{split}-{index:06d}",
        dataset=st.dataset,
        version=st.version,
        timestamps=np.arange(t_n) * st.native_dt,
        tracks=tracks,
        map_features=feats,
        sdc_id="0",
        tracks_to_predict=to_predict,
        coordinate="right-handed",
        extra_metadata={"synthetic_style": st.name, "left_hand_traffic": mirror},
    )


def generate_scenarios(
    style: str | StyleSpec, n: int, seed: int = 0, steps: int = 81, split: str = "train", start: int = 0
) -> list[Scenario]:
    """Scenes ``start .. start + n - 1`` of ``style`` (see :func:`generate_scenario`)."""
    if n < 0:
        raise TarotInputError(f"synthetic motion: n must be >= 0, got {n}")
    return [generate_scenario(style, start + i, seed, steps, split) for i in range(n)]


def write_synthetic(
    folder: str | os.PathLike[str],
    style: str | StyleSpec,
    n: int,
    seed: int = 0,
    steps: int = 81,
    split: str = "train",
    workers: int | None = 2,
    overwrite: bool = False,
) -> Path:
    """Generate ``n`` scenes of ``style`` and write them as a ScenarioNet folder (the style's array layout).

    Returns
    -------
    Path
        ``folder``, readable by :func:`~.scenarionet.list_scenarios` / :func:`~.scenarionet.read_scenario`.
    """
    st = _spec(style)
    scenes = generate_scenarios(st, n, seed, steps, split)
    write_scenarionet(folder, scenes, workers=workers, options=st.write, overwrite=overwrite)
    return Path(folder)


def style_names() -> list[str]:
    """Every style name."""
    return list(STYLES)


def replace_style(style: str | StyleSpec, **changes: object) -> StyleSpec:
    """A copy of a style with some fields changed (e.g. ``native_dt``)."""
    return dataclasses.replace(_spec(style), **changes)  # type: ignore[arg-type]
