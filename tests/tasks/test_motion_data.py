"""The data layer of the motion task: ScenarioNet reading/writing, agent-centric cutting, synthetic scenes, samples."""

from __future__ import annotations

import math
import os
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tarot_select.errors import TarotInputError
from tarot_select.tasks.motion import synthetic as syn
from tarot_select.tasks.motion.agent_centric import (
    CutConfig,
    cut_folder,
    cut_scenario,
    map_class,
    map_pieces,
    resample_scenario,
    resample_track,
    to_agent_frame,
    wrap_angle,
)
from tarot_select.tasks.motion.sample import (
    AGENT_COS,
    AGENT_FEATURES,
    AGENT_IS_PEDESTRIAN,
    AGENT_IS_VEHICLE,
    AGENT_SIN,
    AGENT_VX,
    AGENT_VY,
    AGENT_X,
    AGENT_Y,
    MAP_DX,
    MAP_DY,
    MAP_FEATURES,
    MAP_IS_CROSSWALK,
    MAP_IS_LANE,
    MotionSamples,
)
from tarot_select.tasks.motion.scenarionet import (
    MAPPING_FILE,
    SUMMARY_FILE,
    MapFeature,
    Scenario,
    Track,
    list_scenarios,
    read_scenario,
    scenario_file_name,
    write_scenarionet,
)

# --------------------------------------------------------------------------- helpers


def straight_track(tid, start, heading, speed, steps=81, dt=0.1, kind="VEHICLE", t0=0.0):
    """A track moving at constant ``speed`` along ``heading`` from ``start``, valid everywhere."""
    t = t0 + np.arange(steps) * dt
    d = np.array([math.cos(heading), math.sin(heading)])
    pos = np.zeros((steps, 3))
    pos[:, :2] = np.asarray(start, float) + np.outer((t - t0) * speed, d)
    return Track(
        track_id=tid,
        object_type=kind,
        position=pos,
        heading=np.full(steps, heading),
        velocity=np.tile(d * speed, (steps, 1)),
        valid=np.ones(steps, bool),
        size=np.tile([4.5, 2.0, 1.5], (steps, 1)),
    )


def scenario(tracks, features=(), steps=81, dt=0.1, **kw):
    return Scenario(
        scenario_id=kw.pop("scenario_id", "s1"),
        dataset=kw.pop("dataset", "toy"),
        version=kw.pop("version", "v0"),
        timestamps=np.arange(steps) * dt,
        tracks={t.track_id: t for t in tracks},
        map_features={f.feature_id: f for f in features},
        sdc_id=kw.pop("sdc_id", tracks[0].track_id),
        **kw,
    )


def raw_scenario(sid, steps=11, valid=None, nuscenes_layout=False):
    """A scenario dict as a converter pickles it (WOMD layout, or nuScenes': (T,1) sizes, float valid, 2-D map)."""
    v = np.ones(steps, bool) if valid is None else np.asarray(valid, bool)
    pos = np.zeros((steps, 3), np.float32)
    pos[:, 0] = np.arange(steps, dtype=np.float32)
    pos[~v] = 0
    size = np.full(steps, 4.5, np.float32)
    state = {
        "position": pos,
        "heading": np.zeros(steps, np.float32),
        "velocity": np.tile(np.float32([10.0, 0.0]), (steps, 1)) * v[:, None],
        "valid": v.astype(np.float64) if nuscenes_layout else v,
        "length": size[:, None] if nuscenes_layout else size,
        "width": (size / 2)[:, None] if nuscenes_layout else size / 2,
        "height": (size / 3)[:, None] if nuscenes_layout else size / 3,
    }
    lane = np.array([[0, -2, 0], [10, -2, 0], [20, -2, 0]], np.float32)
    meta = {
        "id": sid,
        "scenario_id": sid,
        "dataset": "toy",
        "ts": np.arange(steps, dtype=np.float32) / 10,
        "coordinate": "waymo",
        "metadrive_processed": False,
        "sdc_id": "7",
        "current_time_index": 3,
        "tracks_to_predict": {"7": {"track_index": 0, "track_id": "7", "difficulty": 0, "object_type": "VEHICLE"}},
        "number_summary": {
            "num_moving_objects_each_type": defaultdict(int, {"VEHICLE": 1}),
            "object_types": {"VEHICLE"},
        },
    }
    return {
        "id": sid,
        "version": "v0",
        "length": steps,
        "metadata": meta,
        "tracks": {"7": {"type": "VEHICLE", "state": state, "metadata": {"type": "VEHICLE", "object_id": "7"}}},
        "dynamic_map_states": {},
        "map_features": {
            "100": {"type": "LANE_SURFACE_STREET", "polyline": lane[:, :2] if nuscenes_layout else lane},
            "101": {"type": "CROSSWALK", "polygon": np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)},
            "102": {"type": "STOP_SIGN", "lane": [100], "position": np.zeros(3, np.float32)},
        },
    }


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def handmade_folder(root: Path) -> dict[str, dict]:
    """Two workers' sub-folders (``root_0``, ``root_1``) as a ScenarioNet conversion leaves them."""
    scenes = {
        "sd_toy_v0_a.pkl": ("root_0", raw_scenario("a")),
        "sd_toy_v0_b.pkl": ("root_1", raw_scenario("b", valid=[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0], nuscenes_layout=True)),
    }
    summary, mapping = {}, {}
    for name, (sub, raw) in scenes.items():
        dump(root / sub / name, raw)
        dump(root / sub / SUMMARY_FILE, {name: {"id": raw["id"]}})
        dump(root / sub / MAPPING_FILE, {name: ""})
        info = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in raw["metadata"].items()}
        info["counts"] = defaultdict(int, {"VEHICLE": 1})
        summary[name] = info
        mapping[name] = sub
    dump(root / SUMMARY_FILE, summary)
    dump(root / MAPPING_FILE, mapping)
    return {name: raw for name, (_, raw) in scenes.items()}


