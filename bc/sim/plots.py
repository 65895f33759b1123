"""Pictures of an autonomous run: a top-down map of the driven path and a center-camera mp4.

The map shows at a glance where a model drifts (path colour = |cross-track error|, on a scale
fitted to the drive, with the road's half width marked on it when the drive reached it) and
where it left the road (red crosses), which a single autonomy number hides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bc.core.udacity import SAMPLE_RATE_HZ

FIGURE_WIDTH_IN = 9.0  # the height follows the track's aspect ratio
MIN_FIGURE_HEIGHT_IN = 4.0
MAX_FIGURE_HEIGHT_IN = 12.0
PLOT_WIDTH_FRACTION = 0.85  # of the figure width: the rest is the colour bar
TITLE_AND_LABELS_IN = 1.2
LEGEND_COLOUR = "#b0b0b0"  # grey, so the white centreline sample shows
FIGURE_DPI = 110
ROAD_COLOUR = "#8c8c8c"
EDGE_COLOUR = "#f2f2f2"
GRASS_COLOUR = "#cfe3c2"
PATH_WIDTH_PT = 2.2
START_ARROW_WIDTHS = 2.5  # length of the driving-direction arrow, in road widths
CTE_COLOURMAP = "plasma"
CTE_SCALE_MIN_M = 0.05  # the colour scale's smallest top (a perfect drive is not all yellow)
VIDEO_CODEC = "libx264"
VIDEO_MACRO_BLOCK = 16  # 320x160 frames are multiples of 16: no resizing


def _road_patch(track: Any, **style: Any):
    """The road as a ring (left edge + reversed right edge): fills only between the edges."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    left, right = track.edges()
    ring_left = np.vstack([left, left[:1]])
    ring_right = np.vstack([right[::-1], right[-1:]])
    vertices = np.vstack([ring_left, ring_right])
    codes = np.full(len(vertices), MplPath.LINETO, dtype=MplPath.code_type)
    codes[0] = codes[len(ring_left)] = MplPath.MOVETO
    codes[len(ring_left) - 1] = codes[-1] = MplPath.CLOSEPOLY
    return PathPatch(MplPath(vertices, codes), **style)


def plot_trajectory(result: Any, path: str | Path, title: str | None = None) -> Path:
    """Top-down PNG: the road at its width, the driven path coloured by |cte|, interventions
    marked, the start line shown."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    track = result.track
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xmin, ymin, xmax, ymax = track.bounds
    aspect = (ymax - ymin) / max(xmax - xmin, 1e-9)
    height = FIGURE_WIDTH_IN * PLOT_WIDTH_FRACTION * aspect + TITLE_AND_LABELS_IN
    height = min(MAX_FIGURE_HEIGHT_IN, max(MIN_FIGURE_HEIGHT_IN, height))
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height), dpi=FIGURE_DPI)
    ax = fig.add_subplot()
    ax.set_facecolor(GRASS_COLOUR)
    ax.add_patch(_road_patch(track, facecolor=ROAD_COLOUR, edgecolor="none", zorder=1))
    for edge in track.edges():
        closed = np.vstack([edge, edge[:1]])
        ax.plot(closed[:, 0], closed[:, 1], color=EDGE_COLOUR, linewidth=0.8, zorder=2)
    centre = np.vstack([track.xy, track.xy[:1]])
    ax.plot(centre[:, 0], centre[:, 1], color="white", linewidth=0.6, linestyle=(0, (4, 4)),
            zorder=2, label="centreline")
    x0, y0, h0 = track.pose_at(0.0)
    half = 0.5 * track.width
    nx, ny = -np.sin(h0), np.cos(h0)
    ax.plot([x0 - half * nx, x0 + half * nx], [y0 - half * ny, y0 + half * ny], color="black",
            linewidth=2.0, zorder=3, label="start")
    arrow = START_ARROW_WIDTHS * track.width  # the driving direction
    ax.annotate("", xy=(x0 + arrow * np.cos(h0), y0 + arrow * np.sin(h0)), xytext=(x0, y0),
                arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 1.8}, zorder=6)

    abs_cte = np.abs(np.asarray(result.cte, dtype=np.float64))
    if len(abs_cte) >= 2:
        xy = np.column_stack([result.x, result.y])
        segments = np.stack([xy[:-1], xy[1:]], axis=1)
        # a reset teleports the car onto the centreline: do not draw that jump
        keep = np.ones(len(segments), dtype=bool)
        resets = np.asarray(result.intervention_steps, dtype=np.int64)
        keep[resets[(resets >= 1) & (resets <= len(segments))] - 1] = False
        keep[resets[resets < len(segments)]] = False
        lines = LineCollection(segments[keep], cmap=CTE_COLOURMAP, linewidths=PATH_WIDTH_PT,
                               zorder=4)
        lines.set_array(0.5 * (abs_cte[:-1] + abs_cte[1:])[keep])
        top = cte_scale_top(abs_cte)
        lines.set_clim(0.0, top)
        ax.add_collection(lines)
        colour_axis = make_axes_locatable(ax).append_axes("right", size="3%", pad=0.12)
        bar = fig.colorbar(lines, cax=colour_axis)
        if half <= top:  # the road's edge on the scale: above it the car was off the road
            colour_axis.axhline(half, color="red", linewidth=2.0)
            bar.set_label(f"|cross-track error| (m); red: road edge ({half:g} m)")
        else:
            bar.set_label(f"|cross-track error| (m); road edge at {half:g} m")
    points = np.asarray(result.intervention_xy, dtype=np.float64).reshape(-1, 2)
    if len(points):
        ax.scatter(points[:, 0], points[:, 1], marker="x", s=60, color="red", linewidths=2.0,
                   zorder=5, label=f"interventions ({len(points)})")
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="upper right", fontsize=8, facecolor=LEGEND_COLOUR, framealpha=0.9)
    ax.set_title(title or _default_title(result), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def cte_scale_top(abs_cte: np.ndarray) -> float:
    """The top of the |cte| colour scale: the drive's largest |cte| rounded up to a tidy
    number, so the colours spread over what happened (a 0.5 m drift is not one colour on a
    scale that ends at the road edge)."""
    peak = float(np.max(abs_cte, initial=0.0))
    if peak <= CTE_SCALE_MIN_M:
        return CTE_SCALE_MIN_M
    step = 10.0 ** np.floor(np.log10(peak)) / 2  # 0.5, 1, 5, ... times a power of ten
    return float(np.ceil(peak / step) * step)


def _default_title(result: Any) -> str:
    steps = len(result.t)
    elapsed = float(result.t[-1]) if steps else 0.0
    progress = float(result.s[-1]) / float(result.track.length) if steps else 0.0
    return (f"{result.track.name}: {progress:.2f} laps in {elapsed:.1f} s, "
            f"{len(result.intervention_steps)} intervention"
            f"{'' if len(result.intervention_steps) == 1 else 's'}")


def open_video(path: str | Path, fps: float = SAMPLE_RATE_HZ):
    """An imageio-ffmpeg writer for RGB frames (`append_data`, `close`); H.264, yuv420p."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=float(fps),
                              codec=VIDEO_CODEC,
                              macro_block_size=VIDEO_MACRO_BLOCK, ffmpeg_log_level="error")
