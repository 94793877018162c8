"""Procedural street scenes of the synthetic (mini) segmentation task (numpy / scipy only, no torch).

Every image is drawn from its own generator, seeded with ``[seed, stream, style, index]``
(:func:`scene_rng`), so an image does not change when other sources, sizes or counts change.

Scene
-----
A street seen from a car, in image coordinates ``u`` (across, 0..1) and ``v`` (down, 0..1):
a horizon at ``v`` in [0.36, 0.50] and a vanishing point at ``u`` in [0.38, 0.62]; a road
(trapezoid to the vanishing point, with a dashed centre line) between two sidewalks; below
the horizon beside the sidewalks building fronts or hedges; above it a skyline of buildings
on both sides (2 to 4 blocks each, windows as a grid of darker cells, taller near the
camera), an optional band of distant buildings and the sky. Objects are drawn far to near
over that: trees (crown and trunk: ``vegetation``) and poles at the kerbs, persons on the
sidewalks and cars on the road, sized by their distance. Labels are Cityscapes train ids
of eight classes (:data:`SCENE_CLASSES`): road 0, sidewalk 1, building 2, pole 5,
vegetation 8, sky 10, person 11, car 13.

Styles (candidate sources)
--------------------------
``day``          blue sky, neutral light, green vegetation
``dusk``         orange-to-violet sky, warm and dimmer light
``night``        black sky, light at 25 %, lit windows, head lights and street lamps, more noise
``fog``          grey sky, every pixel blended towards grey with its distance
``desert``       sand-coloured road, sidewalks and buildings, pale sky, **no vegetation**
                 (hedges become building fronts, no trees)
``mislabelled``  rendered exactly as ``day``, but the labels are swapped: road ↔ sidewalk,
                 building ↔ sky, car ↔ person (the same images as ``day`` would give other
                 labels): with day scenes in the target, these labels contradict it, so
                 training on them hurts. It can never be a target style.

Candidates are rendered sharp with mild noise (σ = 0.02), as a game engine would.

Target domain ("real" camera)
-----------------------------
Targets and evaluation images are a balanced mixture of the target styles, each rendered
as above and then passed through a camera that no source has (:func:`real_camera`): a
per-image white balance (gains 1 + N(0, 0.06)) and gamma (0.85..1.15), 20 % desaturation,
Gaussian blur σ = 0.7 px, vignetting, sensor noise σ = 0.035, and the ego car's bonnet at
the bottom of the image (dark, labelled 255 = ignore, like Cityscapes' ego vehicle).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from scipy import ndimage

from ...errors import TarotInputError
from .labels import IGNORE

__all__ = [
    "ALL_STYLES",
    "BUILDING",
    "CAR",
    "MISLABEL",
    "NON_TARGET_STYLES",
    "PERSON",
    "POLE",
    "ROAD",
    "SCENE_CLASSES",
    "SIDEWALK",
    "SKY",
    "VEGETATION",
    "real_camera",
    "render_scene",
    "scene_rng",
    "synthesize",
]

# Cityscapes train ids of the classes a scene holds (tests check them against the official table).
ROAD: Final[int] = 0
SIDEWALK: Final[int] = 1
BUILDING: Final[int] = 2
POLE: Final[int] = 5
VEGETATION: Final[int] = 8
SKY: Final[int] = 10
PERSON: Final[int] = 11
CAR: Final[int] = 13
SCENE_CLASSES: Final[dict[str, int]] = {
    "road": ROAD,
    "sidewalk": SIDEWALK,
    "building": BUILDING,
    "pole": POLE,
    "vegetation": VEGETATION,
    "sky": SKY,
    "person": PERSON,
    "car": CAR,
}

#: Every style the generator knows, in a fixed order (the order seeds the streams).
ALL_STYLES: Final[tuple[str, ...]] = ("day", "dusk", "night", "fog", "desert", "mislabelled")
#: Styles that may not appear in the target mixture (target labels are always correct).
NON_TARGET_STYLES: Final[frozenset[str]] = frozenset({"mislabelled"})
#: The label swap of the ``mislabelled`` style (an involution: applying it twice is the identity).
MISLABEL: Final[dict[int, int]] = {
    ROAD: SIDEWALK,
    SIDEWALK: ROAD,
    BUILDING: SKY,
    SKY: BUILDING,
    CAR: PERSON,
    PERSON: CAR,
}

_RGB = tuple[float, float, float]


class _Look:
    """Colours and light of one style."""

    def __init__(
        self,
        sky_top: _RGB,
        sky_horizon: _RGB,
        road: _RGB,
        sidewalk: _RGB,
        building: _RGB,
        vegetation: _RGB,
        light: float = 1.0,
        tint: _RGB = (1.0, 1.0, 1.0),
        fog: float = 0.0,
        night: bool = False,
        vegetation_allowed: bool = True,
        building_spread: float = 0.12,
    ) -> None:
        self.sky_top, self.sky_horizon = np.array(sky_top), np.array(sky_horizon)
        self.road, self.sidewalk = np.array(road), np.array(sidewalk)
        self.building, self.vegetation = np.array(building), np.array(vegetation)
        self.light, self.tint, self.fog, self.night = light, np.array(tint), fog, night
        self.vegetation_allowed, self.building_spread = vegetation_allowed, building_spread


_DAY = _Look(
    (0.30, 0.50, 0.88),
    (0.70, 0.80, 0.95),
    (0.33, 0.33, 0.35),
    (0.62, 0.58, 0.54),
    (0.55, 0.47, 0.42),
    (0.20, 0.45, 0.16),
)
_LOOKS: Final[dict[str, _Look]] = {
    "day": _DAY,
    "dusk": _Look(
        (0.22, 0.14, 0.38),
        (0.95, 0.55, 0.30),
        (0.33, 0.32, 0.35),
        (0.60, 0.55, 0.52),
        (0.55, 0.45, 0.42),
        (0.20, 0.42, 0.18),
        light=0.7,
        tint=(1.05, 0.78, 0.62),
    ),
    "night": _Look(
        (0.01, 0.01, 0.04),
        (0.04, 0.04, 0.08),
        (0.30, 0.30, 0.33),
        (0.50, 0.48, 0.46),
        (0.50, 0.45, 0.42),
        (0.18, 0.35, 0.16),
        light=0.25,
        tint=(0.85, 0.9, 1.1),
        night=True,
    ),
    "fog": _Look(
        (0.78, 0.79, 0.81),
        (0.84, 0.85, 0.86),
        (0.36, 0.36, 0.38),
        (0.62, 0.60, 0.58),
        (0.55, 0.50, 0.47),
        (0.25, 0.42, 0.22),
        light=0.95,
        fog=0.8,
    ),
    "desert": _Look(
        (0.62, 0.74, 0.90),
        (0.93, 0.90, 0.82),
        (0.62, 0.54, 0.42),
        (0.82, 0.72, 0.56),
        (0.86, 0.73, 0.55),
        (0.20, 0.45, 0.16),
        light=1.1,
        vegetation_allowed=False,
        building_spread=0.06,
    ),
    "mislabelled": _DAY,
}

# Sensor noise (std of pixel values in [0, 1]) of the candidates' synthetic camera (twice that at night).
_NOISE_CANDIDATE: Final[float] = 0.02


def scene_rng(seed: int, stream: int, style: str, index: int) -> np.random.Generator:
    """Generator of image ``index`` of ``style`` in ``stream`` (see the module docstring)."""
    return np.random.default_rng([seed, stream, ALL_STYLES.index(style), index])


def _check_style(style: str) -> None:
    if style not in ALL_STYLES:
        raise TarotInputError(f"unknown segmentation style {style!r}; choose from {', '.join(ALL_STYLES)}")


class _Canvas:
    """An image ``(h, w, 3)``, its labels ``(h, w)`` and a distance map ``(h, w)`` (0 near, 1 far)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.v, self.u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        self.img = np.zeros((h, w, 3))
        self.lab = np.full((h, w), IGNORE, dtype=np.uint8)
        self.far = np.ones((h, w))

    def paint(
        self, mask: np.ndarray, label: int, color: np.ndarray | Callable[[], np.ndarray], far: float | np.ndarray
    ) -> None:
        """Give ``mask``'s pixels ``label``, ``color`` (an RGB triple or an ``(h, w, 3)`` map) and distance ``far``."""
        self.lab[mask] = label
        col = color() if callable(color) else color
        self.img[mask] = col[mask] if col.ndim == 3 else col
        self.far[mask] = far[mask] if isinstance(far, np.ndarray) else far


