"""Dashcam renderer: vectorised numpy ground-plane projection of a pre-painted world.

Everything that does not change from frame to frame is computed once:

* the world texture, a top-down painting of the whole track on a `texel`-metre grid
  (grass, shoulder, asphalt, edge lines, centre dashes, curbs at bends, tree shadows,
  brightness and tint from the seed), plus a mip pyramid against far-field aliasing;
* for every ground pixel of each camera, where its ray meets the ground in the car's
  frame (the camera is rigidly mounted and the ground is flat), and its fog factor;
* a 360-degree sky panorama (gradient, clouds, hill silhouettes) indexed by azimuth.

A frame is then a rotation + translation of the precomputed ground points, one gather
from the texture and one from the panorama: no per-pixel Python, ~1 ms per frame.

A track with a height profile (bc/sim/segments.py) is seen through a height-aware projection
instead: the camera pitches with the road under it, and each image row's ray meets the road's
height profile ahead at one forward distance (a pinhole camera without roll), looked up from
tables built once per centreline sample and viewing direction; rows whose rays pass over a
crest show the sky and the hills (the road beyond is hidden), and the panorama shifts with the
pitch. The per-frame work stays a gather per pixel.

Length: the renderer is the one hand-written piece no library provides: the painted
world, the flat and the height-aware projections and their lookup tables, kept together
because they share the same precomputed arrays for speed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bc.sim.car import CarState
from bc.sim.track import CLEARANCE_M, Track
from bc.core.udacity import CAMERAS, FRAME_HEIGHT, FRAME_WIDTH

CAMERA_HEIGHT_M = 1.6  # above the ground
PITCH_DEG = 6.0  # camera tilted down: horizon near row 50, below the default 60-row crop
FOV_DEG = 60.0  # horizontal field of view
LATERAL_OFFSET_M = 1.0  # left/right cameras sit this far from the centre camera
FORWARD_OFFSET_M = 0.8  # cameras sit this far ahead of the car's centre (windscreen)

TEXEL_M = 0.1  # world texture resolution
MAX_TEXTURE_CELLS = 24_000_000  # very large tracks get coarser texels to bound memory (~100 MB)
MARGIN_M = 40.0  # painted ground around the track's bounding box
BAND_M = 5.0  # road features are painted within width/2 + BAND_M of the centreline
MIP_LEVELS = 5
LOD_BIAS = 0.5  # > 0 picks sharper mip levels than the pixel footprint suggests
FOG_START_M = 30.0
FOG_END_M = 170.0  # beyond this the ground is pure haze (and is not sampled)
PANORAMA_COLUMNS = 2048  # sky panorama resolution over 360 degrees
HOOD_TOP_ROW = 145  # top of the bonnet at the image centre; the default crop removes 20 rows
HOOD_CURVE_PX = 9.0  # the bonnet's edge drops this much towards the image sides
HOOD_SHIFT_PX = 70  # side cameras see the bonnet shifted towards the car's centre
INNER_BAND_FRACTION = 0.9  # on the inside of a bend paint at most this fraction of its radius
CENTER, LEFT, RIGHT = CAMERAS
MOUNT_SIDE = {CENTER: 0.0, LEFT: 1.0, RIGHT: -1.0}  # side cameras: left (+) / right (-) of centre
_ZERO = np.int32(0)
NEAREST_WINDOW_M = 6.0  # the camera's nearest centreline sample is searched this far around
GRADED_CLIP_MARGIN_M = 5.0  # the no-clip test's margin around the view's triangle
PITCH_PAD_ROWS = 60  # a pitching camera's panorama reaches this many rows beyond the frame
RENDERER_CACHE_SIZE = 2  # painting a track's world takes a second or two; drives repeat tracks


@dataclass
class _Group:
    """A band of whole image rows of one camera, sampled from one mip level."""

    start: int  # flat pixel range [start, stop): rows are contiguous in the image
    stop: int
    fx: np.ndarray  # ground hit, car frame, forward (in level texels)
    fy: np.ndarray  # ground hit, car frame, left (in level texels)
    level: int
    keep: np.ndarray | None  # (n, 1) 1 - fog factor where the band blends with haze
    haze: np.ndarray | None  # (n, 4) the haze's share: haze colour * fog factor


def _smooth_noise(shape: tuple[int, int], cell_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-ish std value noise with features ~cell_px pixels wide."""
    h, w = shape
    lh, lw = max(2, int(h / cell_px) + 3), max(2, int(w / cell_px) + 3)
    low = rng.standard_normal((lh, lw)).astype(np.float32)
    big = cv2.resize(low, (int(lw * cell_px), int(lh * cell_px)), interpolation=cv2.INTER_CUBIC)
    return big[:h, :w] if big.shape[0] >= h and big.shape[1] >= w else cv2.resize(big, (w, h))


def _periodic_noise(length: int, octaves: int, rng: np.random.Generator) -> np.ndarray:
    """1-D noise that wraps around (for the 360-degree panorama)."""
    x = np.arange(length) * 2 * np.pi / length
    out = np.zeros(length)
    for k in range(1, octaves + 1):
        out += rng.normal(0, 1.0 / k) * np.sin(k * x + rng.uniform(0, 2 * np.pi))
    return out


