"""Renderer: right size and format, deterministic per seed, and the road appears where the
pinhole geometry puts it (asphalt on the projected road, grass beside it, sky above)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from bc.sim.camera import Renderer, renderer_for
from bc.sim.car import CarState
from bc.sim.track import load_track
from bc.core.udacity import CAMERAS, FRAME_HEIGHT, FRAME_WIDTH


@pytest.fixture(scope="module")
def lake():
    return load_track("lake")


@pytest.fixture(scope="module")
def renderer(lake):
    return renderer_for(lake, seed=0)


def test_renderers_are_shared_per_world_and_lighting(renderer, lake):
    """Painting a world takes a second or two: every env on (track, seed) shares one."""
    assert renderer_for(load_track("lake"), 0) is renderer  # the same geometry, another object
    assert isinstance(renderer, Renderer) and renderer.seed == 0


def _state(track, s: float, offset: float = 0.0, yaw_error: float = 0.0) -> CarState:
    x, y, h = track.pose_at(s)
    return CarState(x - math.sin(h) * offset, y + math.cos(h) * offset, h + yaw_error, 8.0)


def _project(renderer: Renderer, state: CarState, camera: str, wx: float,
             wy: float) -> tuple[int, int]:
    """World ground point -> (row, col), from the pinhole model independently of the renderer."""
    cx, cy, yaw = renderer.camera_pose(state, camera)
    dx, dy = wx - cx, wy - cy
    forward = math.cos(yaw) * dx + math.sin(yaw) * dy
    left = -math.sin(yaw) * dx + math.cos(yaw) * dy
    h, p, f = renderer.camera_height, renderer.pitch, renderer.focal
    depth = forward * math.cos(p) + h * math.sin(p)
    up = forward * math.sin(p) - h * math.cos(p)
    col = FRAME_WIDTH / 2 + f * (-left) / depth
    row = FRAME_HEIGHT / 2 - f * up / depth
    return int(row), int(col)


def _road_point(track, s: float, lateral: float) -> tuple[float, float]:
    x, y, h = track.pose_at(s)
    return x - math.sin(h) * lateral, y + math.cos(h) * lateral


def _is_asphalt(rgb) -> bool:
    rgb = rgb.astype(int)
    return rgb.max() - rgb.min() <= 30 and 35 <= rgb.mean() <= 200


def _is_grass(rgb) -> bool:
    r, g, b = rgb.astype(int)
    return g > r + 15 and g > b + 15


def test_frames_are_rgb_uint8_320x160(renderer, lake):
    for camera in CAMERAS:
        frame = renderer.render(_state(lake, 30.0), camera)
        assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and frame.dtype == np.uint8
        assert frame.flags.c_contiguous
    with pytest.raises(ValueError, match="camera"):
        renderer.render(_state(lake, 30.0), "rear")


def test_renderer_is_deterministic_per_seed(renderer, lake):
    again = Renderer(lake, seed=0)
    other = Renderer(lake, seed=5)
    for s in (10.0, 200.0, 415.0):
        state = _state(lake, s, offset=0.7, yaw_error=0.05)
        for camera in CAMERAS:
            assert np.array_equal(renderer.render(state, camera), again.render(state, camera))
        assert not np.array_equal(renderer.render(state), other.render(state))


@pytest.mark.parametrize("s", [20.0, 150.0, 330.0, 470.0])
@pytest.mark.parametrize("camera", CAMERAS)
def test_road_is_where_the_geometry_says(renderer, lake, s, camera):
    state = _state(lake, s)
    frame = renderer.render(state, camera)
    probes = ((10.0, 1.5, _is_asphalt), (14.0, -2.0, _is_asphalt), (7.0, 2.5, _is_asphalt),
              (12.0, 12.0, _is_grass), (12.0, -13.0, _is_grass))  # (ahead, left of centre)
    for ahead, lateral, check in probes:
        row, col = _project(renderer, state, camera, *_road_point(lake, s + ahead, lateral))
        if not (0 <= col < FRAME_WIDTH and 60 <= row < 140):
            continue  # outside the part of the frame a model sees
        assert check(frame[row, col]), (s, camera, ahead, lateral, row, col, frame[row, col])
    # sky on top (blue-ish), bonnet at the bottom centre (dark)
    assert frame[5].mean(axis=0)[2] > frame[5].mean(axis=0)[0]
    assert frame[FRAME_HEIGHT - 3, FRAME_WIDTH // 2].mean() < 90


def test_side_cameras_see_the_road_shifted(renderer, lake):
    state = _state(lake, 20.0)
    target = _road_point(lake, 32.0, 0.0)
    cols = {cam: _project(renderer, state, cam, *target)[1] for cam in CAMERAS}
    # the left camera sees the road to its right
    assert cols["left"] > cols["center"] > cols["right"]
    frames = {cam: renderer.render(state, cam) for cam in CAMERAS}
    # the images differ where the road is, i.e. the cameras really are offset
    difference = frames["left"][70:140].astype(int) - frames["right"][70:140].astype(int)
    assert np.abs(difference).mean() > 5


def test_offset_car_sees_the_road_edge_move(renderer, lake):
    """Driving left of centre moves the road to the right of the frame: what a model must learn."""
    def road_centre_col(frame):
        row = frame[110].astype(int)
        grey = (row.max(axis=1) - row.min(axis=1) <= 30) & (row.mean(axis=1) > 35)
        return np.flatnonzero(grey).mean()

    centred = road_centre_col(renderer.render(_state(lake, 20.0)))
    left = road_centre_col(renderer.render(_state(lake, 20.0, offset=2.0)))
    right = road_centre_col(renderer.render(_state(lake, 20.0, offset=-2.0)))
    assert left > centred + 20 and right < centred - 20


def test_rendering_is_fast(renderer, lake):
    states = [_state(lake, s) for s in np.linspace(0, lake.length, 60)]
    start = time.perf_counter()
    for state in states:
        renderer.render(state)
    # ~1000 frames/s on an idle core; this only catches gross regressions
    assert len(states) / (time.perf_counter() - start) > 50
