"""The PNGs `InsightPlots` logs to a training run, as plain functions of arrays.

No pyplot (no global backend or figure state): each function builds a matplotlib `Figure`,
saves it with the Agg renderer and returns the file. Steering is the normalised label
(positive = right), the same number on every axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from bc.core import udacity

DPI = 100
STEERING_RANGE = udacity.LABEL_RANGES["steering"]
HISTOGRAM_BIN = 0.04  # steering units per histogram bar (half a balancing bin at 25 bins)
BEFORE_COLOUR = "#303030"  # dark outline: the recorded distribution
AFTER_COLOUR = "#1f77b4"  # blue: what training sees
RECORDED_COLOUR = "#222222"
PREDICTED_COLOUR = "#e8710a"
IDENTITY_COLOUR = "#d62728"
TITLE_SIZE = 12
MIN_SCATTER_SPAN = 0.05  # steering units: the smallest range the scatter's axes show
SCATTER_MARGIN = 0.06  # of the data's range, on each side
SMALL_SIZE = 9


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def fitted_range(values: np.ndarray) -> tuple[float, float]:
    """(low, high) around `values` with a margin, at least `MIN_SCATTER_SPAN` wide: the
    scatter's axes fit the data (steering of a gentle track fills a tenth of [-1, 1])."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if len(values) else (-0.5, 0.5)
    middle, span = (low + high) / 2, max(high - low, MIN_SCATTER_SPAN) * (1 + 2 * SCATTER_MARGIN)
    return middle - span / 2, middle + span / 2


def steering_histograms(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                        path: str | Path, title: str = "Training steering labels") -> Path:
    """One panel per camera: the labels before balancing (dark outline) and after (blue
    bars), camera corrections included, on shared bins."""
    cameras = list(before)
    values = np.concatenate([np.asarray(before[camera], float) for camera in cameras]
                            + [np.asarray(after.get(camera, ()), float) for camera in cameras])
    low = min(STEERING_RANGE[0], float(values.min(initial=0.0)))
    high = max(STEERING_RANGE[1], float(values.max(initial=0.0)))
    edges = np.arange(np.floor(low / HISTOGRAM_BIN) * HISTOGRAM_BIN,
                      high + HISTOGRAM_BIN * 1.5, HISTOGRAM_BIN)
    figure = _figure(4.2 * len(cameras), 3.6)
    axes = figure.subplots(1, len(cameras), sharey=True, squeeze=False)[0]
    for axis, camera in zip(axes, cameras):
        old = np.asarray(before[camera], float)
        new = np.asarray(after.get(camera, ()), float)
        # stairs: one artist per histogram (hist draws a patch per bar, 10x slower to save)
        axis.stairs(np.histogram(new, edges)[0], edges, fill=True, color=AFTER_COLOUR,
                    alpha=0.85, label=f"after balancing ({len(new)})")
        axis.stairs(np.histogram(old, edges)[0], edges, color=BEFORE_COLOUR, linewidth=1.6,
                    label=f"before balancing ({len(old)})")  # an outline: visible when equal
        axis.set_title(f"{camera} camera", fontsize=TITLE_SIZE)
        axis.set_xlabel("steering (normalised, + = right)")
        axis.axvline(0.0, color="black", linewidth=0.6, alpha=0.5)
        axis.legend(fontsize=SMALL_SIZE, loc="upper left")
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("samples per bin")
    figure.suptitle(title, fontsize=TITLE_SIZE + 1)
    return _save(figure, path)