def _buildings(c: _Canvas, rng: np.random.Generator, look: _Look, hz: float, vp: float, side: int) -> None:
    """The skyline on one side (``side`` -1: left, +1: right): 2..4 blocks above the horizon."""
    end = vp - side * rng.uniform(0.04, 0.2)
    span = (0.0, end) if side < 0 else (end, 1.0)
    cuts = np.sort(rng.uniform(*span, size=rng.integers(1, 4)))
    edges = np.concatenate([[span[0]], cuts, [span[1]]])
    near_top, far_top = rng.uniform(-0.1, 0.15), hz - rng.uniform(0.05, 0.15)
    for a, b in itertools.pairwise(edges):
        mid = 0.5 * (a + b)
        closeness = abs(mid - end) / max(abs(span[1] - span[0]), 1e-6)  # 0 at the far end, 1 at the image edge
        top = far_top + (near_top - far_top) * closeness + rng.normal(0.0, 0.05)
        mask = (c.u >= a) & (c.u < b) & (c.v < hz) & (c.v >= top)
        base = np.clip(look.building + rng.normal(0.0, look.building_spread, 3), 0.05, 1.0)
        period = rng.uniform(3.0, 6.0)
        rows = ((c.v * c.h) / period) % 1.0 < 0.55
        cols = ((c.u * c.w) / period + rng.uniform()) % 1.0 < 0.5
        window = rows & cols & (c.v > top + 0.03)
        col = np.broadcast_to(base, c.img.shape).copy()
        if look.night:
            cell = np.floor(c.v * c.h / period) * 97 + np.floor(c.u * c.w / period) * 13
            col[window] = 0.35 * base
            col[window & ((cell + rng.integers(1000)) % 5 == 0)] = (2.6, 2.3, 1.2)  # lit windows
        else:
            col[window] = 0.6 * base
        c.paint(mask, BUILDING, col, 0.4 + 0.6 * (1.0 - closeness))


