"""Make ``<folder>.mp4`` from a drive run saved with ``drive.py image_folder=<folder>``.

    python scripts/video.py <folder> [fps=60] [overlay=true] [output=run.mp4]

Hydra has no positional arguments: a bare first argument (no ``=``) is rewritten to
``folder=<it>`` before Hydra parses the command line; ``folder=...`` works as well.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from bc.cli import run
from bc.errors import ConfigError

USAGE = "python scripts/video.py <folder> [fps=60] [overlay=true] [output=<file>.mp4]"


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
    output = make_video(str(cfg.folder), cfg.fps, cfg.output, cfg.overlay)
    print(f"wrote {output}", flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="video")
def main(cfg: DictConfig) -> None:
    run("video.py", lambda: make(cfg))


if __name__ == "__main__":
    sys.argv = positional_to_override(sys.argv)
    main()
