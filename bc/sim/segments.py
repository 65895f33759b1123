"""Track segments and the height profile: what makes a stretch of road different from the rest.

A track YAML may declare, besides its centreline,

    segments:                 # stretches along the driving direction; from/to in metres of arc
      - {kind: bridge, from: 20, to: 75, width: 8.0}             # optional deck/wall colours
      - {kind: dirt_branch, at: 110, side: right, angle_deg: 12, length: 45, width: 7}
      - {kind: open_edge, from: 300, to: 330, side: left}       # kerb and edge line stop
      - {kind: centre_line, style: double}                      # no from/to: the whole lap
      - {kind: no_markings, from: 400, to: 440}
      - {kind: shadows, from: 500, to: 620, density: 0.7}       # 0..1: share of road in shade
      - {kind: surface, from: 650, to: 700, surface: wet}       # worn | wet | dirt
    elevation:                # [s, z] pairs (m): height z at arc length s, a smooth closed loop
      - [0, 0]
      - [150, 9]

A range with `from` > `to` wraps past the start line. Rendering (bc/sim/camera.py) reads the
per-sample arrays `SegmentMaps` below; the car and the off-road rule read the road's half width
and grade (bc/sim/track.py). Every problem is reported as one line naming the file and the
segment (`segments[i] (kind)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

KINDS = ("bridge", "dirt_branch", "open_edge", "centre_line", "no_markings", "shadows", "surface")
SIDES = {"left": 1.0, "right": -1.0}
CENTRE_STYLES = ("dashed", "solid", "double", "none")  # codes 0..3 in SegmentMaps.centre
SURFACES = ("asphalt", "worn", "wet", "dirt")  # codes 0..3 in SegmentMaps.surface
MAX_GRADE = 0.2  # 20 %: steeper than any public road the car is meant for
BRIDGE_MIN_WIDTH_M = 3.5
BRANCH_ANGLE_DEG = (4.0, 40.0)
# keys of each kind: (required, optional with defaults)
SCHEMA: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "bridge": ((), {"from": None, "to": None, "width": None, "deck": [150, 146, 138],
                    "wall": [200, 200, 196]}),
    "dirt_branch": (("at", "side"), {"angle_deg": 12.0, "length": 45.0, "width": None,
                                     "heading": "forward"}),
    "open_edge": (("side",), {"from": None, "to": None}),
    "centre_line": ((), {"from": None, "to": None, "style": "solid"}),
    "no_markings": ((), {"from": None, "to": None}),
    "shadows": (("density",), {"from": None, "to": None}),
    "surface": (("surface",), {"from": None, "to": None}),
}


@dataclass
class Segment:
    """One validated segment: `kind`, its arc-length range [start, end) (end may be < start:
    it wraps) and the kind's parameters."""

    kind: str
    start: float
    end: float
    params: dict[str, Any] = field(default_factory=dict)

    def contains(self, s: np.ndarray, length: float) -> np.ndarray:
        """Which arc lengths lie in the range (wrapping past the start line)."""
        if self.end - self.start >= length or (self.start == 0.0 and self.end >= length):
            return np.ones_like(s, dtype=bool)
        a, b = self.start % length, self.end % length
        return (s >= a) & (s < b) if a <= b else (s >= a) | (s < b)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "dirt_branch":
            out["at"] = self.start
        else:
            out["from"], out["to"] = self.start, self.end
        return {**out, **self.params}


def _number(value: Any, where: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {what} must be finite, got {value!r}")
    return v


def _colour(value: Any, where: str, what: str) -> list[int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(c, (int, float)) and 0 <= c <= 255 for c in value))
    if not ok:
        raise ValueError(f"{where}: {what} must be an [r, g, b] colour 0..255, got {value!r}")
    return [int(c) for c in value]