def _ground(c: _Canvas, rng: np.random.Generator, look: _Look, hz: float, vp: float) -> dict[str, float]:
    """Road, sidewalks and what lies beside them; returns the road and kerb geometry."""
    t = np.clip((c.v - hz) / (1.0 - hz), 0.0, 1.0)
    road_l, road_r = rng.uniform(-0.35, 0.1), rng.uniform(0.9, 1.35)
    side_l, side_r = road_l - rng.uniform(0.25, 0.6), road_r + rng.uniform(0.25, 0.6)
    edge = {name: vp + (x - vp) * t for name, x in (("rl", road_l), ("rr", road_r), ("sl", side_l), ("sr", side_r))}
    ground = c.v >= hz
    road = ground & (c.u >= edge["rl"]) & (c.u <= edge["rr"])
    walk = ground & ~road & (c.u >= edge["sl"]) & (c.u <= edge["sr"])
    texture = rng.normal(0.0, 0.025, c.img.shape)
    c.paint(road, ROAD, np.clip(look.road + texture, 0, 1), 1.0 - t)
    centre = vp + (0.5 * (road_l + road_r) - vp) * t
    dash = (
        road & (np.abs(c.u - centre) < 0.004 + 0.012 * t) & (np.sin(25.0 * np.sqrt(t + 1e-6) + rng.uniform(0, 6)) > 0)
    )
    c.img[dash] = (0.85, 0.85, 0.8)
    c.paint(walk, SIDEWALK, np.clip(look.sidewalk + texture, 0, 1), 1.0 - t)
    for side, beyond in ((-1, ground & (c.u < edge["sl"])), (1, ground & (c.u > edge["sr"]))):
        if look.vegetation_allowed and rng.random() < 0.4:
            c.paint(beyond, VEGETATION, np.clip(look.vegetation + 1.5 * texture, 0, 1), 1.0 - t)
        else:
            c.paint(beyond, BUILDING, np.clip(look.building * 0.8 + texture, 0, 1), 1.0 - t)
    return {"hz": hz, "vp": vp, "road_l": road_l, "road_r": road_r, "side_l": side_l, "side_r": side_r}


def _at(geo: dict[str, float], name: str, t: float) -> float:
    """``u`` of line ``name`` (``road_l``, ``side_r``, ...) at nearness ``t``."""
    return geo["vp"] + (geo[name] - geo["vp"]) * t


