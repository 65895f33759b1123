"""Tracks are data: a YAML file of closed centreline control points plus a road width, and
optionally segments (bridge, dirt branch, markings, shadows, surfaces) and a height profile
(bc/sim/segments.py has their schema).

The centreline is a smooth periodic cubic spline through the points, resampled at a
fixed arc-length spacing. Loading validates the geometry (enough points, finite
numbers, positive width, bends the road width and the car can take, no part of the
road overlapping another) so a bad file fails at load with its name and the problem,
never as a strange drive later.

Length: the track file's schema, its validation with one-line errors, and the geometry
queries the car, camera and expert share (segments live in bc/sim/segments.py).
"""

from __future__ import annotations

import math
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import yaml
from scipy.interpolate import splev, splprep
from scipy.spatial import cKDTree

from bc.errors import BcError
from bc.sim.car import make_car
from bc.sim.segments import (SIDES, Segment, height_profile, parse_elevation, parse_segments,
                             reverse_segments, segment_maps)
from bc.sim.segments import MAX_GRADE

SAMPLE_SPACING_M = 0.25  # dense centreline resolution
MIN_POINTS = 4
CLEARANCE_M = 1.0  # grass that must separate two parts of the road (and the inside of a bend)
MIN_CAR_RADIUS_M = make_car().min_turn_radius  # the car cannot follow a tighter bend at full lock
RANDOM_TRIES = 200  # procedural tracks: attempts before giving up
RANDOM_MIN_RADIUS_M = 14.0  # procedural tracks keep bends the expert can take at speed
RANDOM_MAX_GRADE = 0.08  # procedural tracks: steepest grade of their height profile
BRANCH_MARGIN_M = 1.0  # the dirt branch's open edge starts/ends this far beyond the fork
SHIPPED_TRACKS_PACKAGE = "bc.sim"
SHIPPED_TRACKS_DIR = "tracks"

DEFAULT_THEME: dict[str, Any] = {
    "sky_top": [92, 142, 210],  # RGB
    "sky_horizon": [200, 218, 235],
    "hills": [96, 122, 96],
    "hill_height_deg": 4.0,  # tallest silhouette above the horizon
    "grass": [78, 118, 52],
    "grass_dark": [58, 92, 40],
    "dirt": [140, 120, 88],  # shoulder just outside the road
    "shoulder_m": 0.6,
    "road": [104, 104, 108],
    "road_noise": 10.0,  # std of per-texel brightness noise on asphalt
    "edge_line": [235, 235, 235],
    "edge_line_width_m": 0.2,
    "edge_line_inset_m": 0.3,  # from the road edge to the line's outer side
    "centre_line": [230, 196, 60],
    "centre_line_width_m": 0.15,
    "dash_length_m": 3.0,
    "dash_gap_m": 6.0,
    "curb_a": [200, 40, 40],
    "curb_b": [240, 240, 240],
    "curb_width_m": 0.8,
    "curb_block_m": 1.0,
    "curb_min_curvature": 0.025,  # 1/m: bends tighter than 40 m radius get curbs
    "shadows": 40,  # shadow patches scattered along the road, per 1 km
    "hood": [38, 40, 46],  # the car's bonnet at the bottom of the frame
}


class TrackError(BcError, ValueError):
    """A track file or spec is unusable; the message names the source and the problem."""


class TrackPoint(NamedTuple):
    """Nearest centreline point to a query position."""

    s: float  # arc length along the centreline (m), in [0, length)
    cte: float  # signed lateral offset (m), + = left of the travel direction
    heading: float  # centreline heading (rad, CCW from +x)
    x: float  # the centreline point
    y: float
    index: int  # dense sample index


