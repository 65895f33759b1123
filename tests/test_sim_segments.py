"""Track segments and grades: declared in the YAML, validated with the file and the segment
named, rendered as declared, and acting on the car (gravity, the off-road rule)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from bc.sim.camera import Renderer, paint_world, road_field
from bc.sim.car import CarState, make_car
from bc.sim.env import DrivingEnv, resolve_track
from bc.sim.expert import Expert, lap_time_bound, speed_profile
from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import compute_metrics
from bc.sim.track import Track, TrackError, load_track, random_track

# an oval: two 120 m straights joined by 40 m radius bends (~490 m a lap)
OVAL = [[0, 0], [60, 0], [120, 0], [160, 40], [120, 80], [60, 80], [0, 80], [-40, 40]]
BROWN = (lambda rgb: (rgb[..., 0].astype(int) - rgb[..., 2] > 35)  # dirt, not yellow paint
         & (rgb[..., 0].astype(int) > 100) & (rgb[..., 1] > rgb[..., 2])
         & (rgb[..., 2] > 0.45 * rgb[..., 0]))


def _oval(segments=None, elevation=None, name="oval") -> Track:
    return Track(name, 8.0, OVAL, source=f"{name}.yaml", segments=segments, elevation=elevation)


def _texels(track: Track, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The painted world's band cells: (RGB per cell, the field with s and d per cell)."""
    tex, _ = paint_world(track, seed)
    field = road_field(track)
    return tex.reshape(-1, 3)[field["cells"]].astype(float), field


def _at(track: Track, s: float, offset: float = 0.0, speed: float = 10.0,
        heading_offset: float = 0.0) -> CarState:
    x, y, h = track.pose_at(s)
    return CarState(x - math.sin(h) * offset, y + math.cos(h) * offset, h + heading_offset, speed)


# ---------------------------------------------------------------------------------- schema
@pytest.mark.parametrize("segments, message", [
    ([{"kind": "tunnel"}], r"segments\[0\]: unknown kind 'tunnel'"),
    ([{"kind": "bridge", "from": 10, "to": 50, "colour": 1}],
     r"segments\[0\] \(bridge\): unknown keys \['colour'\]"),
    ([{"kind": "shadows", "density": 1.5}], r"segments\[0\] \(shadows\): density must be"),
    ([{"kind": "open_edge", "side": "up"}], r"segments\[0\] \(open_edge\): side must be left"),
    ([{"kind": "bridge", "from": 10, "to": 50, "width": 12}],
     r"segments\[0\] \(bridge\): width must be between"),
    ([{"kind": "surface", "surface": "ice"}], r"segments\[0\] \(surface\): surface must be one"),
    ([{"kind": "centre_line"}, {"kind": "no_markings", "from": 5, "to": 5000}],
     r"segments\[1\] \(no_markings\): to must be within the lap"),
    ([{"kind": "dirt_branch", "at": 130, "side": "left", "length": 80}],
     r"segments\[0\] \(dirt_branch\): the branch runs into the road"),
    ([{"kind": "dirt_branch", "side": "left"}],
     r"segments\[0\] \(dirt_branch\): missing required key 'at'"),
])
def test_bad_segments_are_one_line_errors_naming_file_and_segment(tmp_path, segments, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"width": 8.0, "points": OVAL, "segments": segments}))
    with pytest.raises(TrackError, match=message) as info:
        load_track(str(path))
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_bad_elevation_is_rejected_with_the_file(tmp_path):
    path = tmp_path / "steep.yaml"
    path.write_text(yaml.safe_dump({"width": 8.0, "points": OVAL,
                                    "elevation": [[0, 0], [20, 15]]}))
    with pytest.raises(TrackError, match=r"steep.yaml: elevation: the grade at .* steeper"):
        load_track(str(path))
    path.write_text(yaml.safe_dump({"width": 8.0, "points": OVAL,
                                    "elevation": [[50, 0], [20, 1]]}))
    with pytest.raises(TrackError, match=r"elevation\[1\]: s must increase"):
        load_track(str(path))


def test_a_file_with_every_kind_loads_and_reverses(tmp_path):
    data = {"width": 8.0, "points": OVAL, "segments": [
        {"kind": "bridge", "from": 20, "to": 60, "width": 7.0},
        {"kind": "dirt_branch", "at": 80, "side": "right", "angle_deg": 12, "length": 50},
        {"kind": "open_edge", "from": 300, "to": 320, "side": "left"},
        {"kind": "centre_line", "style": "double"},
        {"kind": "no_markings", "from": 330, "to": 350},
        {"kind": "shadows", "from": 400, "to": 20, "density": 0.5},  # wraps past the start
        {"kind": "surface", "from": 200, "to": 240, "surface": "wet"}],
        "elevation": [[0, 0], [200, 6]]}
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(data))
    track = load_track(str(path))
    assert [seg.kind for seg in track.segments] == [item["kind"] for item in data["segments"]]
    assert track.half_width_at(40) == 3.5 and track.half_width_at(100) == 4.0
    assert track.maps.open_right[int(100 / track.spacing)]  # the fork opens the right edge
    back = track.reversed()
    assert back.half_width_at(track.length - 40) == 3.5
    assert back.maps.open_left[int((track.length - 100) / back.spacing)]
    assert back.grade_at(back.length - 100) == pytest.approx(-track.grade_at(100), abs=1e-3)