# --------------------------------------------------------------------------- ScenarioNet reader


def test_reads_handmade_folder_with_worker_subfolders_exactly(tmp_path):
    root = tmp_path / "root"
    raws = handmade_folder(root)
    entries = list_scenarios(root)
    assert [e.name for e in entries] == ["sd_toy_v0_a.pkl", "sd_toy_v0_b.pkl"]
    assert entries[0].path == root / "root_0" / "sd_toy_v0_a.pkl"
    assert entries[1].path == root / "root_1" / "sd_toy_v0_b.pkl"
    assert isinstance(entries[0].summary["counts"], defaultdict) and entries[0].summary["counts"]["VEHICLE"] == 1

    a = read_scenario(entries[0])
    raw = raws["sd_toy_v0_a.pkl"]
    assert (a.scenario_id, a.dataset, a.version, a.length, a.sdc_id) == ("a", "toy", "v0", 11, "7")
    assert a.current_time_index == 3 and a.tracks_to_predict == ("7",) and a.path == entries[0].path
    np.testing.assert_array_equal(a.timestamps, raw["metadata"]["ts"])
    assert a.dt == pytest.approx(0.1)
    tr = a.tracks["7"]
    np.testing.assert_array_equal(tr.position, raw["tracks"]["7"]["state"]["position"])
    np.testing.assert_array_equal(tr.velocity, raw["tracks"]["7"]["state"]["velocity"])
    np.testing.assert_array_equal(tr.size[:, 0], raw["tracks"]["7"]["state"]["length"])
    np.testing.assert_array_equal(tr.size[:, 2], raw["tracks"]["7"]["state"]["height"])
    assert tr.valid.dtype == bool and tr.valid.all() and tr.object_type == "VEHICLE"
    assert set(a.map_features) == {"100", "101"}  # the stop sign has no line
    np.testing.assert_array_equal(a.map_features["100"].polyline, raw["map_features"]["100"]["polyline"])
    assert a.map_features["101"].polygon.shape == (4, 3) and a.map_features["101"].polyline is None

    # nuScenes layout: (T, 1) sizes, 0./1. validity, 2-D map points
    b = read_scenario(entries[1])
    tb = b.tracks["7"]
    np.testing.assert_array_equal(tb.valid, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(tb.size[:, 1], np.where(tb.valid, 2.25, 0.0))
    np.testing.assert_array_equal(b.map_features["100"].polyline[:, :2], [[0, -2], [10, -2], [20, -2]])
    np.testing.assert_array_equal(b.map_features["100"].polyline[:, 2], 0.0)


def test_writer_roundtrip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    scenes = []
    for k in range(3):
        tracks = [
            straight_track("0", rng.normal(size=2) * 50, rng.uniform(-3, 3), 8.0),
            straight_track("p", (3, 4), 1.0, 1.2, kind="PEDESTRIAN"),
        ]
        valid = tracks[1].valid.copy()
        valid[:5] = False
        tracks[1] = Track(
            "p",
            "PEDESTRIAN",
            np.where(valid[:, None], tracks[1].position, 0),
            np.where(valid, 1.0, 0),
            np.where(valid[:, None], tracks[1].velocity, 0),
            valid,
            np.where(valid[:, None], tracks[1].size, 0),
        )
        feats = [
            MapFeature("9", "LANE_SURFACE_STREET", polyline=np.c_[np.arange(5.0), np.zeros(5), np.zeros(5)]),
            MapFeature("10", "CROSSWALK", polygon=np.array([[0, 0, 0], [2, 0, 0], [2, 3, 0.0]])),
        ]
        scenes.append(scenario(tracks, feats, scenario_id=f"sc{k}", tracks_to_predict=("0",), current_time_index=10))
    written = write_scenarionet(tmp_path / "db", scenes, workers=2)
    assert [p.parent.name for p in written] == ["db_0", "db_1", "db_1"]
    assert written[0].name == scenario_file_name("toy", "v0", "sc0") == "sd_toy_v0_sc0.pkl"
    for sub in ("db_0", "db_1"):
        assert (tmp_path / "db" / sub / SUMMARY_FILE).is_file() and (tmp_path / "db" / sub / MAPPING_FILE).is_file()
    with open(tmp_path / "db" / SUMMARY_FILE, "rb") as fh:
        summary = pickle.load(fh)
    counts = summary["sd_toy_v0_sc0.pkl"]["number_summary"]["num_moving_objects_each_type"]
    assert isinstance(counts, defaultdict) and counts["VEHICLE"] == 1
    assert isinstance(summary["sd_toy_v0_sc0.pkl"]["ts"], list)  # arrays become lists in summaries
    with pytest.raises(TarotInputError, match="already holds"):
        write_scenarionet(tmp_path / "db", scenes)

    for sc, entry in zip(scenes, list_scenarios(tmp_path / "db"), strict=True):
        back = read_scenario(entry)
        assert back.scenario_id == sc.scenario_id and back.tracks_to_predict == ("0",) and back.current_time_index == 10
        for tid, tr in sc.tracks.items():
            got = back.tracks[tid]
            np.testing.assert_allclose(got.position, tr.position, atol=1e-4)  # stored as float32
            np.testing.assert_allclose(got.heading, tr.heading, atol=1e-6)
            np.testing.assert_array_equal(got.valid, tr.valid)
            assert got.object_type == tr.object_type
        np.testing.assert_allclose(back.map_features["10"].polygon, sc.map_features["10"].polygon)
        np.testing.assert_allclose(back.timestamps, sc.timestamps)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    root = tmp_path / "root"
    handmade_folder(root)
    marker = tmp_path / "PWNED"
    # a scenario file whose unpickling would call os.system
    dump(root / "root_0" / "sd_toy_v0_a.pkl", {"id": "a", "x": _Payload(marker)})
    entries = list_scenarios(root)  # listing does not open scenario files
    with pytest.raises(TarotInputError, match="refused to unpickle") as err:
        read_scenario(entries[0])
    assert "sd_toy_v0_a.pkl" in str(err.value) and "system" in str(err.value)
    # a summary file doing the same
    dump(root / SUMMARY_FILE, {"sd_toy_v0_a.pkl": _Payload(marker)})
    with pytest.raises(TarotInputError, match="refused to unpickle") as err:
        list_scenarios(root)
    assert SUMMARY_FILE in str(err.value)
    # any class other than the allowed numpy/defaultdict globals is refused too
    dump(root / "root_1" / "sd_toy_v0_b.pkl", {"when": Path("/etc")})
    with pytest.raises(TarotInputError, match="refused"):
        read_scenario(root / "root_1" / "sd_toy_v0_b.pkl")
    assert not marker.exists()


def test_numpy1_module_path_is_accepted(tmp_path):
    # numpy 1 pickles name numpy.core.multiarray, numpy 2 numpy._core.multiarray: both load
    raw = raw_scenario("a")
    del raw["metadata"]["number_summary"]  # protocol 2 spells int as __builtin__.long (not allowed)
    blob = pickle.dumps(raw, protocol=2)  # protocol 2 names globals as text lines
    other = b"numpy.core.multiarray" if b"numpy._core.multiarray" in blob else b"numpy._core.multiarray"
    blob = blob.replace(b"numpy._core.multiarray", other).replace(b"numpy.core.multiarray", other)
    assert other in blob
    (tmp_path / "sd_toy_v0_a.pkl").write_bytes(blob)
    sc = read_scenario(tmp_path / "sd_toy_v0_a.pkl")
    np.testing.assert_array_equal(sc.tracks["7"].position, raw["tracks"]["7"]["state"]["position"])


def test_missing_folder_summary_mapping_and_files_are_named(tmp_path):
    with pytest.raises(TarotInputError, match="not found") as err:
        list_scenarios(tmp_path / "nope")
    assert "nope" in str(err.value)
    root = tmp_path / "root"
    handmade_folder(root)
    (root / MAPPING_FILE).unlink()
    with pytest.raises(TarotInputError) as err:
        list_scenarios(root)
    assert str(root / MAPPING_FILE) in str(err.value)
    handmade_folder(root)
    (root / SUMMARY_FILE).unlink()
    with pytest.raises(TarotInputError) as err:
        list_scenarios(root)
    assert str(root / SUMMARY_FILE) in str(err.value)
    handmade_folder(root)
    (root / "root_1" / "sd_toy_v0_b.pkl").unlink()
    with pytest.raises(TarotInputError, match="missing") as err:
        list_scenarios(root)
    assert str(root / "root_1" / "sd_toy_v0_b.pkl") in str(err.value)
    assert len(list_scenarios(root, check_files=False)) == 2
    with pytest.raises(TarotInputError, match="not found") as err:
        read_scenario(root / "root_1" / "sd_toy_v0_b.pkl")
    # a damaged (truncated) scenario file
    blob = (root / "root_0" / "sd_toy_v0_a.pkl").read_bytes()
    (root / "root_0" / "sd_toy_v0_a.pkl").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TarotInputError, match="not a readable pickle") as err:
        read_scenario(root / "root_0" / "sd_toy_v0_a.pkl")
    assert "sd_toy_v0_a.pkl" in str(err.value)


