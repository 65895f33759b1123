"""Track files: shipped tracks load, bad files are rejected with the file and the problem,
procedural tracks are valid; nearest-point lookup agrees with the geometry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from bc.sim.track import (
    MIN_CAR_RADIUS_M,
    RANDOM_MIN_RADIUS_M,
    Track,
    TrackError,
    load_track,
    shipped_tracks,
)


def test_lake_and_mountain_ship_and_load():
    names = shipped_tracks()
    assert {"lake", "mountain"} <= set(names)
    for name in names:
        track = load_track(name)
        assert track.name == name
        n = len(track.xy)
        assert track.xy.shape == (n, 2)
        assert track.s.shape == track.heading.shape == track.curvature.shape == (n,)
        assert np.all(np.isfinite(track.xy)) and np.all(np.diff(track.s) > 0)
        gaps = np.hypot(*np.diff(np.vstack([track.xy, track.xy[:1]]), axis=0).T)
        assert gaps.max() < 0.5 and gaps.max() / gaps.min() < 1.2  # closed, evenly sampled
        assert abs(gaps.sum() - track.length) < 0.01 * track.length
        assert track.xy[0] == pytest.approx(track.control_points[0], abs=1e-6)


def test_lake_is_easy_and_mountain_is_hard():
    lake, mountain = load_track("lake"), load_track("mountain")
    assert 500 <= lake.length <= 900 and 8.0 <= lake.width <= 10.0
    r_lake = 1 / np.abs(lake.curvature).max()
    r_mountain = 1 / np.abs(mountain.curvature).max()
    assert mountain.width < lake.width and r_mountain < r_lake
    # bends both ways on both tracks
    for track in (lake, mountain):
        assert track.curvature.max() > 0.01 and track.curvature.min() < -0.01


def test_locate_and_pose_at_agree():
    track = load_track("mountain")
    for s in np.linspace(0, track.length, 37)[:-1]:
        x, y, heading = track.pose_at(s)
        for offset in (-2.0, 0.0, 1.5):  # + = left of the travel direction
            px, py = x - math.sin(heading) * offset, y + math.cos(heading) * offset
            found = track.locate(px, py)
            ds = (found.s - s + track.length / 2) % track.length - track.length / 2
            assert abs(ds) < 0.3, (s, offset, found)
            assert found.cte == pytest.approx(offset, abs=0.05)
            assert math.cos(found.heading - heading) > 0.99
    assert track.pose_at(track.length + 3.0) == pytest.approx(track.pose_at(3.0))


def _write(tmp_path: Path, data, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]
FIGURE_EIGHT = [[100 * math.cos(t) / (1 + math.sin(t) ** 2),
                 100 * math.sin(t) * math.cos(t) / (1 + math.sin(t) ** 2)]
                for t in np.linspace(0, 2 * math.pi, 16, endpoint=False)]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"width": 8, "points": SQUARE[:3]}, "at least 4 points"),
        ({"width": 0, "points": SQUARE}, "'width' must be a finite number > 0"),
        ({"width": -2.5, "points": SQUARE}, "'width' must be a finite number > 0"),
        ({"width": "wide", "points": SQUARE}, "'width' must be a number"),
        ("width: 8\npoints: [[0, 0], [100, .nan], [100, 100], [0, 100]]\n",
         "points[1] is not finite"),
        ({"width": 8, "points": [[0, 0], [100, 0], [100], [0, 100]]},
         "points[2] must be an [x, y] pair"),
        ({"width": 8, "points": [[0, 0], [100, 0], [100, 0], [0, 100]]}, "coincide"),
        ({"width": 8, "points": FIGURE_EIGHT}, "overlaps itself"),
        ({"width": 45, "points": [[0, 0], [30, 0], [30, 30], [0, 30]]},
         "road too wide for the bend"),
        ({"width": 2, "points": [[0, 0], [6, 0], [6, 6], [0, 6]]}, "tighter than the car's"),
        ({"points": SQUARE}, "missing required key 'width'"),
        ({"width": 8, "points": SQUARE, "colour": "red"}, "unknown keys ['colour']"),
        ({"width": 8, "points": SQUARE, "theme": {"road": [300, 0, 0]}},
         "theme.road must be an [r, g, b]"),
        ("width: 8\npoints: [[0, 0]\n", "not valid YAML"),
    ],
)
def test_bad_track_files_are_rejected_with_file_and_problem(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(TrackError) as info:
        load_track(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_road_that_nearly_touches_itself_is_rejected(tmp_path):
    # a peanut: the centreline's two sides pass 9.6 m apart at the waist
    theta = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    waist = 0.12 + 0.88 * np.cos(theta) ** 2
    points = np.column_stack([90 * np.cos(theta), 40 * np.sin(theta) * waist])
    ok = _write(tmp_path, {"width": 8.4, "points": points.round(2).tolist()}, "ok.yaml")
    assert load_track(str(ok)).width == 8.4  # 1.2 m of grass between the two road edges
    bad = _write(tmp_path, {"width": 9.0, "points": points.round(2).tolist()})  # only 0.6 m
    with pytest.raises(TrackError) as info:
        load_track(str(bad))
    assert str(bad) in str(info.value) and "comes within 1.0 m of itself" in str(info.value)


def test_missing_and_unknown_tracks(tmp_path):
    with pytest.raises(TrackError, match="track file not found"):
        load_track(str(tmp_path / "nope.yaml"))
    with pytest.raises(TrackError, match="not a shipped track .*lake"):
        load_track("moon")


def test_a_good_custom_file_loads(tmp_path):
    points = [[0, 0], [100, 0], [140, 40], [100, 80], [0, 80], [-40, 40]]
    theme = {"road": [90, 90, 90], "dash_gap_m": 4}
    data = {"name": "oval", "width": 8, "points": points, "theme": theme}
    path = _write(tmp_path, data, "oval.yaml")
    track = load_track(str(path))
    assert track.name == "oval"
    assert track.theme["road"] == [90, 90, 90] and track.theme["dash_gap_m"] == 4
    assert track.theme["grass"]  # defaults fill the rest


def test_random_tracks_are_valid_and_reproducible():
    lengths = []
    for seed in range(20):
        track = load_track("random", seed=seed)
        assert isinstance(track, Track)
        assert 1 / np.abs(track.curvature).max() >= max(RANDOM_MIN_RADIUS_M, MIN_CAR_RADIUS_M)
        # revalidate from its own control points, as a file would be
        again = Track("copy", track.width, track.control_points.tolist())
        assert again.length == pytest.approx(track.length)
        lengths.append(round(track.length, 3))
    assert len(set(lengths)) == 20
    first, again = load_track("random", seed=7), load_track("random", seed=7)
    assert first.control_points.tolist() == again.control_points.tolist()