class Track:
    """A closed road: dense centreline, arc length, heading, curvature and nearest-point lookup."""

    def __init__(
        self,
        name: str,
        width: float,
        points: Any,
        theme: Mapping[str, Any] | None = None,
        source: str = "<memory>",
        spacing: float = SAMPLE_SPACING_M,
        segments: Any = None,
        elevation: Any = None,
    ) -> None:
        self.source = source
        self.name = str(name)
        self.width = _check_width(width, source)
        self.control_points = _check_points(points, source)
        self.theme = _merge_theme(theme, source)
        self._build(spacing)
        self._validate_geometry()
        try:
            if segments and isinstance(segments[0], Segment):
                self.segments = list(segments)
            else:
                self.segments = parse_segments(segments, self.length, self.width)
            self.elevation = (elevation if isinstance(elevation, np.ndarray)
                              else parse_elevation(elevation, self.length))
        except ValueError as exc:
            raise TrackError(f"{source}: {exc}") from None
        self._build_profile()
        self.branches = [self._branch(i, seg) for i, seg in enumerate(self.segments)
                         if seg.kind == "dirt_branch"]
        self.maps = segment_maps(self.segments, self.s, self.length, self.width,
                                 [b["open"] for b in self.branches])
        self.half_width = self.maps.half

    # ------------------------------------------------------------------ segments, heights
    def _build_profile(self) -> None:
        self.z = height_profile(self.elevation, self.s, self.length)
        self.grade = (np.roll(self.z, -1) - np.roll(self.z, 1)) / (2 * self.spacing)
        self.has_elevation = bool(np.ptp(self.z) > 1e-6)
        steep = int(np.argmax(np.abs(self.grade)))

        if abs(self.grade[steep]) > MAX_GRADE:
            raise TrackError(
                f"{self.source}: elevation: the grade at s={self.s[steep]:.1f} m is "
                f"{100 * self.grade[steep]:+.1f} %, steeper than {100 * MAX_GRADE:.0f} %; "
                f"spread the [s, z] points or lower the heights")

    def _branch(self, i: int, seg: Segment) -> dict[str, Any]:
        """The dirt branch's rectangle (world corners), its centreline samples and the stretch
        of road whose edge it opens; checked to stay clear of every other part of the road."""
        p = seg.params
        where = f"{self.source}: segments[{i}] (dirt_branch)"
        x, y, heading = self.pose_at(seg.start)
        side = SIDES[p["side"]]
        theta = math.radians(p["angle_deg"])
        forward = p["heading"] == "forward"
        direction = heading + side * theta if forward else heading + math.pi - side * theta
        ux, uy = math.cos(direction), math.sin(direction)
        half, wb = self.width / 2.0, p["width"]
        clear_at = (half + wb / 2.0) / math.sin(theta)  # the branch has left the road here
        if p["length"] < clear_at + 5.0:
            raise TrackError(f"{where}: length {p['length']:g} m is too short to leave the "
                             f"road at {p['angle_deg']:g} degrees (needs > {clear_at + 5:.1f} m)")
        d = np.arange(clear_at + 3.0, p["length"], 1.0)
        centre = np.column_stack([x + d * ux, y + d * uy])
        dist, idx = self._tree.query(centre)
        need = half + wb / 2.0
        bad = np.flatnonzero(dist < need)
        if len(bad):
            k = int(bad[0])
            raise TrackError(
                f"{where}: the branch runs into the road near x={centre[k, 0]:.1f}, "
                f"y={centre[k, 1]:.1f} (s={self.s[idx[k]]:.1f} m, {dist[k]:.1f} m from its "
                f"centreline, needs > {need:.1f} m); change at, side, angle_deg or length")
        nx, ny = -uy * wb / 2.0, ux * wb / 2.0
        end = (x + p["length"] * ux, y + p["length"] * uy)
        corners = np.array([[x + nx, y + ny], [end[0] + nx, end[1] + ny],
                            [end[0] - nx, end[1] - ny], [x - nx, y - ny]])
        near = (half - wb / 2.0) / math.tan(theta) - BRANCH_MARGIN_M
        far = (half + wb / 2.0) / math.tan(theta) + BRANCH_MARGIN_M
        if forward:
            opened = (seg.start + near, seg.start + far, p["side"])
        else:
            opened = (seg.start - far, seg.start - near, p["side"])
        return {"corners": corners, "start": (x, y), "direction": (ux, uy),
                "length": p["length"], "width": wb, "open": opened}

    def half_width_at(self, s: float) -> float:
        """The road's half width (m) at arc length s (narrower on a narrow bridge)."""
        return float(self.half_width[int(round((float(s) % self.length) / self.spacing))
                                     % len(self.s)])

    def height_at(self, s: float) -> float:
        """Road height (m) at arc length s."""
        i = int(round((float(s) % self.length) / self.spacing)) % len(self.s)
        return float(self.z[i])

    def grade_at(self, s: float) -> float:
        """Road grade dz/ds at arc length s along the driving direction (+ = uphill)."""
        i = int(round((float(s) % self.length) / self.spacing)) % len(self.s)
        return float(self.grade[i])

    def reversed(self) -> "Track":
        """The same road driven the other way: same start point, arc length in the new
        direction, segments and heights mapped onto it."""
        points = self.control_points
        elevation = None
        if self.elevation is not None:
            s = (self.length - self.elevation[:, 0]) % self.length
            order = np.argsort(s)
            elevation = np.column_stack([s[order], self.elevation[order, 1]])
        return Track(f"{self.name}-reverse", self.width, np.vstack([points[:1], points[:0:-1]]),
                     self.theme, source=f"{self.source} (reversed)",
                     segments=reverse_segments(self.segments, self.length),
                     elevation=elevation)

    # ------------------------------------------------------------------ geometry
    def _build(self, spacing: float) -> None:
        pts = np.vstack([self.control_points, self.control_points[:1]])
        try:
            tck, _ = splprep([pts[:, 0], pts[:, 1]], s=0.0, per=True, k=3)
        except Exception as exc:  # scipy raises several types for degenerate input
            raise TrackError(
                f"{self.source}: cannot fit a closed spline through the points ({exc})"
            ) from None
        # arc length by fine chord sampling, then resample at uniform arc length
        fine = max(2000, 40 * len(self.control_points))
        u_fine = np.linspace(0.0, 1.0, fine + 1)
        fx, fy = splev(u_fine, tck)
        seg = np.hypot(np.diff(fx), np.diff(fy))
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        length = float(cum[-1])
        n = max(16, int(round(length / spacing)))
        s = np.arange(n) * (length / n)
        u = np.interp(s, cum, u_fine)
        x, y = splev(u, tck)
        dx, dy = splev(u, tck, der=1)
        ddx, ddy = splev(u, tck, der=2)
        speed2 = dx * dx + dy * dy
        self.xy = np.column_stack([x, y]).astype(np.float64)
        self.s = s
        self.length = length
        self.heading = np.arctan2(dy, dx)
        self.curvature = (dx * ddy - dy * ddx) / np.maximum(speed2, 1e-12) ** 1.5
        self.spacing = length / n

    @cached_property
    def _tree(self) -> cKDTree:
        return cKDTree(self.xy)

    @property
    def normals(self) -> np.ndarray:
        """(N, 2) unit vectors pointing to the left of the travel direction."""
        return np.column_stack([-np.sin(self.heading), np.cos(self.heading)])

    def edges(self, offset: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Left and right road edges (N, 2) at `offset` from the centreline (default width/2)."""
        off = self.width / 2.0 if offset is None else float(offset)
        n = self.normals
        return self.xy + off * n, self.xy - off * n

    # ------------------------------------------------------------------ queries
    def locate_many(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised nearest-centreline lookup: (s, signed lateral offset, index) per point."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        _, idx = self._tree.query(p)
        n = len(self.xy)
        a = np.stack([(idx - 1) % n, idx])  # (2, m): segments (i-1, i) and (i, i+1), at once
        pa = self.xy[a]
        ab = self.xy[(a + 1) % n] - pa
        rel = p - pa
        seg_len2 = np.einsum("kij,kij->ki", ab, ab)
        t = np.clip(np.einsum("kij,kij->ki", rel, ab) / seg_len2, 0.0, 1.0)
        off = rel - t[..., None] * ab
        d = np.hypot(off[..., 0], off[..., 1])
        seg_len = np.sqrt(seg_len2)
        cte = (ab[..., 0] * rel[..., 1] - ab[..., 1] * rel[..., 0]) / seg_len  # + = left of a->b
        s = (self.s[a] + t * seg_len) % self.length
        nearer = (d[1] < d[0]).astype(np.intp), np.arange(len(p))  # ties: the first segment
        return s[nearer], cte[nearer], idx

    def locate(self, x: float, y: float) -> TrackPoint:
        """Nearest centreline point to (x, y) with the signed cross-track error."""
        s, cte, idx = self.locate_many(np.array([[x, y]]))
        px, py, heading = self.pose_at(float(s[0]))
        return TrackPoint(float(s[0]), float(cte[0]), heading, px, py, int(idx[0]))

    def pose_at(self, s: float) -> tuple[float, float, float]:
        """Centreline (x, y, heading) at arc length s (wraps around the lap)."""
        s = float(s) % self.length
        n = len(self.xy)
        f = s / self.spacing
        i = int(f) % n
        j = (i + 1) % n
        t = f - int(f)
        x = (1 - t) * self.xy[i, 0] + t * self.xy[j, 0]
        y = (1 - t) * self.xy[i, 1] + t * self.xy[j, 1]
        dh = math.atan2(math.sin(self.heading[j] - self.heading[i]),
                        math.cos(self.heading[j] - self.heading[i]))
        h = self.heading[i] + t * dh
        return float(x), float(y), float(math.atan2(math.sin(h), math.cos(h)))

    def curvature_at(self, s: float) -> float:
        """Centreline curvature (1/m, + = left bend) at arc length s."""
        i = int(round((float(s) % self.length) / self.spacing)) % len(self.s)
        return float(self.curvature[i])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the road including its width."""
        lo = self.xy.min(axis=0) - self.width
        hi = self.xy.max(axis=0) + self.width
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def __repr__(self) -> str:
        return (f"Track(name={self.name!r}, width={self.width}, length={self.length:.1f} m, "
                f"points={len(self.control_points)}, source={self.source!r})")

    # ------------------------------------------------------------------ validation
    def _validate_geometry(self) -> None:
        src = self.source
        radius = 1.0 / np.maximum(np.abs(self.curvature), 1e-9)
        i = int(np.argmin(radius))
        r_min = float(radius[i])
        half = self.width / 2.0
        if r_min <= half + CLEARANCE_M / 2:
            raise TrackError(
                f"{src}: road too wide for the bend at s={self.s[i]:.1f} m "
                f"(near x={self.xy[i, 0]:.1f}, y={self.xy[i, 1]:.1f}): bend radius {r_min:.2f} m "
                f"must exceed half the width plus clearance ({half + CLEARANCE_M / 2:.2f} m); "
                f"use a narrower road or spread the points"
            )
        if r_min < MIN_CAR_RADIUS_M:
            raise TrackError(
                f"{src}: bend at s={self.s[i]:.1f} m (near x={self.xy[i, 0]:.1f}, "
                f"y={self.xy[i, 1]:.1f}) has radius {r_min:.2f} m, tighter than the car's "
                f"full-lock turning radius {MIN_CAR_RADIUS_M:.2f} m"
            )
        hit = _first_edge_crossing(self, half + CLEARANCE_M / 2)
        if hit is not None:
            s1, s2, px, py = hit
            raise TrackError(
                f"{src}: the road overlaps itself (or comes within {CLEARANCE_M} m of itself) "
                f"near x={px:.1f}, y={py:.1f} (centreline s={s1:.1f} m and s={s2:.1f} m); "
                f"a track must be a simple closed loop whose road does not touch itself"
            )


# ---------------------------------------------------------------------- checks
def _check_width(width: Any, source: str) -> float:
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise TrackError(f"{source}: 'width' must be a number of metres, got {width!r}") from None
    if not math.isfinite(w) or w <= 0:
        raise TrackError(f"{source}: 'width' must be a finite number > 0 (metres), got {width!r}")
    return w


def _check_points(points: Any, source: str) -> np.ndarray:
    if not isinstance(points, (list, tuple, np.ndarray)):
        raise TrackError(
            f"{source}: 'points' must be a list of [x, y] pairs, got {type(points).__name__}"
        )
    rows = []
    for i, p in enumerate(points):
        if not isinstance(p, (list, tuple, np.ndarray)) or len(p) != 2:
            raise TrackError(f"{source}: points[{i}] must be an [x, y] pair, got {p!r}")
        try:
            xy = (float(p[0]), float(p[1]))
        except (TypeError, ValueError):
            raise TrackError(f"{source}: points[{i}] must hold two numbers, got {p!r}") from None
        if not all(math.isfinite(v) for v in xy):
            raise TrackError(f"{source}: points[{i}] is not finite: {p!r}")
        rows.append(xy)
    if len(rows) < MIN_POINTS:
        raise TrackError(
            f"{source}: 'points' needs at least {MIN_POINTS} points for a closed track, "
            f"got {len(rows)}"
        )
    arr = np.asarray(rows, dtype=np.float64)
    gaps = np.hypot(*(np.roll(arr, -1, axis=0) - arr).T)
    j = int(np.argmin(gaps))
    if gaps[j] < 1e-6:
        raise TrackError(f"{source}: points[{j}] and points[{(j + 1) % len(arr)}] coincide")
    return arr


def _merge_theme(theme: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    merged = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULT_THEME.items()}
    if theme is None:
        return merged
    if not isinstance(theme, Mapping):
        raise TrackError(f"{source}: 'theme' must be a mapping, got {type(theme).__name__}")
    for key, value in theme.items():
        if key not in DEFAULT_THEME:
            raise TrackError(
                f"{source}: theme.{key} is not a known theme key; known: {sorted(DEFAULT_THEME)}"
            )
        default = DEFAULT_THEME[key]
        if isinstance(default, list):
            ok = (isinstance(value, (list, tuple)) and len(value) == 3
                  and all(isinstance(c, (int, float)) and 0 <= c <= 255 for c in value))
            if not ok:
                raise TrackError(
                    f"{source}: theme.{key} must be an [r, g, b] colour with values 0..255, "
                    f"got {value!r}"
                )
            merged[key] = [int(c) for c in value]
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise TrackError(f"{source}: theme.{key} must be a number, got {value!r}") from None
            if not math.isfinite(v) or v < 0:
                raise TrackError(
                    f"{source}: theme.{key} must be a finite number >= 0, got {value!r}"
                )
            merged[key] = v
    return merged


def _first_edge_crossing(track: Track, offset: float) -> tuple[float, float, float, float] | None:
    """Find where the road edges (offset from the centreline) cross each other or themselves.

    Edges that never cross bound a simple ring, i.e. a road that does not overlap itself.
    Candidate segment pairs come from a KD-tree on segment midpoints, so this is ~O(N log N).
    """
    left, right = track.edges(offset)
    n = len(track.xy)
    a = np.vstack([left, right])
    b = np.vstack([np.roll(left, -1, axis=0), np.roll(right, -1, axis=0)])
    owner = np.concatenate([np.arange(n), np.arange(n)])  # centreline index of each segment
    side = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    mids = 0.5 * (a + b)
    max_len = float(np.max(np.hypot(*(b - a).T)))
    pairs = cKDTree(mids).query_pairs(max_len + 1e-9, output_type="ndarray")
    if len(pairs) == 0:
        return None
    i, j = pairs[:, 0], pairs[:, 1]
    same = side[i] == side[j]
    gap = np.abs(owner[i] - owner[j])
    gap = np.minimum(gap, n - gap)
    keep = ~(same & (gap <= 1))  # neighbouring segments of one edge share an endpoint
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return None
    p, r = a[i], b[i] - a[i]
    q, sv = a[j], b[j] - a[j]
    denom = r[:, 0] * sv[:, 1] - r[:, 1] * sv[:, 0]
    qp = q - p
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (qp[:, 0] * sv[:, 1] - qp[:, 1] * sv[:, 0]) / denom
        u = (qp[:, 0] * r[:, 1] - qp[:, 1] * r[:, 0]) / denom
    hit = (np.abs(denom) > 1e-12) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    if not hit.any():
        return None
    k = int(np.argmax(hit))
    px, py = p[k] + t[k] * r[k]
    return float(track.s[owner[i[k]]]), float(track.s[owner[j[k]]]), float(px), float(py)


# ---------------------------------------------------------------------- loading
def shipped_tracks() -> list[str]:
    """Names of the tracks that ship with the package."""
    folder = resources.files(SHIPPED_TRACKS_PACKAGE) / SHIPPED_TRACKS_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def track_from_dict(data: Any, source: str = "<memory>") -> Track:
    """Build a Track from the parsed YAML mapping, naming `source` in every error."""
    if not isinstance(data, Mapping):
        raise TrackError(
            f"{source}: expected a mapping with keys name, width, points (and optional theme)"
        )
    unknown = set(data) - {"name", "width", "points", "theme", "segments", "elevation"}
    if unknown:
        raise TrackError(
            f"{source}: unknown keys {sorted(unknown)}; expected name, width, points, theme, "
            f"segments, elevation"
        )
    for key in ("width", "points"):
        if key not in data:
            raise TrackError(f"{source}: missing required key '{key}'")
    name = data.get("name") or Path(source).stem
    return Track(name, data["width"], data["points"], data.get("theme"), source=source,
                 segments=data.get("segments"), elevation=data.get("elevation"))


def load_track_file(path: str | Path) -> Track:
    """Load and validate a track YAML file."""
    path = Path(path)
    if not path.is_file():
        raise TrackError(
            f"{path}: track file not found "
            f"(shipped tracks: {', '.join(shipped_tracks())}, or 'random')"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TrackError(f"{path}: not valid YAML ({exc})") from None
    return track_from_dict(data, source=str(path))


def random_track(seed: int = 0) -> Track:
    """A procedural closed track: jittered checkpoints around a loop, retried until valid."""
    rng = np.random.default_rng(seed)
    last: Exception | None = None
    for _ in range(RANDOM_TRIES):
        k = int(rng.integers(10, 17))
        base_radius = rng.uniform(90.0, 140.0)
        angles = 2 * np.pi * (np.arange(k) + rng.uniform(-0.3, 0.3, k)) / k
        radii = base_radius * rng.uniform(0.55, 1.15, k)
        pts = np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])
        width = float(rng.uniform(7.0, 10.0))
        try:
            track = Track(f"random-{seed}", round(width, 2), pts.round(2).tolist(),
                          source=f"random(seed={seed})")
        except TrackError as exc:
            last = exc
            continue
        if np.max(np.abs(track.curvature)) * RANDOM_MIN_RADIUS_M > 1.0:
            continue
        return _with_features(track, seed)
    raise TrackError(f"random(seed={seed}): no valid track after {RANDOM_TRIES} tries ({last})")