def test_scenario_without_valid_track_and_malformed_dicts(tmp_path):
    p = tmp_path / "sd_toy_v0_x.pkl"
    dump(p, raw_scenario("x", valid=np.zeros(11)))
    with pytest.raises(TarotInputError, match="no track has a valid step") as err:
        read_scenario(p)
    assert str(p) in str(err.value)
    bad = raw_scenario("x")
    del bad["tracks"]
    dump(p, bad)
    with pytest.raises(TarotInputError, match="no tracks") as err:
        read_scenario(p)
    assert str(p) in str(err.value)
    bad = raw_scenario("x")
    bad["tracks"]["7"]["state"]["position"] = np.zeros((5, 3))
    dump(p, bad)
    with pytest.raises(TarotInputError, match="track 7: position") as err:
        read_scenario(p)
    assert str(p) in str(err.value)
    bad = raw_scenario("x")
    bad["map_features"]["100"]["polyline"] = np.zeros(4)
    dump(p, bad)
    with pytest.raises(TarotInputError, match="map feature 100"):
        read_scenario(p)
    dump(p, [1, 2, 3])
    with pytest.raises(TarotInputError, match="not a scenario dict"):
        read_scenario(p)


# --------------------------------------------------------------------------- agent-centric cutting


def test_frame_transform_north_heading_car_lands_on_positive_x():
    np.testing.assert_allclose(
        to_agent_frame(np.array([[10.0, 15.0]]), np.array([10.0, 5.0]), math.pi / 2), [[10.0, 0.0]], atol=1e-12
    )
    car = straight_track("car", (10.0, 5.0), math.pi / 2, 5.0)
    cfg = CutConfig(history=21, future=60, agents=2, polylines=2, points=5)
    s = cut_scenario(scenario([car]), cfg, source="toy")
    assert len(s) == 1 and s.track_id[0] == "car" and s.source[0] == "toy"
    assert s.agents.shape == (1, 2, 21, len(AGENT_FEATURES)) and s.future.shape == (1, 60, 2)
    # the future runs along +x: 0.5 m per step, y = 0
    np.testing.assert_allclose(s.future[0, :, 0], 0.5 * np.arange(1, 61), atol=1e-4)
    np.testing.assert_allclose(s.future[0, :, 1], 0.0, atol=1e-4)
    now = s.agents[0, 0, -1]
    np.testing.assert_allclose(
        now[[AGENT_X, AGENT_Y, AGENT_VX, AGENT_VY, AGENT_COS, AGENT_SIN]], [0, 0, 5, 0, 1, 0], atol=1e-5
    )
    assert now[AGENT_IS_VEHICLE] == 1 and now[AGENT_IS_PEDESTRIAN] == 0
    np.testing.assert_allclose(s.agents[0, 0, :, AGENT_X], -0.5 * np.arange(20, -1, -1), atol=1e-4)  # history behind
    # a point east of a north-heading car is on its right (-y); an eastward velocity points right too
    np.testing.assert_allclose(
        to_agent_frame(np.array([[11.0, 5.0], [10.0, 6.0]]), np.array([10.0, 5.0]), math.pi / 2),
        [[0.0, -1.0], [1.0, 0.0]],
        atol=1e-12,
    )
    east = straight_track("east", (12.0, 15.0), 0.0, 3.0)  # at step 20: (18, 15); the car: (10, 15)
    s2 = cut_scenario(scenario([car, east]), CutConfig(history=21, future=60, agents=2, polylines=1, points=2))
    assert list(s2.track_id) == ["car", "east"]
    np.testing.assert_allclose(s2.agents[0, 1, -1, :6], [0.0, -8.0, 0.0, -3.0, 0.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(s2.future[1, :3], [[0.3, 0.0], [0.6, 0.0], [0.9, 0.0]], atol=1e-5)
    np.testing.assert_allclose(s2.agents[1, 1, -1, :6], [-8.0, 0.0, 0.0, 5.0, 0.0, 1.0], atol=1e-5)  # seen from east
    assert s.agents_mask[0, 0].all() and not s.agents_mask[0, 1].any() and not s.agents[0, 1].any()


def test_history_future_lengths_and_padding_masks():
    car = straight_track("car", (0.0, 0.0), 0.0, 4.0, steps=30)
    other = straight_track("ped", (3.0, 3.0), 0.0, 1.0, steps=30, kind="PEDESTRIAN")
    valid = other.valid.copy()
    valid[:6] = False  # appears at step 6
    other = Track("ped", "PEDESTRIAN", other.position, other.heading, other.velocity, valid, other.size)
    cfg = CutConfig(history=11, future=25, agents=3, polylines=1, points=4, min_future_valid=1)
    s = cut_scenario(scenario([car, other], steps=30), cfg)
    assert len(s) == 1
    # current step 10; the scene ends at step 29: 19 future steps exist of 25
    np.testing.assert_array_equal(s.future_mask[0], np.arange(25) < 19)
    assert not s.future[0, 19:].any()
    assert s.agents.shape[2] == 11
    np.testing.assert_array_equal(s.agents_mask[0, 1], np.arange(11) >= 6)  # the pedestrian's history
    assert not s.agents[0, 1, :6].any() and s.agents[0, 1, 6:, AGENT_IS_PEDESTRIAN].all()
    assert not s.agents_mask[0, 2].any() and not s.agents[0, 2].any()  # padding row
    # current_index beyond the end: no sample; stride: one window every 5 steps with a future left
    assert (
        len(cut_scenario(scenario([car], steps=30), CutConfig(history=30, future=5, agents=1, polylines=1, points=2)))
        == 0
    )
    s2 = cut_scenario(
        scenario([car], steps=30),
        CutConfig(history=11, future=5, agents=1, polylines=1, points=2, stride=5, min_future_valid=1),
    )
    assert len(s2) == 4  # currents 10, 15, 20, 25; the last has 4 future steps left
    np.testing.assert_array_equal(s2.future_mask.sum(1), [5, 5, 5, 4])


def test_neighbours_are_nearest_first_and_focal_rules():
    focal = straight_track("f", (0.0, 0.0), 0.0, 5.0)
    others = [
        straight_track("d30", (0.0, 30.0), 0.0, 5.0),
        straight_track("d10", (0.0, -10.0), 0.0, 5.0),
        straight_track("d20", (-20.0, 0.0), 0.0, 5.0),
        straight_track("d5", (5.0, 0.0), 0.0, 5.0),
        straight_track("parked", (10.0, 3.0), 0.0, 0.0),
    ]
    cfg = CutConfig(history=21, future=60, agents=4, polylines=1, points=2, min_displacement=2.0)
    s = cut_scenario(scenario([focal, *others]), cfg)
    # every moving car is a focal agent; the parked one (0 m) is not. At the current step (20) the
    # focal car is at (10, 0): parked 3 m away, d5 5 m, d10 10 m, d20 20 m, d30 30 m
    assert list(s.track_id) == ["f", "d30", "d10", "d20", "d5"]
    xy = s.agents[0, :, -1, :2]
    dist = np.linalg.norm(xy, axis=1)
    np.testing.assert_allclose(dist, [0.0, 3.0, 5.0, 10.0], atol=1e-4)  # parked (3 m), d5, d10; d20 and d30 dropped
    # the dataset's tracks_to_predict win over the automatic choice (even the parked car)
    s2 = cut_scenario(scenario([focal, *others], tracks_to_predict=("parked",)), cfg)
    assert list(s2.track_id) == ["parked"]
    s3 = cut_scenario(
        scenario([focal, *others]), CutConfig(history=21, future=60, agents=2, polylines=1, points=2, max_focal=2)
    )
    assert list(s3.track_id) == ["f", "d30"]


def test_map_pieces_cut_and_nearest_first():
    assert map_class("LANE_SURFACE_STREET") == "lane" and map_class("ROAD_LINE_BROKEN_SINGLE_WHITE") == "road_line"
    assert map_class("ROAD_EDGE_BOUNDARY") == "road_edge" and map_class("CROSSWALK") == "crosswalk"
    assert map_class("STOP_SIGN") is None and map_class("LANE_STATE_GO") is None
    lane = MapFeature("L", "LANE_SURFACE_STREET", polyline=np.c_[np.array([0.0, 50.0]), np.zeros(2), np.zeros(2)])
    walk = MapFeature("C", "CROSSWALK", polygon=np.array([[60.0, 0, 0], [62, 0, 0], [62, 2, 0], [60, 2, 0]]))
    car = straight_track("car", (45.0, 1.0), 0.0, 1.0)
    sc = scenario([car], [lane, walk])
    xy, direction, mask, kind = map_pieces(sc, points=20, spacing=1.0)
    # 51 points 1 m apart -> pieces 0..19, 19..38, 38..50 (shared ends); the closed crosswalk: 9 points
    np.testing.assert_array_equal(mask.sum(1), [20, 20, 13, 9])
    np.testing.assert_allclose(xy[1, 0], [19.0, 0.0])
    np.testing.assert_allclose(xy[2, 12], [50.0, 0.0])
    np.testing.assert_allclose(
        xy[3, :9], [[60, 0], [61, 0], [62, 0], [62, 1], [62, 2], [61, 2], [60, 2], [60, 1], [60, 0]]
    )
    np.testing.assert_allclose(direction[2, :13], np.tile([1.0, 0.0], (13, 1)))  # last point repeats
    np.testing.assert_allclose(direction[3, 7:9], [[0.0, -1.0], [0.0, -1.0]])
    assert not direction[2, 13:].any() and list(kind) == [0, 0, 0, 3]
    s = cut_scenario(sc, CutConfig(history=21, future=10, agents=1, polylines=3, points=20, min_displacement=0.0))
    # car at (47, 1) at the current step 20: nearest the piece 38..50 (1 m), then 19..38 (9.1 m), then the
    # crosswalk (13 m); the piece 0..19 (28 m) is left out
    m = s.map[0]
    assert m[0, 0, 0] == pytest.approx(38.0 - 47.0, abs=1e-4) and m[0, 0, 1] == pytest.approx(-1.0, abs=1e-4)
    assert s.map_mask[0, 0].sum() == 13 and m[0, 0, MAP_IS_LANE] == 1
    assert m[1, 0, 0] == pytest.approx(19.0 - 47.0, abs=1e-4) and s.map_mask[0, 1].sum() == 20
    assert m[2, 0, MAP_IS_CROSSWALK] == 1 and m[2, 0, MAP_IS_LANE] == 0 and s.map_mask[0, 2].sum() == 9
    assert m[2, 0, 0] == pytest.approx(60.0 - 47.0, abs=1e-4)
    np.testing.assert_allclose(m[0, :13, [MAP_DX, MAP_DY]].T, np.tile([1.0, 0.0], (13, 1)), atol=1e-6)
    assert not m[0, 13:].any() and s.map.shape[-1] == len(MAP_FEATURES)


def test_resampling_2hz_to_10hz_matches_hand_interpolation():
    ts = np.array([0.0, 0.5, 1.0, 1.5])
    tr = Track(
        "t",
        "VEHICLE",
        position=np.array([[0.0, 0, 0], [5.0, 1, 0], [10.0, 1, 0], [0.0, 0, 0]]),
        heading=np.array([3.0, -3.0, -3.0, 0.0]),
        velocity=np.array([[10.0, 0.0], [10.0, 2.0], [0.0, 0.0], [0.0, 0.0]]),
        valid=np.array([True, True, True, False]),
        size=np.ones((4, 3)),
    )
    sc = Scenario("s", "nuscenes", "v", ts, {"t": tr}, {}, current_time_index=2)
    out = resample_scenario(sc, 0.1)
    np.testing.assert_allclose(out.timestamps, np.arange(16) * 0.1)
    assert out.current_time_index == 10
    got = out.tracks["t"]
    w = np.arange(5) / 5
    np.testing.assert_allclose(got.position[:5, 0], 5 * w)
    np.testing.assert_allclose(got.position[:5, 1], w)
    np.testing.assert_allclose(got.velocity[5:10, 0], 10 * (1 - w))
    np.testing.assert_allclose(got.position[10, :2], [10.0, 1.0])
    # heading 3.0 -> -3.0 goes the short way through π: 3 + w·(2π - 6), wrapped
    want = wrap_angle(3.0 + w * (2 * math.pi - 6.0))
    np.testing.assert_allclose(got.heading[:5], want, atol=1e-12)
    assert got.heading[2] == pytest.approx(3.0 + 0.4 * (2 * math.pi - 6.0)) and got.heading[3] < 0
    # validity: both neighbours valid; steps between the last valid and the invalid annotation are invalid
    np.testing.assert_array_equal(got.valid, np.arange(16) <= 10)
    assert not got.position[11:].any()
    # an exact old time copies that step; 20 Hz -> 10 Hz keeps every other step
    ts20 = np.arange(9) * 0.05
    tr20 = straight_track("q", (0, 0), 0.5, 2.0, steps=9, dt=0.05)
    down = resample_track(tr20, ts20, np.arange(5) * 0.1)
    np.testing.assert_allclose(down.position, tr20.position[::2], atol=1e-12)
    unchanged = scenario([straight_track("x", (0, 0), 0, 1)])
    assert resample_scenario(unchanged, 0.1) is unchanged


def test_cutting_resamples_a_2hz_source():
    car = straight_track("c", (0.0, 0.0), 0.3, 6.0, steps=17, dt=0.5)
    s = cut_scenario(
        scenario([car], steps=17, dt=0.5), CutConfig(history=21, future=60, agents=1, polylines=1, points=2)
    )
    assert len(s) == 1 and s.future_mask[0].all()
    np.testing.assert_allclose(s.future[0, :, 0], 0.6 * np.arange(1, 61), atol=1e-3)  # 6 m/s at 10 Hz


# --------------------------------------------------------------------------- synthetic scenes


def test_synthetic_is_deterministic_and_fast_enough():
    a = syn.generate_scenario("womd", 3, seed=5, steps=41)
    b = syn.generate_scenario("womd", 3, seed=5, steps=41)
    c = syn.generate_scenario("womd", 4, seed=5, steps=41)
    assert list(a.tracks) == list(b.tracks) and a.tracks_to_predict == b.tracks_to_predict
    for tid in a.tracks:
        np.testing.assert_array_equal(a.tracks[tid].position, b.tracks[tid].position)
        np.testing.assert_array_equal(a.tracks[tid].valid, b.tracks[tid].valid)
    for fid in a.map_features:
        np.testing.assert_array_equal(
            a.map_features[fid].polyline if a.map_features[fid].polyline is not None else a.map_features[fid].polygon,
            b.map_features[fid].polyline if b.map_features[fid].polyline is not None else b.map_features[fid].polygon,
        )
    assert not np.array_equal(a.tracks["0"].position, c.tracks["0"].position)
    assert a.tracks_to_predict and all(a.tracks[t].valid.all() for t in a.tracks_to_predict)


def _speeds(style: str, n: int = 12) -> tuple[np.ndarray, float]:
    sp, dts = [], []
    for sc in syn.generate_scenarios(style, n, seed=2, steps=41):
        dts.append(sc.dt)
        for tr in sc.tracks.values():
            if tr.object_type == "VEHICLE":
                v = np.linalg.norm(tr.velocity[tr.valid], axis=1)
                if v.size and v.mean() > 0.5:
                    sp.append(v.mean())
    return np.asarray(sp), float(np.median(dts))


def test_synthetic_styles_differ_measurably():
    speeds = {st: _speeds(st) for st in ("womd", "av2", "nuplan", "nuscenes")}
    assert speeds["womd"][1] == pytest.approx(0.1) and speeds["nuplan"][1] == pytest.approx(0.05)
    assert speeds["nuscenes"][1] == pytest.approx(0.5)  # 2 Hz, resampled when cut
    mean = {st: v[0].mean() for st, v in speeds.items()}
    assert mean["nuplan"] > mean["womd"] + 1.5 > mean["nuscenes"] + 3.0
    assert mean["av2"] < mean["womd"] - 1.0

    # the harmful source has implausible jumps in speed (a dropped clock frame), the others do not
    def max_jump(style):
        out = []
        for sc in syn.generate_scenarios(style, 6, seed=2, steps=41):
            sc = resample_scenario(sc, 0.1)
            for tr in sc.tracks.values():
                ok = tr.valid[1:] & tr.valid[:-1]
                spd = np.linalg.norm(np.diff(tr.position[:, :2], axis=0), axis=1)[ok] / 0.1
                if tr.object_type == "VEHICLE" and len(spd) > 2:
                    out.append(np.abs(np.diff(spd)).max())
        return np.median(out)

    assert max_jump("glitch") > 3.0 * max_jump("womd")
    assert set(syn.CANDIDATE_STYLES) >= {"womd", "av2", "nuplan"} and syn.HARMFUL_STYLES == ("glitch",)
    assert syn.TARGET_STYLES == ("nuscenes",) and not set(syn.TARGET_STYLES) & set(syn.CANDIDATE_STYLES)


def test_synthetic_through_scenarionet_end_to_end(tmp_path):
    for style in ("nuscenes", "av2"):
        folder = syn.write_synthetic(tmp_path / style, style, 4, seed=1, steps=41, workers=2)
        entries = list_scenarios(folder)
        assert len(entries) == 4 and {e.path.parent.name for e in entries} == {f"{style}_0", f"{style}_1"}
        sc = read_scenario(entries[0])
        assert sc.dataset == style and sc.length == (9 if style == "nuscenes" else 41)
        s = cut_folder(folder, CutConfig(history=11, future=30, agents=6, polylines=16, points=10), source=style)
        assert len(s) >= 4 and set(s.source) == {style}
        assert np.isfinite(s.agents).all() and np.isfinite(s.map).all() and s.future_mask.all()
        # agent-centric: the focal agent is at the origin heading +x at the current step
        np.testing.assert_allclose(s.agents[:, 0, -1, [AGENT_X, AGENT_Y, AGENT_SIN]], 0.0, atol=1e-3)
        assert s.map_mask.any(axis=(1, 2)).all()
    with open(min((tmp_path / "nuscenes").rglob("sd_*.pkl")), "rb") as fh:
        raw = pickle.load(fh)
    state = next(iter(raw["tracks"].values()))["state"]
    assert state["length"].ndim == 2 and state["valid"].dtype.kind == "f"  # the nuScenes converter's layout


# --------------------------------------------------------------------------- MotionSamples on disk


def _samples(n=5, seed=0) -> MotionSamples:
    rng = np.random.default_rng(seed)
    return MotionSamples(
        agents=rng.normal(size=(n, 3, 4, 9)),
        agents_mask=rng.random((n, 3, 4)) > 0.3,
        map=rng.normal(size=(n, 2, 5, 8)),
        map_mask=rng.random((n, 2, 5)) > 0.3,
        future=rng.normal(size=(n, 6, 2)),
        future_mask=rng.random((n, 6)) > 0.2,
        source=np.array(["womd", "av2", "nuplan", "womd", "nuscenes"])[:n],
        scenario_id=[f"s{i}" for i in range(n)],
        track_id=np.arange(n).astype(str),
        meta={"cut": {"history": 4}},
    )


def test_samples_save_load_roundtrip(tmp_path):
    s = _samples()
    s.save(tmp_path / "samples")
    back = MotionSamples.load(tmp_path / "samples")
    assert isinstance(back.agents, np.memmap) and back.agents.dtype == np.float32
    for name, arr in s.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), arr)
    assert back.meta == {"cut": {"history": 4}} and back.sizes() == s.sizes()
    sub = back.subset([4, 0])
    assert list(sub.source) == ["nuscenes", "womd"] and len(MotionSamples.concatenate([s, sub])) == 7
    with pytest.raises(TarotInputError, match="future has shape"):
        MotionSamples(**{**s.arrays(), "future": np.zeros((5, 6, 3))})