# ------------------------------------------------------------------------------- rendering
def test_no_edge_lines_on_a_bridge_deck():
    plain, bridged = _oval(), _oval([{"kind": "bridge", "from": 20, "to": 100}])
    for track, white_expected in ((plain, True), (bridged, False)):
        rgb, field = _texels(track)
        line = ((field["s"] > 30) & (field["s"] < 90)
                & (np.abs(np.abs(field["d"]) - (4.0 - 0.3 - 0.1)) < 0.04))
        whites = (rgb[line].min(axis=1) > 200).mean()
        assert (whites > 0.5) if white_expected else (whites < 0.01), whites


def test_the_dirt_branch_is_visible_beside_the_road():
    branch = [{"kind": "dirt_branch", "at": 90, "side": "right", "angle_deg": 12, "length": 50}]
    state = _at(_oval(), 85.0)
    frames = [Renderer(track, seed=0).render(state) for track in (_oval(), _oval(branch))]
    right = [BROWN(frame[60:140, 160:]).sum() for frame in frames]
    assert right[1] > right[0] + 1500 and right[1] > 3 * right[0]  # beyond the dirt shoulder


def test_shadows_darken_the_road_where_declared():
    shaded = [{"kind": "shadows", "from": 150, "to": 300, "density": 0.8}]
    plain_rgb, field = _texels(_oval())
    shaded_rgb, _ = _texels(_oval(shaded))
    road = np.abs(field["d"]) < 3.0
    inside = road & (field["s"] > 160) & (field["s"] < 290)
    outside = road & (field["s"] > 320) & (field["s"] < 450)
    assert shaded_rgb[inside].mean() < 0.85 * plain_rgb[inside].mean()
    assert shaded_rgb[outside].mean() == pytest.approx(plain_rgb[outside].mean(), rel=1e-6)


def test_surfaces_and_centre_lines_paint_as_declared():
    wet = _oval([{"kind": "surface", "from": 150, "to": 300, "surface": "wet"},
                 {"kind": "centre_line", "from": 320, "to": 450, "style": "solid"}])
    rgb, field = _texels(wet)
    plain, _ = _texels(_oval())
    road = (np.abs(field["d"]) > 0.5) & (np.abs(field["d"]) < 3.0)
    inside = road & (field["s"] > 160) & (field["s"] < 290)
    assert rgb[inside].mean() < 0.7 * plain[inside].mean()
    centre = np.abs(field["d"]) < 0.03
    solid = centre & (field["s"] > 330) & (field["s"] < 440)
    dashed = centre & (field["s"] > 20) & (field["s"] < 140)
    yellow = lambda c: (c[:, 0] > 150) & (c[:, 2] < 120)  # noqa: E731
    assert yellow(rgb[solid]).mean() > 0.95 and 0.2 < yellow(rgb[dashed]).mean() < 0.5


CREST = [[0, 0], [60, 0], [110, 6], [160, 0]]  # a hill on the first straight, top at s=110


def test_a_crest_moves_the_horizon_and_hides_the_road_beyond():
    beyond = [{"kind": "surface", "from": 150, "to": 200, "surface": "dirt"}]
    flat, hill = _oval(beyond), _oval(beyond, elevation=CREST)
    state = _at(flat, 80.0)  # climbing towards the crest, 30 m before it
    flat_r, hill_r = Renderer(flat, seed=0), Renderer(hill, seed=0)
    flat_rows, flat_pitch = flat_r.ground_rows(state) if flat_r._graded else (None, None)
    assert flat_rows is None  # a flat track keeps the flat projection
    rows, pitch = hill_r.ground_rows(state)
    assert pitch < hill_r.pitch - math.radians(3)  # pitched up with the road
    sky_rows = int(np.argmax(np.isfinite(rows)))
    flat_frame, hill_frame = flat_r.render(state), hill_r.render(state)
    sky = lambda frame: int(np.argmax(frame[:, 160, 2] < frame[:, 160, 0] + 40))  # noqa: E731
    assert sky_rows > sky(flat_frame) + 8  # the horizon moved down the frame
    assert np.nanmax(np.where(np.isfinite(rows), rows, np.nan)) < 50.0  # nothing past the crest
    assert BROWN(flat_frame[50:76, 110:210]).sum() > 40  # the dirt road 70-120 m ahead...
    bare = Renderer(_oval(elevation=CREST), seed=0).render(state)
    assert np.array_equal(hill_frame, bare)  # ... is hidden by the crest: nothing changes