def _coverage(value: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    """Anti-aliased indicator of lo <= value <= hi with edges `soft` wide."""
    rise = np.clip((value - lo) / soft + 0.5, 0, 1)
    fall = np.clip((hi - value) / soft + 0.5, 0, 1)
    return (rise * fall).astype(np.float32)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB -> uint32 per pixel (RGBA bytes): one-element gathers are much faster."""
    rgba = np.zeros(rgb.shape[:-1] + (4,), np.uint8)
    rgba[..., :3] = rgb
    return rgba.view(np.uint32)[..., 0]


def auto_texel(track: Track) -> float:
    """TEXEL_M, or coarser where the painted area would exceed MAX_TEXTURE_CELLS."""
    xmin, ymin, xmax, ymax = track.bounds
    area = (xmax - xmin + 2 * MARGIN_M) * (ymax - ymin + 2 * MARGIN_M)
    return max(TEXEL_M, round(math.sqrt(area / MAX_TEXTURE_CELLS), 3))


def road_field(track: Track, texel: float = TEXEL_M, margin: float = MARGIN_M) -> dict:
    """Per-cell arc length and signed lateral offset of the track on a world grid.

    Cells within width/2 + BAND_M of the centreline get the segment they belong to by
    rasterising one quad per centreline segment (three passes, narrowest last, so near
    the road the nearest part of the track wins), then an exact projection onto it.
    Cached on the track since it depends only on the geometry.
    """
    cache = track.__dict__.setdefault("_render_cache", {})
    key = ("field", texel, margin)
    if key in cache:
        return cache[key]
    xmin, ymin, xmax, ymax = track.bounds
    x0, y0 = xmin - margin, ymin - margin
    width = int(math.ceil((xmax + margin - x0) / texel))
    height = int(math.ceil((ymax + margin - y0) / texel))
    seg_of = np.full((height, width), -1, np.int32)
    xy, normals, n = track.xy, track.normals, len(track.xy)
    inner_limit = INNER_BAND_FRACTION / np.maximum(np.abs(track.curvature), 1e-9)
    left_limit = np.where(track.curvature > 0, inner_limit, np.inf)
    right_limit = np.where(track.curvature < 0, inner_limit, np.inf)
    half = track.width / 2.0
    shift = 4  # sub-pixel bits for cv2 polygon filling
    scale = float(1 << shift) / texel
    nxt = np.roll(np.arange(n), -1)
    outer = max(track.theme["curb_width_m"], track.theme["shoulder_m"]) + 0.3
    for extent in (half + BAND_M, half + outer, half + CLEARANCE_M / 2):
        left = xy + np.minimum(extent, left_limit)[:, None] * normals
        right = xy - np.minimum(extent, right_limit)[:, None] * normals
        lp = np.round((left - [x0, y0]) * scale - (1 << shift) / 2).astype(np.int32)
        rp = np.round((right - [x0, y0]) * scale - (1 << shift) / 2).astype(np.int32)
        quads = np.stack([lp, lp[nxt], rp[nxt], rp], axis=1)
        for i in range(n):
            cv2.fillConvexPoly(seg_of, quads[i], int(i), lineType=cv2.LINE_8, shift=shift)
    cells = np.flatnonzero(seg_of >= 0)
    seg = seg_of.ravel()[cells]
    cy, cx = np.divmod(cells, width)
    px = x0 + (cx + 0.5) * texel - xy[seg, 0]
    py = y0 + (cy + 0.5) * texel - xy[seg, 1]
    d = xy[nxt[seg]] - xy[seg]
    seg_len = np.hypot(d[:, 0], d[:, 1])
    ux, uy = d[:, 0] / seg_len, d[:, 1] / seg_len
    along = px * ux + py * uy
    field = {
        "x0": x0, "y0": y0, "width": width, "height": height, "texel": texel,
        "cells": cells,
        "s": ((track.s[seg] + along) % track.length).astype(np.float32),
        "d": (ux * py - uy * px).astype(np.float32),  # + = left of travel
        "seg": seg,
    }
    cache[key] = field
    return field


def paint_world(track: Track, seed: int = 0, texel: float = TEXEL_M) -> tuple[np.ndarray, dict]:
    """Top-down RGB painting of the track and its surroundings (uint8, rows = +y)."""
    theme = track.theme
    field = road_field(track, texel)
    rng = np.random.default_rng(seed)
    h, w = field["height"], field["width"]
    col = lambda key: np.asarray(theme[key], np.float32)  # noqa: E731

    # grass: large patches, small tufts, per-texel grain
    mix = _smooth_noise((h, w), 6.0 / texel, rng)
    mix *= 0.35
    mix += 0.2 * _smooth_noise((h, w), 1.2 / texel, rng) + 0.5
    np.clip(mix, 0, 1, out=mix)
    grain = np.empty((h, w), np.float32)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    cv2.randn(grain, 0.0, 6.0)
    g, gd = col("grass"), col("grass_dark")
    tex = cv2.merge([cv2.addWeighted(mix, float(gd[c] - g[c]), grain, 1.0, float(g[c]))
                     for c in range(3)])
    del mix, grain

    if track.branches:  # dirt roads leaving the track: painted before the road covers them
        _paint_branches(tex, track, field, theme, seed)

    # road features on band cells
    cells, s, d = field["cells"], field["s"], field["d"]
    a = np.abs(d)
    half = track.width / 2.0
    soft = texel
    flat = tex.reshape(-1, 3)
    colour = flat[cells]
    blotch = _smooth_noise((h, w), 2.5 / texel, rng).ravel()[cells]
    grit = theme["road_noise"] * (0.6 * rng.standard_normal(len(cells)) + 0.5 * blotch)
    asphalt = col("road")[None, :] + grit[:, None].astype(np.float32)

    def paint(cover: np.ndarray, rgb: np.ndarray) -> None:
        nonlocal colour
        c = cover[:, None]
        colour = colour * (1 - c) + rgb * c

    curv = np.abs(np.convolve(np.r_[track.curvature[-40:], track.curvature, track.curvature[:40]],
                              np.ones(41) / 41, mode="same")[40:-40])  # smoothed over ~10 m
    bend = curv[field["seg"]] > theme["curb_min_curvature"]
    shoulder = theme["shoulder_m"]
    dirt = col("dirt")[None, :] + rng.normal(0, 6, (len(cells), 1)).astype(np.float32)
    if track.segments:  # per-cell stretches (bc/sim/segments.py); none: the plain road below
        look = _SegmentLook(track, field, d, grit)
        hw, asphalt = look.half, look.asphalt(asphalt, col)
        paint(_coverage(a, hw - 0.01, hw + shoulder, soft) * look.shoulder, dirt)
        paint(_coverage(a, hw - 0.01, hw + OPEN_EDGE_DIRT_M, soft) * look.open, dirt)
    else:
        look, hw = None, half
        paint(_coverage(a, hw - 0.01, hw + shoulder, soft), dirt)
    paint(_coverage(a, -1.0, hw, soft), asphalt)
    block = theme["curb_block_m"]
    stripe = (np.floor(s / block) % 2 == 0)[:, None]
    curb_rgb = np.where(stripe, col("curb_a")[None, :], col("curb_b")[None, :])
    kerbs = bend if look is None else bend * look.kerbs
    paint(_coverage(a, hw - 0.01, hw + theme["curb_width_m"], soft) * kerbs, curb_rgb)
    inset, lw = theme["edge_line_inset_m"], theme["edge_line_width_m"]
    edge = _coverage(a, hw - inset - lw, hw - inset, soft)
    paint(edge if look is None else edge * look.edge_lines, col("edge_line"))
    period_nominal = theme["dash_length_m"] + theme["dash_gap_m"]
    if period_nominal > 0 and theme["dash_length_m"] > 0:
        period = track.length / max(1, round(track.length / period_nominal))  # seamless at s=0
        dash = theme["dash_length_m"] * period / period_nominal
        along = _coverage(np.mod(s, period), 0.0, dash, soft)
        line = _coverage(a, -1.0, theme["centre_line_width_m"] / 2, soft)
        if look is None:
            paint(line * along, col("centre_line"))
        else:
            paint(look.centre(line, along, a, theme["centre_line_width_m"], soft),
                  col("centre_line"))
    if look is not None:
        look.paint_bridges(paint, a, s, soft)
    flat[cells] = colour

    # lighting: tree shadows beside and across the road, global brightness and tint
    light = np.ones((h, w), np.float32)
    n_shadows = int(round(theme["shadows"] * track.length / 1000.0))
    side = rng.choice([-1.0, 1.0])  # the sun is on one side for the whole recording
    for _ in range(n_shadows):
        x, y, heading = track.pose_at(rng.uniform(0, track.length))
        off = side * (half + rng.uniform(-3.0, 7.0))
        cx = x - math.sin(heading) * off
        cy = y + math.cos(heading) * off
        axes = (int(rng.uniform(1.5, 5.0) / texel), int(rng.uniform(1.0, 3.0) / texel))
        centre = (int((cx - field["x0"]) / texel), int((cy - field["y0"]) / texel))
        cv2.ellipse(light, centre, axes, float(rng.uniform(0, 180)), 0, 360, 0.0, -1)
    light = cv2.GaussianBlur(light, (0, 0), 0.6 / texel)
    strength = rng.uniform(0.35, 0.6)
    brightness = rng.uniform(0.8, 1.15)
    tint = 1.0 + rng.normal(0, 0.03, 3).astype(np.float32)
    # per-channel gain = brightness * tint * (1 - strength * shadow), applied in place
    light = cv2.addWeighted(light, brightness * strength, light, 0.0, brightness * (1 - strength))
    _paint_tree_shadows(light, track, field, seed)
    tex = cv2.multiply(tex, cv2.merge([light * float(t) for t in tint]))
    del light
    tex = np.clip(tex, 0, 255, out=tex)
    lighting = {"brightness": brightness, "tint": tint, "side": side}
    return tex.astype(np.uint8), lighting


OPEN_EDGE_DIRT_M = 2.5  # where the kerb stops, dirt reaches this far beyond the road edge
BRIDGE_WALL_M = 0.5  # the bridge's walls, seen from above, just outside the deck
WATER = (62, 86, 104)  # under and beside a bridge
JOINT_SPACING_M = 4.0  # expansion joints across a bridge deck
WORN_MARKINGS = 0.45  # a worn surface's paint keeps this share of its colour
SURFACE_GAIN = {1: 1.12, 2: 0.58}  # worn asphalt is lighter, wet asphalt darker
TREE_SHADOW_AREA_M2 = 12.0  # mean shade of one tree across the road
TREE_SHADOW_DEPTH = 0.55  # a tree's shadow takes this share of the light
TREE_SHADOW_SOFT_M = 0.12  # its edge's blur


class _SegmentLook:
    """Per band cell: what the track's segments change in the painting (bc/sim/segments.py)."""

    def __init__(self, track: Track, field: dict, d: np.ndarray, grit: np.ndarray) -> None:
        maps, seg = track.maps, field["seg"]
        self.track, self.maps, self.seg, self.grit = track, maps, seg, grit
        self.half = maps.half[seg].astype(np.float32)
        self.bridge = maps.bridge[seg]
        on_bridge = self.bridge > 0
        opened = (maps.open_left[seg] & (d > 0)) | (maps.open_right[seg] & (d < 0))
        self.open = (opened & ~on_bridge).astype(np.float32)
        self.shoulder = (~on_bridge).astype(np.float32)
        self.kerbs = (~on_bridge & ~opened).astype(np.float32)
        self.surface = maps.surface[seg]
        worn = np.where(self.surface == 1, WORN_MARKINGS, 1.0).astype(np.float32)
        self.worn = worn
        self.edge_lines = (maps.edge_lines[seg] & ~opened).astype(np.float32) * worn
        self.style = maps.centre[seg]

    def asphalt(self, asphalt: np.ndarray, col: Any) -> np.ndarray:
        """The road surface: asphalt, worn / wet asphalt, dirt, or a bridge deck."""
        out = asphalt.copy()
        for code, gain in SURFACE_GAIN.items():
            pick = self.surface == code
            out[pick] *= gain
        pick = self.surface == 1
        out[pick] += 1.5 * self.grit[pick, None].astype(np.float32)
        pick = self.surface == 3
        out[pick] = col("dirt")[None, :] * 0.95 + 1.4 * self.grit[pick, None].astype(np.float32)
        for k, bridge in enumerate(self.maps.bridges, 1):
            pick = self.bridge == k
            deck = np.asarray(bridge.params["deck"], np.float32)
            out[pick] = deck[None, :] + 0.6 * self.grit[pick, None].astype(np.float32)
        return out

    def centre(self, line: np.ndarray, along: np.ndarray, a: np.ndarray, width: float,
               soft: float) -> np.ndarray:
        """Coverage of the centre line: dashed (the theme's), solid, double or none."""
        cover = np.where(self.style == 0, line * along, 0.0)
        cover = np.where(self.style == 1, line, cover)
        gap = 0.12
        double = _coverage(a, gap, gap + width, soft)
        cover = np.where(self.style == 2, double, cover)
        return (cover * self.worn).astype(np.float32)

    def paint_bridges(self, paint: Any, a: np.ndarray, s: np.ndarray, soft: float) -> None:
        """Walls along both sides of the deck, water beyond, joints across the deck."""
        if not self.maps.bridges:
            return
        on = (self.bridge > 0).astype(np.float32)
        joints = _coverage(np.mod(s, JOINT_SPACING_M), 0.0, 0.12, soft) * on
        paint(joints * _coverage(a, -1.0, self.half, soft), np.float32([70, 70, 72]))
        water = np.float32(WATER)[None, :] + 0.5 * self.grit[:, None].astype(np.float32)
        paint(_coverage(a, self.half + BRIDGE_WALL_M, 1e6, soft) * on, water)
        walls = np.zeros((len(a), 3), np.float32)
        for k, bridge in enumerate(self.maps.bridges, 1):
            walls[self.bridge == k] = bridge.params["wall"]
        paint(_coverage(a, self.half - 0.01, self.half + BRIDGE_WALL_M, soft) * on, walls)


def _paint_branches(tex: np.ndarray, track: Track, field: dict, theme: dict, seed: int) -> None:
    """Dirt roads leaving the track (segments kind dirt_branch), fading out at their far end."""
    texel, x0, y0 = field["texel"], field["x0"], field["y0"]
    rng = np.random.default_rng([seed, 31])
    for branch in track.branches:
        corners = np.round((branch["corners"] - [x0, y0]) / texel).astype(np.int32)
        lo = np.maximum(corners.min(axis=0) - 2, 0)
        hi = np.minimum(corners.max(axis=0) + 3, [tex.shape[1], tex.shape[0]])
        if np.any(hi <= lo):
            continue
        mask = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.float32)
        cv2.fillConvexPoly(mask, corners - lo, 1.0, lineType=cv2.LINE_AA)
        yy, xx = np.mgrid[lo[1]:hi[1], lo[0]:hi[0]]
        px, py = x0 + (xx + 0.5) * texel, y0 + (yy + 0.5) * texel
        ux, uy = branch["direction"]
        along = (px - branch["start"][0]) * ux + (py - branch["start"][1]) * uy
        fade = np.clip((branch["length"] - along) / 8.0, 0, 1).astype(np.float32)
        cover = (mask * fade)[..., None]
        colour = (np.asarray(theme["dirt"], np.float32) * 1.05
                  + rng.normal(0, 7, mask.shape + (1,)).astype(np.float32))
        window = tex[lo[1]:hi[1], lo[0]:hi[0]]
        window[:] = window * (1 - cover) + colour * cover