def parse_segments(raw: Any, length: float, width: float) -> list[Segment]:
    """Validate the YAML `segments` list against a road of `length` and `width` (m); raises
    ValueError with the segment named (the caller adds the file)."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"'segments' must be a list of mappings, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "kind" not in item:
            raise ValueError(f"segments[{i}]: expected a mapping with a 'kind' "
                             f"(one of {', '.join(KINDS)}), got {item!r}")
        kind = item["kind"]
        if kind not in SCHEMA:
            raise ValueError(f"segments[{i}]: unknown kind {kind!r}; expected one of "
                             f"{', '.join(KINDS)}")
        where = f"segments[{i}] ({kind})"
        required, optional = SCHEMA[kind]
        unknown = set(item) - {"kind", *required, *optional}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected "
                             f"{sorted({*required, *optional})}")
        missing = [key for key in required if key not in item]
        if missing:
            raise ValueError(f"{where}: missing required key '{missing[0]}'")
        values = {**optional, **{k: v for k, v in item.items() if k != "kind"}}
        out.append(_parse_one(kind, values, where, length, width))
    return out


def _parse_one(kind: str, v: dict[str, Any], where: str, length: float,
               width: float) -> Segment:
    def arc(key: str, default: float) -> float:
        if v.get(key) is None:
            return default
        value = _number(v[key], where, key)
        if not 0.0 <= value <= length:
            raise ValueError(f"{where}: {key} must be within the lap, 0..{length:.1f} m, "
                             f"got {value:g}")
        return value

    params: dict[str, Any] = {}
    if kind == "dirt_branch":
        at = arc("at", 0.0)
        params["side"] = _side(v["side"], where)
        angle = _number(v["angle_deg"], where, "angle_deg")
        if not BRANCH_ANGLE_DEG[0] <= angle <= BRANCH_ANGLE_DEG[1]:
            raise ValueError(f"{where}: angle_deg must be a shallow angle in "
                             f"{BRANCH_ANGLE_DEG[0]:g}..{BRANCH_ANGLE_DEG[1]:g} degrees, "
                             f"got {angle:g}")
        params["angle_deg"] = angle
        params["length"] = _positive(v["length"], where, "length")
        params["width"] = (width if v["width"] is None
                           else _positive(v["width"], where, "width"))
        if v["heading"] not in ("forward", "backward"):
            raise ValueError(f"{where}: heading must be forward or backward, "
                             f"got {v['heading']!r}")
        params["heading"] = v["heading"]
        return Segment(kind, at, at, params)
    start, end = arc("from", 0.0), arc("to", length)
    if start == end:
        raise ValueError(f"{where}: from and to are both {start:g} m: an empty stretch")
    if kind == "bridge":
        if v["width"] is not None:
            w = _positive(v["width"], where, "width")
            if not BRIDGE_MIN_WIDTH_M <= w <= width:
                raise ValueError(f"{where}: width must be between {BRIDGE_MIN_WIDTH_M:g} m and "
                                 f"the road's width {width:g} m, got {w:g}")
            params["width"] = w
        params["deck"] = _colour(v["deck"], where, "deck")
        params["wall"] = _colour(v["wall"], where, "wall")
    elif kind == "open_edge":
        params["side"] = _side(v["side"], where)
    elif kind == "centre_line":
        if v["style"] not in CENTRE_STYLES:
            raise ValueError(f"{where}: style must be one of {', '.join(CENTRE_STYLES)}, "
                             f"got {v['style']!r}")
        params["style"] = v["style"]
    elif kind == "shadows":
        density = _number(v["density"], where, "density")
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"{where}: density must be a share of the road in 0..1, "
                             f"got {density:g}")
        params["density"] = density
    elif kind == "surface":
        if v["surface"] not in SURFACES[1:]:
            raise ValueError(f"{where}: surface must be one of {', '.join(SURFACES[1:])}, "
                             f"got {v['surface']!r}")
        params["surface"] = v["surface"]
    return Segment(kind, start, end, params)


def _side(value: Any, where: str) -> str:
    if value not in SIDES:
        raise ValueError(f"{where}: side must be left or right, got {value!r}")
    return str(value)


def _positive(value: Any, where: str, what: str) -> float:
    v = _number(value, where, what)
    if v <= 0:
        raise ValueError(f"{where}: {what} must be > 0 (m), got {v:g}")
    return v


def parse_elevation(raw: Any, length: float) -> np.ndarray | None:
    """Validate the YAML `elevation` list of [s, z] pairs: (k, 2) sorted by s, or None."""
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError("'elevation' must be a non-empty list of [s, z] pairs (metres)")
    rows = []
    for i, pair in enumerate(raw):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"elevation[{i}]: expected an [s, z] pair, got {pair!r}")
        s = _number(pair[0], f"elevation[{i}]", "s")
        z = _number(pair[1], f"elevation[{i}]", "z")
        if not 0.0 <= s < length:
            raise ValueError(f"elevation[{i}]: s must be within the lap, 0..{length:.1f} m, "
                             f"got {s:g}")
        if rows and s <= rows[-1][0]:
            raise ValueError(f"elevation[{i}]: s must increase along the list, got {s:g} after "
                             f"{rows[-1][0]:g}")
        rows.append((s, z))
    return np.asarray(rows, dtype=np.float64)


def height_profile(points: np.ndarray | None, s: np.ndarray, length: float) -> np.ndarray:
    """Height (m) at every arc length `s`: a periodic cubic spline through the [s, z] points
    (flat without points, constant with one)."""
    if points is None:
        return np.zeros_like(s)
    if len(points) == 1:
        return np.full_like(s, points[0, 1])
    from scipy.interpolate import CubicSpline

    knots = np.append(points[:, 0], points[0, 0] + length)
    heights = np.append(points[:, 1], points[0, 1])
    if len(points) == 2:  # a periodic spline needs three knots: add the midpoint of the return
        mid = 0.5 * (knots[1] + knots[2])
        knots = np.insert(knots, 2, mid)
        heights = np.insert(heights, 2, 0.5 * (heights[1] + heights[2]))
    spline = CubicSpline(knots, heights, bc_type="periodic")
    return spline((s - points[0, 0]) % length + points[0, 0])


@dataclass
class SegmentMaps:
    """Per centreline sample: what the renderer paints there and the road's half width."""

    half: np.ndarray  # road half width (m)
    bridge: np.ndarray  # index into `bridges` + 1, 0: not a bridge
    open_left: np.ndarray  # bool: no kerb / edge line on the left
    open_right: np.ndarray
    centre: np.ndarray  # CENTRE_STYLES code
    edge_lines: np.ndarray  # bool: edge lines painted
    surface: np.ndarray  # SURFACES code
    bridges: list[Segment]