def _with_features(track: Track, seed: int) -> Track:
    """The procedural track with segments and a height profile drawn from its own stream of
    `seed` (the shape's draws stay as they were): a bridge on the straightest stretch, a dirt
    branch on the outside of a bend where it fits, a stretch of centre line, shadows, a worn
    or wet surface, a stretch without markings; rolling hills up to RANDOM_MAX_GRADE."""
    rng = np.random.default_rng([seed, 21])
    length, n = track.length, len(track.s)
    ks = int(rng.integers(3, 7))
    s_knots = np.sort(rng.uniform(0, length, ks))
    z_knots = rng.uniform(-1.0, 1.0, ks) * rng.uniform(3.0, 12.0)
    elevation = np.column_stack([s_knots, z_knots])
    z = height_profile(elevation, track.s, length)
    steepest = float(np.max(np.abs(np.gradient(z, track.spacing))))
    if steepest > RANDOM_MAX_GRADE:
        elevation[:, 1] *= RANDOM_MAX_GRADE / steepest
    elevation = np.round(elevation, 2)

    def stretch(span: float) -> tuple[float, float]:
        start = float(rng.uniform(0, length))
        return math.floor(start * 10) / 10, math.floor((start + span) % length * 10) / 10

    curv = np.abs(track.curvature)
    window = int(50.0 / track.spacing)
    straight = np.convolve(np.r_[curv, curv[:window]], np.ones(window), "valid")[:n]
    i = int(np.argmin(straight))
    segments: list[dict[str, Any]] = []
    if rng.uniform() < 0.8:
        a = float(track.s[i]) + 5.0
        segments.append({"kind": "bridge", "from": math.floor(a % length * 10) / 10,
                         "to": math.floor((a + rng.uniform(25, 40)) % length * 10) / 10,
                         "width": round(float(track.width * rng.uniform(0.8, 1.0)), 2)})
    a, b = stretch(rng.uniform(80, 200))
    segments.append({"kind": "centre_line", "from": a, "to": b,
                     "style": str(rng.choice(["solid", "double"]))})
    for _ in range(int(rng.integers(1, 3))):
        a, b = stretch(rng.uniform(40, 120))
        segments.append({"kind": "shadows", "from": a, "to": b,
                         "density": round(float(rng.uniform(0.3, 0.8)), 2)})
    a, b = stretch(rng.uniform(30, 80))
    segments.append({"kind": "surface", "from": a, "to": b,
                     "surface": str(rng.choice(["worn", "wet"]))})
    a, b = stretch(rng.uniform(20, 50))
    segments.append({"kind": "no_markings", "from": a, "to": b})
    for at in rng.uniform(0, length, 6):  # a dirt branch on the outside of a bend, if one fits
        k = int(round(at / track.spacing)) % n
        side = "right" if track.curvature[k] > 0 else "left"
        branch = {"kind": "dirt_branch", "at": math.floor(at * 10) / 10, "side": side,
                  "angle_deg": round(float(rng.uniform(8, 16)), 1),
                  "length": round(float(rng.uniform(45, 60)), 1)}
        try:
            Track(track.name, track.width, track.control_points, track.theme,
                  source=track.source, segments=[branch])
        except TrackError:
            continue
        segments.append(branch)
        break
    return Track(track.name, track.width, track.control_points, track.theme,
                 source=track.source, segments=segments, elevation=elevation.tolist())


def load_track(spec: str | Path, seed: int = 0) -> Track:
    """Resolve a track spec: a shipped name (`lake`, `jungle`, ...), a YAML path, `random:<n>`
    (procedural track n), or `random` (shape from `seed`)."""
    text = str(spec).strip()
    if text == "random":
        return random_track(seed)
    match = re.fullmatch(r"random[:-](\d+)", text)
    if match:
        return random_track(int(match.group(1)))
    if text in shipped_tracks():
        ref = resources.files(SHIPPED_TRACKS_PACKAGE) / SHIPPED_TRACKS_DIR / f"{text}.yaml"
        with resources.as_file(ref) as path:
            return load_track_file(path)
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).exists():
        return load_track_file(text)
    raise TrackError(
        f"track {text!r}: not a shipped track ({', '.join(shipped_tracks())}), "
        f"not 'random' / 'random:<n>' and not a .yaml file path"
    )