# ------------------------------------------------------------------------------ the car
def test_gravity_slows_the_car_uphill_and_speeds_it_downhill():
    car = make_car()
    speeds = {}
    for grade in (0.1, 0.0, -0.1):
        state = CarState(0.0, 0.0, 0.0, 6.0)
        for _ in range(30):  # 2 s at a fixed throttle
            state = car.step(state, 0.0, 0.1, grade=grade)
        speeds[grade] = state.speed
    assert speeds[0.1] < speeds[0.0] - 1.5 and speeds[-0.1] > speeds[0.0] + 1.5
    uphill, flat = _oval(elevation=[[0, 0], [60, 0], [140, 8], [200, 8]]), _oval()
    ends = []
    for track in (uphill, flat):
        env = DrivingEnv(track, obs_type="state", laps=None, start_s=60.0, start_speed_mph=20)
        env.reset()
        for _ in range(60):
            _, _, _, _, info = env.step([0.0, 0.25])
        ends.append(info["speed"])
    assert ends[0] < ends[1] - 1.5


def test_the_dirt_branch_counts_as_off_the_road():
    lake = load_track("lake")
    branch = lake.branches[0]
    env = DrivingEnv(lake, obs_type="state", laps=None)
    env.reset(options={"start_s": 100.0})
    (x, y), (ux, uy) = branch["start"], branch["direction"]
    env.state = CarState(x + 10 * ux, y + 10 * uy, math.atan2(uy, ux), 12.0)  # on the fork
    env._here = lake.locate(env.state.x, env.state.y)
    left = None
    for _ in range(60):  # straight down the dirt road
        _, _, _, _, info = env.step([0.0, 0.3])
        if info["off_road"]:
            left = info["off_road_xy"]
            break
    assert left is not None, "driving down the dirt branch never left the road"
    along = (left[0] - x) * ux + (left[1] - y) * uy
    across = abs(-(left[0] - x) * uy + (left[1] - y) * ux)
    assert 10 < along < branch["length"] and across < branch["width"] / 2  # on the dirt road
    assert env.is_off_road(4.2, 40.0) and not env.is_off_road(4.2, 200.0)  # 8 m bridge


# ----------------------------------------------------------------------- tracks, expert
def test_shipped_lake_has_a_bridge_and_an_open_dirt_exit_and_classic_has_neither():
    lake, classic = load_track("lake"), load_track("lake_classic")
    assert {seg.kind for seg in lake.segments} == {"bridge", "dirt_branch"}
    assert not classic.segments and np.allclose(lake.xy, classic.xy)
    jungle = load_track("jungle")
    assert jungle.width < lake.width and jungle.has_elevation
    assert np.abs(jungle.grade).max() > 0.1  # steep descents
    turns = np.cumsum(jungle.curvature) * jungle.spacing
    window = int(40 / jungle.spacing)  # hairpins: ~180 degrees within 40 m, both ways
    swing = turns[window:] - turns[:-window]
    assert swing.max() > math.radians(150) and swing.min() < -math.radians(150)
    assert {seg.kind for seg in jungle.segments} >= {"centre_line", "shadows"}


def test_random_tracks_draw_segments_and_grades_from_the_seed():
    one, again, other = random_track(4), resolve_track("random:4"), random_track(5)
    assert one.has_elevation and {seg.kind for seg in one.segments} >= {"centre_line", "shadows"}
    assert repr(one.segments) == repr(again.segments) and np.allclose(one.z, again.z)
    assert repr(one.segments) != repr(other.segments)


@pytest.mark.parametrize("name, reverse", [("lake", False), ("jungle", False), ("jungle", True),
                                           ("random:1", False), ("random:2", True)])
def test_the_expert_laps_tracks_with_segments_and_grades(name, reverse):
    metrics = compute_metrics(expert_drive(name, 1.0, reverse=reverse))
    assert metrics["interventions"] == 0 and metrics["autonomy"] == 100.0
    assert metrics["lap_time_s"] is not None


@pytest.mark.slow
def test_the_expert_laps_twenty_random_tracks_with_segments_and_grades():
    for n in range(1, 21):
        metrics = compute_metrics(expert_drive(f"random:{n}", 1.0))
        assert metrics["interventions"] == 0, f"random:{n}"


def test_the_expert_brakes_earlier_for_a_bend_at_the_foot_of_a_descent():
    downhill = _oval(elevation=[[0, 8], [60, 8], [130, 0], [300, 0]])  # falls into the bend
    flat = _oval()
    grip = 0.9 * 0.9 * 9.81
    plans = [speed_profile(track, 30.0, grip, grip) for track in (downhill, flat)]
    before_bend = int(110 / flat.spacing)
    assert plans[0][before_bend] < plans[1][before_bend] - 0.3


def test_the_lap_time_bound_is_below_the_expert_and_not_far():
    for name in ("lake", "jungle"):
        track = load_track(name)
        bound = lap_time_bound(track)
        expert = compute_metrics(expert_drive(name, 1.0))["lap_time_s"]
        assert 0.85 * expert < bound < expert
    assert lap_time_bound(load_track("jungle")) > lap_time_bound(
        Track("flat-jungle", 6.0, load_track("jungle").control_points))
    assert Expert(load_track("lake")).profile.max() <= make_car().top_speed