def test_samples_damaged_missing_or_reshaped_files_are_named(tmp_path):
    folder = _samples().save(tmp_path / "s")
    agents = folder / "map.npy"
    blob = bytearray(agents.read_bytes())
    blob[-3] ^= 0xFF  # one flipped byte
    agents.write_bytes(bytes(blob))
    with pytest.raises(TarotInputError, match="changed") as err:
        MotionSamples.load(folder)
    assert str(agents) in str(err.value)
    agents.write_bytes(bytes(blob[:-40]))  # truncated
    with pytest.raises(TarotInputError) as err:
        MotionSamples.load(folder)
    assert str(agents) in str(err.value)
    with pytest.raises(TarotInputError) as err:
        MotionSamples.load(folder, check=False)  # the .npy header still says more rows than the file holds
    assert str(agents) in str(err.value)
    folder = _samples().save(tmp_path / "t")
    np.save(folder / "future.npy", np.zeros((5, 7, 2), np.float32))
    with pytest.raises(TarotInputError, match="manifest says") as err:
        MotionSamples.load(folder, check=False)
    assert "future.npy" in str(err.value)
    folder = _samples().save(tmp_path / "u")
    (folder / "track_id.npy").unlink()
    with pytest.raises(TarotInputError, match="missing from the motion samples folder") as err:
        MotionSamples.load(folder, check=False)
    assert "track_id.npy" in str(err.value)
    (folder / "manifest.json").unlink()
    with pytest.raises(TarotInputError, match="manifest not found"):
        MotionSamples.load(folder)