def segment_maps(segments: list[Segment], s: np.ndarray, length: float, width: float,
                 branch_open: list[tuple[float, float, str]]) -> SegmentMaps:
    """Fold the segments into per-sample arrays; later segments win where they overlap.
    `branch_open`: (from, to, side) stretches a dirt branch opens."""
    n = len(s)
    maps = SegmentMaps(half=np.full(n, width / 2.0), bridge=np.zeros(n, np.int16),
                       open_left=np.zeros(n, bool), open_right=np.zeros(n, bool),
                       centre=np.zeros(n, np.int8), edge_lines=np.ones(n, bool),
                       surface=np.zeros(n, np.int8), bridges=[])
    for start, end, side in branch_open:
        inside = Segment("open_edge", start % length, end % length).contains(s, length)
        (maps.open_left if side == "left" else maps.open_right)[inside] = True
    for seg in segments:
        if seg.kind == "dirt_branch":
            continue
        inside = seg.contains(s, length)
        if seg.kind == "bridge":
            maps.bridges.append(seg)
            maps.bridge[inside] = len(maps.bridges)
            maps.half[inside] = seg.params.get("width", width) / 2.0
            maps.edge_lines[inside] = False
            maps.centre[inside] = CENTRE_STYLES.index("none")
        elif seg.kind == "open_edge":
            (maps.open_left if seg.params["side"] == "left" else maps.open_right)[inside] = True
        elif seg.kind == "centre_line":
            maps.centre[inside] = CENTRE_STYLES.index(seg.params["style"])
        elif seg.kind == "no_markings":
            maps.centre[inside] = CENTRE_STYLES.index("none")
            maps.edge_lines[inside] = False
        elif seg.kind == "surface":
            code = SURFACES.index(seg.params["surface"])
            maps.surface[inside] = code
            if seg.params["surface"] == "dirt":
                maps.centre[inside] = CENTRE_STYLES.index("none")
                maps.edge_lines[inside] = False
    return maps


def reverse_segments(segments: list[Segment], length: float) -> list[Segment]:
    """The same stretches seen driving the other way: s -> length - s, left <-> right."""
    flip = {"left": "right", "right": "left"}
    out = []
    for seg in segments:
        params = dict(seg.params)
        if "side" in params:
            params["side"] = flip[params["side"]]
        if seg.kind == "dirt_branch":
            params["heading"] = "backward" if params["heading"] == "forward" else "forward"
            at = (length - seg.start) % length
            out.append(Segment(seg.kind, at, at, params))
        elif seg.contains(np.array([0.0]), length)[0] and seg.end - seg.start >= length:
            out.append(Segment(seg.kind, seg.start, seg.end, params))
        else:
            out.append(Segment(seg.kind, (length - seg.end) % length,
                               (length - seg.start) % length or length, params))
    return out
