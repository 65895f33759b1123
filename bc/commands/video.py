"""Make ``<folder>.mp4`` from a drive run saved with ``drive.py image_folder=<folder>``.

    python scripts/video.py <folder> [fps=60] [overlay=true] [output=run.mp4]
    python scripts/video.py <folder> saliency=true run_id=<run id|name|latest|best>

With ``saliency=true`` every frame shows where the run's network looks (VisualBackProp,
`bc.insight.saliency`); the video is ``<folder>-saliency.mp4`` unless ``output=`` says otherwise.

Hydra has no positional arguments: a bare first argument (no ``=``) is rewritten to
``folder=<it>`` before Hydra parses the command line; ``folder=...`` works as well.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from bc.cli import command, run
from bc.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from bc.insight.saliency import SaliencyOverlay

USAGE = ("python scripts/video.py <folder> [fps=60] [overlay=true] [output=<file>.mp4] "
         "[saliency=true run_id=<run>]")


def quote_override(value: str) -> str:
    """``value`` as a Hydra override value, quoted so paths with spaces, commas, ``=`` or
    brackets stay one string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def positional_to_override(argv: list[str]) -> list[str]:
    """``video.py run1 fps=30`` -> ``video.py folder='run1' fps=30``."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        return [argv[0], f"folder={quote_override(argv[1])}", *argv[2:]]
    return argv


def make(cfg: DictConfig) -> None:
    from bc.drive.video import make_video

    if OmegaConf.is_missing(cfg, "folder"):
        raise ConfigError(f"folder: missing; usage: {USAGE}")
    saliency, output = None, cfg.output
    if cfg.saliency:
        saliency = saliency_overlay(cfg)
        if not output:
            folder = Path(str(cfg.folder))
            output = folder.parent / f"{folder.resolve().name}-saliency.mp4"
    output = make_video(str(cfg.folder), cfg.fps, output, cfg.overlay, saliency)
    print(f"wrote {output}", flush=True)


def saliency_overlay(cfg: DictConfig) -> "SaliencyOverlay":
    """The VisualBackProp overlay of the model of run ``cfg.run_id``."""
    from bc import tracking
    from bc.inference import store
    from bc.insight.saliency import SaliencyOverlay

    if cfg.run_id is None:
        raise ConfigError("run_id: saliency=true needs the model to explain: "
                          "run_id=<run id|run name|latest|best>")
    run_id = tracking.find_run(str(cfg.run_id), cfg.experiment_name, cfg.metric, cfg.mode,
                               cfg.tracking_uri)
    return SaliencyOverlay(store.load_model(run_id, cfg.tracking_uri))


@command("video", "video.py")
def main(cfg: DictConfig) -> None:
    run("video.py", lambda: make(cfg))


def start() -> None:
    """The command line as users type it (a leading positional argument allowed)."""
    sys.argv = positional_to_override(sys.argv)
    main()


if __name__ == "__main__":
    start()