def _objects(c: _Canvas, rng: np.random.Generator, look: _Look, geo: dict[str, float]) -> None:
    """Trees, poles, persons and cars, drawn far to near."""
    hz = geo["hz"]
    items: list[tuple[float, str, int]] = []
    n_trees = rng.integers(0, 4) if look.vegetation_allowed else 0
    items += [(rng.uniform(0.15, 0.8), "tree", rng.choice([-1, 1])) for _ in range(n_trees)]
    items += [(rng.uniform(0.1, 0.9), "pole", rng.choice([-1, 1])) for _ in range(rng.integers(1, 4))]
    items += [(rng.uniform(0.2, 0.95), "person", rng.choice([-1, 1])) for _ in range(rng.integers(0, 4))]
    items += [(rng.uniform(0.1, 1.0), "car", 0) for _ in range(rng.integers(1, 5))]
    items.sort(key=lambda it: it[0])
    x, y = c.u * c.w, c.v * c.h  # pixel coordinates
    for t, kind, side in items:
        vb = hz + t * (1.0 - hz)  # where the object stands
        yb = vb * c.h
        scale = t * c.h  # pixels per unit of object size at that distance
        far = 1.0 - t
        if kind in ("tree", "pole", "person"):
            kerb, outer = (
                (_at(geo, "road_l", t), _at(geo, "side_l", t))
                if side < 0
                else (_at(geo, "road_r", t), _at(geo, "side_r", t))
            )
        if kind == "tree":
            xb = (outer + 0.7 * (kerb - outer)) * c.w
            r = (0.25 + 0.2 * rng.random()) * scale + 1.0
            yc = yb - 2.2 * r
            theta = np.arctan2(y - yc, x - xb)
            wobble = 1.0 + 0.15 * np.sin(5 * theta + rng.uniform(0, 6))
            crown = (x - xb) ** 2 + (y - yc) ** 2 < (r * wobble) ** 2
            trunk = (np.abs(x - xb) < max(0.5, 0.12 * r)) & (y <= yb) & (y >= yc)
            col = np.clip(look.vegetation + rng.normal(0, 0.04, 3) + rng.normal(0, 0.05, c.img.shape), 0, 1)
            c.paint(trunk, VEGETATION, np.array((0.3, 0.22, 0.15)), far)
            c.paint(crown, VEGETATION, col, far)
        elif kind == "pole":
            xb = (kerb + 0.15 * (outer - kerb)) * c.w
            top = yb - (0.9 + 0.4 * rng.random()) * scale - 2.0
            width = max(1.0, 0.05 * scale + 0.6)
            mask = (np.abs(x - xb) < width / 2) & (y <= yb) & (y >= top)
            c.paint(mask, POLE, np.array((0.28, 0.28, 0.3)), far)
            if look.night:
                glow = np.exp(-((x - xb) ** 2 + (y - top) ** 2) / (2 * (0.15 * scale + 1.5) ** 2))
                c.img += 1.2 * glow[..., None] * np.array((1.0, 0.85, 0.5))
        elif kind == "person":
            xb = (kerb + rng.uniform(0.2, 0.8) * (outer - kerb)) * c.w
            height = (0.35 + 0.1 * rng.random()) * scale + 2.0
            half = max(0.6, 0.14 * height)
            body = (np.abs(x - xb) < half) & (y <= yb) & (y >= yb - 0.8 * height)
            head = (x - xb) ** 2 + (y - (yb - 0.88 * height)) ** 2 < (0.6 * half + 0.3) ** 2
            cloth = rng.uniform(0.05, 0.7, 3)
            c.paint(body, PERSON, cloth, far)
            c.paint(head, PERSON, np.array((0.85, 0.65, 0.5)), far)
        else:  # car
            lo, hi = _at(geo, "road_l", t), _at(geo, "road_r", t)
            width = (0.2 + 0.06 * rng.random()) * (hi - lo) * c.w + 2.0
            xc = rng.uniform(lo, hi) * c.w
            height = 0.55 * width
            body = (np.abs(x - xc) < width / 2) & (y <= yb) & (y >= yb - 0.6 * height)
            cabin = (np.abs(x - xc) < 0.35 * width) & (y < yb - 0.6 * height) & (y >= yb - height)
            paint = rng.uniform(0.05, 0.95, 3)
            col = np.broadcast_to(paint, c.img.shape).copy()
            col[cabin] = 0.25 * paint + 0.1
            c.paint(body | cabin, CAR, col, far)
            if look.night:
                for dx in (-0.35, 0.35):
                    spot = (x - (xc + dx * width)) ** 2 + (y - (yb - 0.3 * height)) ** 2 < (0.08 * width + 0.6) ** 2
                    c.img[spot & body] = (3.5, 3.2, 2.2)