def predicted_vs_recorded(recorded: np.ndarray, predicted: np.ndarray, block: slice,
                          path: str | Path, period_s: float = udacity.SAMPLE_PERIOD_S,
                          block_name: str = "", title: str = "Validation steering") -> Path:
    """Left: a held-out block (`block` of the arrays) as a time series, recorded and predicted;
    right: every validation sample, predicted against recorded, with the identity line."""
    recorded, predicted = np.asarray(recorded, float), np.asarray(predicted, float)
    figure = _figure(12.0, 4.2)
    series, scatter = figure.subplots(1, 2, width_ratios=[2.2, 1])
    part = np.arange(len(recorded))[block]
    seconds = (part - part[0]) * period_s if len(part) else part
    series.plot(seconds, recorded[part], color=RECORDED_COLOUR, linewidth=1.4, label="recorded")
    series.plot(seconds, predicted[part], color=PREDICTED_COLOUR, linewidth=1.4, label="predicted")
    series.axhline(0.0, color="black", linewidth=0.6, alpha=0.4)
    series.set_xlabel("time in the block (s)")
    series.set_ylabel("steering (normalised, + = right)")
    series.set_title(f"held-out block{': ' + block_name if block_name else ''} "
                     f"({len(part)} frames)", fontsize=TITLE_SIZE)
    series.legend(fontsize=SMALL_SIZE, loc="upper right")
    series.grid(alpha=0.3)

    error = np.abs(predicted - recorded)
    low, high = fitted_range(np.concatenate([recorded, predicted]))
    scatter.scatter(recorded, predicted, s=8, alpha=0.5, color=AFTER_COLOUR, linewidths=0)
    scatter.plot([low, high], [low, high], color=IDENTITY_COLOUR, linestyle="--",
                 linewidth=1.2, label="predicted = recorded")
    scatter.set_xlim(low, high)  # the same range on both axes: the identity is the diagonal
    scatter.set_ylim(low, high)
    scatter.set_aspect("equal")
    scatter.set_xlabel("recorded steering")
    scatter.set_ylabel("predicted steering")
    mae = float(error.mean()) if len(error) else float("nan")
    scatter.set_title(f"all {len(recorded)} validation frames, MAE {mae:.3f}",
                      fontsize=TITLE_SIZE)
    scatter.legend(fontsize=SMALL_SIZE, loc="upper left")
    scatter.grid(alpha=0.3)
    figure.suptitle(title, fontsize=TITLE_SIZE + 1)
    return _save(figure, path)


def image_grid(rows: Sequence[Sequence[tuple[np.ndarray, str]]], path: str | Path,
               title: str, column_titles: Sequence[str] = (),
               colour_bar: Mapping[str, object] | None = None) -> Path:
    """RGB images with a caption each, row by row (all rows as long as the first). With
    `colour_bar` ({"cmap", "gamma", "label"}), a bar for 0..1 values drawn in that colour
    map with that gamma (e.g. a saliency overlay's scale)."""
    columns = len(rows[0])
    height, width = rows[0][0][0].shape[:2]
    cell_w = 2.6 if width <= 120 else 3.2
    lines = max(caption.count("\n") + 1 for row in rows for _, caption in row)
    cell_h = cell_w * height / width + 0.3 + 0.16 * lines  # room for the caption lines
    figure = _figure(cell_w * columns, cell_h * len(rows) + 0.5 + 0.3 * bool(column_titles))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, row in zip(axes, rows):
        for axis, (image, caption) in zip(row_axes, row):
            axis.imshow(image, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_xlabel(caption, fontsize=SMALL_SIZE)
    for axis, column_title in zip(axes[0], column_titles):
        axis.set_title(column_title, fontsize=TITLE_SIZE - 1)
    if colour_bar is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import PowerNorm

        shown = ScalarMappable(norm=PowerNorm(float(colour_bar.get("gamma", 1.0)), 0.0, 1.0),
                               cmap=str(colour_bar["cmap"]))
        bar = figure.colorbar(shown, ax=axes, location="right", shrink=0.9, pad=0.01)
        bar.set_label(str(colour_bar["label"]), fontsize=SMALL_SIZE)
        bar.ax.tick_params(labelsize=SMALL_SIZE)
    figure.suptitle(title, fontsize=TITLE_SIZE + 1)
    return _save(figure, path)