def _paint_tree_shadows(light: np.ndarray, track: Track, field: dict, seed: int) -> None:
    """Crisp, dark shadows of trees across the road where a `shadows` segment asks for them
    (the light gain map is darkened in place: sunlit patches between shaded ones)."""
    stretches = [seg for seg in track.segments if seg.kind == "shadows"]
    if not stretches:
        return
    texel = field["texel"]
    rng = np.random.default_rng([seed, 41])
    shade = np.zeros_like(light)
    for seg in stretches:
        span = (seg.end - seg.start) % track.length or track.length
        count = int(round(seg.params["density"] * span * (track.width + 4.0)
                          / TREE_SHADOW_AREA_M2))
        for _ in range(count):
            s = seg.start + rng.uniform(0, span)
            x, y, heading = track.pose_at(s)
            off = rng.uniform(-track.width / 2 - 2.0, track.width / 2 + 2.0)
            cx, cy = x - math.sin(heading) * off, y + math.cos(heading) * off
            axes = (int(rng.uniform(1.2, 3.2) / texel), int(rng.uniform(0.8, 2.0) / texel))
            centre = (int((cx - field["x0"]) / texel), int((cy - field["y0"]) / texel))
            cv2.ellipse(shade, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    shade = cv2.GaussianBlur(shade, (0, 0), TREE_SHADOW_SOFT_M / texel)
    light *= 1.0 - TREE_SHADOW_DEPTH * shade


class Renderer:
    """Renders 320x160 RGB dashcam frames of a track for the center/left/right cameras."""

    def __init__(
        self,
        track: Track,
        seed: int = 0,
        camera_height: float = CAMERA_HEIGHT_M,
        pitch_deg: float = PITCH_DEG,
        fov_deg: float = FOV_DEG,
        lateral_offset: float = LATERAL_OFFSET_M,
        forward_offset: float = FORWARD_OFFSET_M,
        texel: float | None = None,
    ) -> None:
        if camera_height <= 0 or not 0 < fov_deg < 170:
            raise ValueError(f"Renderer: expected camera_height > 0 and 0 < fov_deg < 170, "
                             f"got {camera_height}, {fov_deg}")
        self.track = track
        self.seed = int(seed)
        self.camera_height = float(camera_height)
        self.pitch = math.radians(pitch_deg)
        self.focal = (FRAME_WIDTH / 2) / math.tan(math.radians(fov_deg) / 2)
        self.lateral_offset = float(lateral_offset)
        self.forward_offset = float(forward_offset)
        self.texel = float(texel) if texel else auto_texel(track)

        world, self.lighting = paint_world(track, self.seed, self.texel)
        field = road_field(track, self.texel)
        self._x0, self._y0 = field["x0"], field["y0"]
        mips = [world]
        for _ in range(MIP_LEVELS - 1):
            mips.append(cv2.pyrDown(mips[-1]))
        self._mip_shape = [m.shape[:2] for m in mips]
        # largest texel index per level as int32 scalars: np.clip with Python ints costs
        # ~4x more per call (dtype resolution), a noticeable share of a 0.3 ms frame
        self._mip_last = [(np.int32(h - 1), np.int32(w - 1)) for h, w in self._mip_shape]
        self._mip_flat = [_pack(m).ravel() for m in mips]
        del mips, world

        rng = np.random.default_rng(self.seed + 7919)
        self._build_rays()
        # azimuth-major, so a frame's sky gathers whole contiguous columns
        self._graded = track.has_elevation
        self._pad = PITCH_PAD_ROWS if self._graded else 0
        self._panorama = np.ascontiguousarray(_pack(self._build_panorama(rng, self._pad)).T)
        self._haze = self._haze_colour()
        self._haze4 = np.append(self._haze, 0.0).astype(np.float32)
        self._cameras = {cam: self._build_camera(cam) for cam in CAMERAS}
        if self._graded:
            self._build_graded()

    # ------------------------------------------------------------------ setup
    def _build_rays(self) -> None:
        """Ray of each pixel centre; ground hits in the car frame (forward, left)."""
        u = (np.arange(FRAME_WIDTH) + 0.5 - FRAME_WIDTH / 2) / self.focal
        v = (np.arange(FRAME_HEIGHT) + 0.5 - FRAME_HEIGHT / 2) / self.focal
        a, b = np.meshgrid(u, -v)  # a: right, b: up in camera units
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        dx = cp + b * sp
        dz = -sp + b * cp
        dy = -a
        ground = dz < -1e-6
        t = np.where(ground, self.camera_height / np.where(ground, -dz, 1.0), np.inf)
        self._gx, self._gy = t * dx, t * dy
        self._dist = np.hypot(self._gx, self._gy)
        self._ground = ground & np.isfinite(self._dist)
        sky_rows = np.flatnonzero(~ground.any(axis=1))
        self._sky_rows = int(sky_rows.max()) + 1 if len(sky_rows) else 0
        self._col_azimuth = -np.arctan(u)  # right of centre = clockwise
        # texel footprint of each pixel, for the mip level
        gx = np.where(self._ground, self._gx, np.nan)
        gy = np.where(self._ground, self._gy, np.nan)
        du = np.hypot(np.gradient(gx, axis=1), np.gradient(gy, axis=1))
        dv = np.hypot(np.gradient(gx, axis=0), np.gradient(gy, axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            lod = np.log2(np.sqrt(du * dv) / self.texel) - LOD_BIAS
        lod = np.nan_to_num(np.round(lod), nan=MIP_LEVELS - 1)
        self._lod = np.clip(lod, 0, MIP_LEVELS - 1).astype(int)

    def _haze_colour(self) -> np.ndarray:
        th = self.track.theme
        b = self.lighting["brightness"] * self.lighting["tint"]
        sky, hills = np.asarray(th["sky_horizon"], np.float32), np.asarray(th["hills"], np.float32)
        mix = 0.55 * sky + 0.45 * hills
        return np.clip(mix * b, 0, 255).astype(np.float32)

    def _build_panorama(self, rng: np.random.Generator, pad: int = 0) -> np.ndarray:
        """Sky gradient, clouds and two layers of hills over 360 degrees of azimuth: the sky
        rows of the frame, or (`pad` > 0, for a pitching camera) every row and `pad` more above
        and below."""
        th = self.track.theme
        rows = FRAME_HEIGHT + 2 * pad if pad else max(1, self._sky_rows)
        cols = PANORAMA_COLUMNS
        horizon = pad + FRAME_HEIGHT / 2 - self.focal * math.tan(self.pitch)  # fractional row
        r = np.arange(rows, dtype=np.float32)[:, None]
        t = np.clip(r / max(horizon, 1.0), 0, 1) ** 1.5
        top, hor = np.asarray(th["sky_top"], np.float32), np.asarray(th["sky_horizon"], np.float32)
        pano = (top * (1 - t[..., None]) + hor * t[..., None]) * np.ones((1, cols, 1), np.float32)
        # clouds: wrap-around noise, thresholded, stronger high in the sky
        low = rng.standard_normal((6, 64)).astype(np.float32)
        low = np.concatenate([low, low[:, :4]], axis=1)
        big = cv2.resize(low, (int(cols * 68 / 64), rows), interpolation=cv2.INTER_CUBIC)[:, :cols]
        cover = np.clip((big - 0.4) * 0.8, 0, 0.85) * (1 - t)
        pano = pano * (1 - cover[..., None]) + 245.0 * cover[..., None]
        px_per_deg = self.focal * math.radians(1.0)
        hill_px = th["hill_height_deg"] * px_per_deg
        hills = np.asarray(th["hills"], np.float32)
        far = hill_px * (0.45 + 0.35 * _periodic_noise(cols, 12, rng))
        near = hill_px * (0.2 + 0.25 * np.abs(_periodic_noise(cols, 40, rng)))
        for height, colour, haze in ((far, hills, 0.45), (near, hills * 0.8, 0.2)):
            mask = r >= horizon - np.clip(height, 0, None)[None, :]
            shade = colour * (1 - haze) + hor * haze
            pano = np.where(mask[..., None], shade + rng.normal(0, 3, (rows, cols, 1)), pano)
        pano *= self.lighting["brightness"] * self.lighting["tint"]
        return np.clip(pano, 0, 255).astype(np.uint8)

    def _build_camera(self, camera: str) -> dict:
        """Row bands, constant pixels (bonnet, haze) and mount offset of one camera."""
        side = MOUNT_SIDE[camera]
        lateral = side * self.lateral_offset
        shift = int(side) * HOOD_SHIFT_PX
        cols = np.arange(FRAME_WIDTH)[None, :]
        rows = np.arange(FRAME_HEIGHT)[:, None]
        across = (cols - FRAME_WIDTH / 2 - shift) / (FRAME_WIDTH / 2)
        edge = HOOD_TOP_ROW + HOOD_CURVE_PX * across ** 2
        hood = rows >= edge
        base = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), np.float32)
        hood_rgb = np.asarray(self.track.theme["hood"], np.float32) * self.lighting["brightness"]
        depth = np.clip((rows - edge) / 12.0, 0, 1)[..., None]
        sheen = np.exp(-((cols - FRAME_WIDTH / 2 - shift) / 90.0) ** 2)[..., None]
        bonnet = hood_rgb * (1.35 - 0.45 * depth) + 18 * sheen * (1 - depth)
        base = np.where(hood[..., None], bonnet, base)
        fog = np.clip((self._dist - FOG_START_M) / (FOG_END_M - FOG_START_M), 0, 1) ** 0.7
        base[self._ground & (fog >= 1.0)] = self._haze
        base = _pack(np.clip(base, 0, 255).astype(np.uint8)).ravel()
        # bands of whole rows: a row is sampled if any of its ground pixels is not pure haze
        sampled_row = (self._ground & (fog < 1.0)).any(axis=1) & self._ground.all(axis=1)
        row_lod = np.array([int(np.median(self._lod[r][self._ground[r]])) if sampled_row[r] else -1
                            for r in range(FRAME_HEIGHT)])
        row_fog = (fog * self._ground).max(axis=1) > 0
        groups = []
        r = 0
        while r < FRAME_HEIGHT:
            if not sampled_row[r]:
                r += 1
                continue
            end = r + 1
            while (end < FRAME_HEIGHT and sampled_row[end] and row_lod[end] == row_lod[r]
                   and row_fog[end] == row_fog[r]):
                end += 1
            level = int(row_lod[r])
            inv = 1.0 / (self.texel * (1 << level))
            sl = slice(r * FRAME_WIDTH, end * FRAME_WIDTH)
            band_fog = fog.ravel()[sl][:, None].astype(np.float32) if row_fog[r] else None
            groups.append(_Group(
                start=sl.start, stop=sl.stop,
                fx=(self._gx.ravel()[sl] * inv).astype(np.float32),
                fy=(self._gy.ravel()[sl] * inv).astype(np.float32),
                level=level,
                keep=None if band_fog is None else 1 - band_fog,
                haze=None if band_fog is None else self._haze4 * band_fog,
            ))
            r = end
        hood_pix = np.flatnonzero(hood).astype(np.int32)
        return {
            "lateral": lateral,
            "base": base,
            "groups": groups,
            "hood_pix": hood_pix,
            "hood_val": base[hood_pix],
        }

    def _build_graded(self) -> None:
        """What the height-aware projection needs: each column's ray direction, each row's,
        and the forward distances at which the height profile ahead is sampled."""
        self._col_a = ((np.arange(FRAME_WIDTH) + 0.5 - FRAME_WIDTH / 2)
                       / self.focal).astype(np.float32)  # right, per unit forward
        self._row_b = -(np.arange(FRAME_HEIGHT) + 0.5 - FRAME_HEIGHT / 2) / self.focal  # up
        f = np.concatenate([np.arange(0.0, 20.0, 0.5), np.arange(20.0, 60.0, 1.0),
                            np.arange(60.0, FOG_END_M + 2.5, 2.5)])
        self._profile_f = f
        self._profile_steps = np.round(f / self.track.spacing).astype(np.int64)
        self._row_angle = np.arctan(self._row_b)  # each row's ray above the optical axis
        self._sx = np.ascontiguousarray(self.track.xy[:, 0])
        self._sy = np.ascontiguousarray(self.track.xy[:, 1])
        reach = int(NEAREST_WINDOW_M / self.track.spacing)
        self._window = np.arange(-reach, reach + 1)
        self._near2 = (self.track.width / 2.0 + 2.0) ** 2  # on or beside the road
        self._last_sample: dict[str, int] = {}
        self._haze_u32 = _pack(np.clip(self._haze, 0, 255).astype(np.uint8)[None, :])[0]
        # every mip level in one atlas of one row stride (level 0, the others side by side
        # below it), so a frame gathers all its rows at once with scalar index arithmetic
        shapes = self._mip_shape
        stride = max(shapes[0][1], sum(w for _, w in shapes[1:]))
        atlas = np.zeros((shapes[0][0] + (shapes[1][0] if len(shapes) > 1 else 0), stride),
                         np.uint32)
        rows_at, cols_at, col = [0], [0], 0
        atlas[:shapes[0][0], :shapes[0][1]] = self._mip_flat[0].reshape(shapes[0])
        for level in range(1, len(shapes)):
            h, w = shapes[level]
            atlas[shapes[0][0]:shapes[0][0] + h, col:col + w] = \
                self._mip_flat[level].reshape(h, w)
            rows_at.append(shapes[0][0])
            cols_at.append(col)
            col += w
        self._atlas = atlas.ravel()
        self._atlas_stride = np.int32(stride)
        self._level_row = np.array(rows_at, np.float32)  # where each level starts in the atlas
        self._level_col = np.array(cols_at, np.float32)
        self._level_width = np.array([w for _, w in self._mip_shape], np.int32)
        self._ray_cols = np.vstack([self._col_a, np.ones_like(self._col_a)])  # (2, width)
        self._level_last_x = self._level_width - 1
        self._level_last_y = np.array([h - 1 for h, _ in self._mip_shape], np.int32)
        self._level_inv = 1.0 / (self.texel * (1 << np.arange(MIP_LEVELS)))
        # the painting's far corner (m), less a texel of every level
        height, width = self._mip_shape[0]
        spare = self.texel * (1 << MIP_LEVELS)
        self._x1 = self._x0 + width * self.texel - spare
        self._y1 = self._y0 + height * self.texel - spare
        # level L when log2(sqrt(footprint) / texel) - LOD_BIAS rounds to L: footprint edges
        self._lod_factor = 1.0 / (self.focal * self.texel * self.texel)
        self._lod_edges = 4.0 ** (np.arange(MIP_LEVELS - 1) + 0.5 + LOD_BIAS)
        self._build_row_tables()

    def _build_row_tables(self) -> None:
        """Per centreline sample under the camera and viewing direction (along the track or
        against it): the camera's pitch with the road, and per image row the forward distance
        (m) at which its ray first meets the height profile ahead (inf: none, the sky), the
        metres sideways per unit of column direction there, and the mip level.

        A pinhole camera without roll sees one forward distance per row, so a frame needs a
        table row, not a ray march. A row's ray meets the ground at the first profile sample
        whose required slope ((height - camera height) / distance), or a nearer one's, is at
        least the ray's slope: a running maximum and a search, exact between samples."""
        track, f = self.track, self._profile_f
        n, k_count = len(track.z), len(f)
        samples = np.arange(n)
        self._row_tables = {}
        for step in (1, -1):
            pitch = self.pitch - np.arctan(step * track.grade)
            idx = (samples[:, None] + step * self._profile_steps[None, :]) % n
            ahead = track.z[idx] - track.z[:, None]  # (n, K): the road ahead, relative
            slope = np.tan(self._row_angle[None, :] - pitch[:, None])  # (n, rows)
            need = np.maximum.accumulate((ahead[:, 1:] - self.camera_height) / f[None, 1:],
                                         axis=1)
            span = 2.0 * max(np.abs(need).max(), np.abs(slope).max()) + 1.0
            offset = samples[:, None] * span  # one sorted array: each sample's block apart
            k = np.searchsorted((need + offset).ravel(), (slope + offset).ravel())
            k = k.reshape(n, -1) - samples[:, None] * (k_count - 1) + 1
            hit = k < k_count
            k = np.minimum(k, k_count - 1)
            g0 = np.take_along_axis(ahead, k - 1, axis=1)
            g1 = np.take_along_axis(ahead, k, axis=1)
            h0 = self.camera_height + slope * f[k - 1] - g0  # > 0: above the ground
            h1 = self.camera_height + slope * f[k] - g1  # <= 0: at or below it
            dist = f[k - 1] + (f[k] - f[k - 1]) * h0 / np.maximum(h0 - h1, 1e-9)
            dist = np.where(hit, dist, np.inf)
            scale = dist / (np.cos(pitch)[:, None] + self._row_b[None, :] * np.sin(pitch)[:, None])
            along = np.empty_like(dist)
            with np.errstate(invalid="ignore"):  # inf - inf above the horizon
                along[:, :-1] = np.abs(dist[:, :-1] - dist[:, 1:])
            along[:, -1] = along[:, -2]
            with np.errstate(invalid="ignore"):
                footprint = scale * np.maximum(np.nan_to_num(along, posinf=0.0), 1e-6) \
                    * self._lod_factor
            level = np.searchsorted(self._lod_edges, np.nan_to_num(footprint, posinf=0.0))
            self._row_tables[step] = (pitch, dist.astype(np.float64),
                                      np.where(hit, scale, 0.0), level.astype(np.intp))

    def ground_rows(self, state: CarState, camera: str = CENTER) -> tuple[np.ndarray, float]:
        """Height-aware projection of one frame: the forward distance (m, car frame) at which
        each image row's ray meets the road's height profile (inf: sky, or hidden beyond a
        crest), and the camera's pitch (rad, down) with the road under it (_build_row_tables:
        the profile along the road from the camera's nearest centreline sample, in the
        direction it looks)."""
        return self._rows_at(state, camera)[:2]

    def _nearest(self, camera: str, cx: float, cy: float) -> int:
        """The centreline sample nearest the camera: searched around the last frame's (a car
        moves a metre a frame), the whole track only when that is not conclusive."""
        last = self._last_sample.get(camera)
        if last is not None:
            idx = last + self._window
            if idx[0] < 0 or idx[-1] >= len(self._sx):
                idx %= len(self._sx)
            d2 = (self._sx[idx] - cx) ** 2 + (self._sy[idx] - cy) ** 2
            k = int(d2.argmin())
            if 0 < k < len(idx) - 1 and d2[k] < self._near2:
                self._last_sample[camera] = int(idx[k])
                return int(idx[k])
        _, i = self.track._tree.query((cx, cy))
        self._last_sample[camera] = int(i)
        return int(i)

    def _rows_at(self, state: CarState, camera: str) -> tuple:
        cx, cy, yaw = self.camera_pose(state, camera)
        i = self._nearest(camera, cx, cy)
        step = 1 if math.cos(yaw - self.track.heading[i]) >= 0 else -1
        pitch, dist, scale, level = self._row_tables[step]
        return dist[i], float(pitch[i]), scale[i], level[i], (cx, cy, yaw)

    def _render_graded(self, state: CarState, camera: str) -> np.ndarray:
        """A frame of a track with a height profile (see ground_rows): every ground row in one
        gather from all mip levels at once (each row's level from its footprint)."""
        cam = self._cameras[camera]
        forward, pitch, row_scale, row_level, (cx, cy, yaw) = self._rows_at(state, camera)
        c, s = math.cos(yaw), math.sin(yaw)
        out = cam["base"].copy()
        img = out.reshape(FRAME_HEIGHT, FRAME_WIDTH)
        finite = np.isfinite(forward)
        first = int(np.argmax(finite)) if finite[-1] else FRAME_HEIGHT  # rows above: sky
        dist = forward[first:]
        near = int(np.searchsorted(-dist, -FOG_END_M))  # rows first..first+near: haze
        img[first:first + near] = self._haze_u32
        top = first + near
        dist = dist[near:]
        n = len(dist)
        if n:
            scale, level = row_scale[top:], row_level[top:]
            inv = self._level_inv[level]
            q = scale * inv
            u0 = (c * dist + (cx - self._x0)) * inv  # the row's texel at the centre column
            v0 = (s * dist + (cy - self._y0)) * inv
            du, dv = s * q, -c * q  # texels per unit of column direction
            # every sampled point lies in the triangle of the camera and the farthest row's
            # ends (grown by a margin): if that is inside the painting, no clip is needed
            far, half = float(dist[0]), float(scale[0]) * self._col_a[-1]
            grow = GRADED_CLIP_MARGIN_M + 0.1 * far
            xs = (cx, cx + c * far - s * half, cx + c * far + s * half)
            ys = (cy, cy + s * far + c * half, cy + s * far - c * half)
            inside = (min(xs) - grow > self._x0 and max(xs) + grow < self._x1
                      and min(ys) - grow > self._y0 and max(ys) + grow < self._y1)
            # texel (u, v) of every pixel, already in the atlas: one (2n x 2) @ (2 x width)
            # product (u = du * a + u0 per row) instead of broadcast sums
            rows = np.empty((2 * n, 2), np.float32)
            rows[:n, 0], rows[n:, 0] = du, dv
            if inside:
                rows[:n, 1] = u0 + self._level_col[level]
                rows[n:, 1] = v0 + self._level_row[level]
                uv = (rows @ self._ray_cols).astype(np.int32)
            else:  # a row runs off the painting: clip to its level, then move into the atlas
                rows[:n, 1], rows[n:, 1] = u0, v0
                uv = (rows @ self._ray_cols).astype(np.int32)
                np.clip(uv[:n], _ZERO, self._level_last_x[level][:, None], out=uv[:n])
                np.clip(uv[n:], _ZERO, self._level_last_y[level][:, None], out=uv[n:])
                uv[:n] += self._level_col[level].astype(np.int32)[:, None]
                uv[n:] += self._level_row[level].astype(np.int32)[:, None]
            index = uv[n:]
            index *= self._atlas_stride
            index += uv[:n]
            colour = np.take(self._atlas, index)
            fogged = int(np.searchsorted(-dist, -FOG_START_M))
            if fogged:
                fog = np.power((dist[:fogged] - FOG_START_M) * (1.0 / (FOG_END_M - FOG_START_M)),
                               0.7).astype(np.float32)[:, None, None]
                rgba = colour[:fogged].view(np.uint8).reshape(fogged, FRAME_WIDTH, 4) * (1 - fog)
                rgba += fog * self._haze4
                colour[:fogged] = rgba.astype(np.uint8).view(np.uint32)[..., 0]
            img[top:] = colour
        if first:  # sky (and hills beyond a crest): the panorama, shifted with the pitch
            shift = int(round(self.focal * (pitch - self.pitch)))
            row = min(max(self._pad + shift, 0), self._panorama.shape[1] - first)
            az = np.floor((yaw + self._col_azimuth) * (PANORAMA_COLUMNS / (2 * math.pi)))
            columns = np.mod(az.astype(np.int64), PANORAMA_COLUMNS)
            img[:first] = np.take(self._panorama[:, row:row + first], columns, axis=0).T
        out[cam["hood_pix"]] = cam["hood_val"]
        rgba = img.view(np.uint8).reshape(FRAME_HEIGHT, FRAME_WIDTH, 4)
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)

    # ------------------------------------------------------------------ render
    def camera_pose(self, state: CarState, camera: str = CENTER) -> tuple[float, float, float]:
        """World (x, y, yaw) of a camera mounted on the car."""
        cam = self._cameras[camera]
        c, s = math.cos(state.yaw), math.sin(state.yaw)
        x = state.x + c * self.forward_offset - s * cam["lateral"]
        y = state.y + s * self.forward_offset + c * cam["lateral"]
        return x, y, state.yaw

    def render(self, state: CarState, camera: str = CENTER) -> np.ndarray:
        """One 160x320x3 uint8 RGB frame of `camera` for the car `state`."""
        if camera not in self._cameras:
            raise ValueError(f"camera: expected one of {CAMERAS}, got {camera!r}")
        if self._graded:
            return self._render_graded(state, camera)
        cam = self._cameras[camera]
        cx, cy, yaw = self.camera_pose(state, camera)
        c, s = math.cos(yaw), math.sin(yaw)
        out = cam["base"].copy()
        for g in cam["groups"]:
            inv = 1.0 / (self.texel * (1 << g.level))
            last_y, last_x = self._mip_last[g.level]
            ox, oy = (cx - self._x0) * inv, (cy - self._y0) * inv
            ix = (c * g.fx - s * g.fy + ox).astype(np.int32)
            iy = (s * g.fx + c * g.fy + oy).astype(np.int32)
            np.clip(ix, _ZERO, last_x, out=ix)
            np.clip(iy, _ZERO, last_y, out=iy)
            iy *= last_x + 1
            iy += ix
            colour = np.take(self._mip_flat[g.level], iy)  # faster than fancy indexing
            if g.keep is not None:
                rgba = colour.view(np.uint8).reshape(-1, 4) * g.keep
                rgba += g.haze
                colour = rgba.astype(np.uint8).view(np.uint32).ravel()
            out[g.start:g.stop] = colour
        out[cam["hood_pix"]] = cam["hood_val"]
        img = out.reshape(FRAME_HEIGHT, FRAME_WIDTH)
        if self._sky_rows:
            az = np.floor((yaw + self._col_azimuth) * (PANORAMA_COLUMNS / (2 * math.pi)))
            columns = np.mod(az.astype(np.int64), PANORAMA_COLUMNS)
            img[: self._sky_rows] = np.take(self._panorama, columns, axis=0).T
        rgba = img.view(np.uint8).reshape(FRAME_HEIGHT, FRAME_WIDTH, 4)
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)


_renderers: "OrderedDict[tuple, Renderer]" = OrderedDict()


def _track_key(track: Track) -> tuple:
    """What a rendered world depends on: the geometry and the theme, not the object."""
    points = np.asarray(track.control_points, dtype=np.float64)
    elevation = b"" if track.elevation is None else np.asarray(track.elevation).tobytes()
    return (str(track.name), float(track.width), points.tobytes(), repr(track.theme),
            repr(track.segments), elevation)


def renderer_for(track: Track, seed: int = 0) -> Renderer:
    """A Renderer for (track, lighting seed), reused while it is among the last
    RENDERER_CACHE_SIZE asked for."""
    key = (_track_key(track), int(seed))
    renderer = _renderers.get(key)
    if renderer is not None:
        _renderers.move_to_end(key)
        return renderer
    renderer = _renderers[key] = Renderer(track, seed=seed)
    while len(_renderers) > RENDERER_CACHE_SIZE:
        _renderers.popitem(last=False)
    return renderer