def render_scene(style: str, size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene of ``style`` (candidate look: sharp, mild noise).

    Parameters
    ----------
    style : str
        One of :data:`ALL_STYLES`.
    size : (int, int)
        ``(height, width)`` in pixels.
    rng : np.random.Generator
        The image's generator (:func:`scene_rng`); every random choice comes from it.

    Returns
    -------
    image : np.ndarray, shape (H, W, 3), float64 in [0, 1]
    labels : np.ndarray, shape (H, W), uint8
        Train ids of :data:`SCENE_CLASSES` (swapped by :data:`MISLABEL` for ``mislabelled``).
    """
    _check_style(style)
    look = _LOOKS[style]
    h, w = int(size[0]), int(size[1])
    c = _Canvas(h, w)
    hz, vp = rng.uniform(0.36, 0.5), rng.uniform(0.38, 0.62)
    sky = c.v < hz
    gradient = (c.v / hz)[..., None]
    c.paint(sky, SKY, look.sky_top + (look.sky_horizon - look.sky_top) * np.clip(gradient, 0, 1), 1.0)
    if rng.random() < 0.5:
        band = sky & (c.v >= hz - rng.uniform(0.02, 0.08))
        c.paint(band, BUILDING, np.clip(look.building * 0.9 + rng.normal(0, 0.05, 3), 0, 1), 1.0)
    for side in (-1, 1):
        _buildings(c, rng, look, hz, vp, side)
    geo = _ground(c, rng, look, hz, vp)
    _objects(c, rng, look, geo)
    img = c.img * look.light * look.tint
    if look.fog > 0:
        alpha = (look.fog * (0.2 + 0.8 * c.far))[..., None]
        img = (1.0 - alpha) * img + alpha * np.array((0.82, 0.83, 0.85))
    img = img + rng.normal(0.0, _NOISE_CANDIDATE * (2.0 if look.night else 1.0), img.shape)
    labels = c.lab
    if style == "mislabelled":
        swapped = labels.copy()
        for a, b in MISLABEL.items():
            swapped[labels == a] = b
        labels = swapped
    return np.clip(img, 0.0, 1.0), labels


def real_camera(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The target domain's camera (see the module docstring) applied to one rendered scene.

    Parameters
    ----------
    image : np.ndarray, shape (H, W, 3), float in [0, 1]
    labels : np.ndarray, shape (H, W), uint8
    rng : np.random.Generator

    Returns
    -------
    (np.ndarray, np.ndarray)
        The image ``(H, W, 3)`` in [0, 1] and the labels with the bonnet set to 255.
    """
    h, w = labels.shape
    gains = 1.0 + rng.normal(0.0, 0.06, 3)
    gamma = rng.uniform(0.85, 1.15)
    img = np.clip(image * gains, 0.0, 1.0) ** gamma
    grey = img.mean(axis=2, keepdims=True)
    img = 0.8 * img + 0.2 * grey
    img = ndimage.gaussian_filter(img, sigma=(0.7, 0.7, 0.0))
    v, u = np.meshgrid((np.arange(h) + 0.5) / h - 0.5, (np.arange(w) + 0.5) / w - 0.5, indexing="ij")
    img = img * (1.0 - 0.35 * (u**2 + v**2))[..., None]
    img = img + rng.normal(0.0, 0.035, img.shape)
    bonnet_top = 1.0 - rng.uniform(0.06, 0.1) + 0.12 * (2.0 * u) ** 2
    bonnet = (v + 0.5) >= bonnet_top
    img[bonnet] = np.array((0.08, 0.08, 0.1)) + rng.normal(0.0, 0.02, (int(bonnet.sum()), 3))
    out = labels.copy()
    out[bonnet] = IGNORE
    return np.clip(img, 0.0, 1.0), out


def synthesize(
    styles: Sequence[str], size: tuple[int, int], seed: int, stream: int, real: bool, first: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image per entry of ``styles`` (the ``k``-th image of a style is its index
    ``first + k`` in ``stream``), candidate look or, with ``real``, through :func:`real_camera`.

    Returns
    -------
    images : np.ndarray, shape (n, 3, H, W), uint8
    labels : np.ndarray, shape (n, H, W), uint8
    """
    h, w = int(size[0]), int(size[1])
    images = np.empty((len(styles), 3, h, w), dtype=np.uint8)
    labels = np.empty((len(styles), h, w), dtype=np.uint8)
    counters: dict[str, int] = {}
    for i, style in enumerate(styles):
        _check_style(style)
        k = counters.get(style, first)
        counters[style] = k + 1
        rng = scene_rng(seed, stream, style, k)
        img, lab = render_scene(style, (h, w), rng)
        if real:
            img, lab = real_camera(img, lab, rng)
        images[i] = np.round(255.0 * img).astype(np.uint8).transpose(2, 0, 1)
        labels[i] = lab
    return images, labels
