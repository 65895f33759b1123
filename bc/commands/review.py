"""Look at data in the browser: `python scripts/review.py <folder> [run_id=... | model_uri=...]`.

A recording folder shows its frames, labels, suspicious stretches and exclusions (the
`driving_log.exclusions.json` sidecar training honours); with a model, its steering and
saliency beside the labels. An evaluate.py output (or a drive.py image folder) shows the
drives. Serves on 127.0.0.1 and a free port unless host= / port= say otherwise; prints the URL.
Configuration: conf/review.yaml; the app: bc/review/.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from bc.cli import CONF_DIR, run


def review(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from bc.errors import ConfigError
    from bc.review.app import Review, serve
    from bc.review.model import load

    if OmegaConf.is_missing(cfg, "path"):
        raise ConfigError("path: give the folder to review: python scripts/review.py <recording "
                          "folder | evaluate.py output | drive.py image folder>")
    model = None
    if cfg.run_id is not None or cfg.model_uri is not None:
        model = load(None if cfg.run_id is None else str(cfg.run_id), cfg.model_uri,
                     cfg.tracking_uri, cfg.experiment_name, cfg.metric, cfg.mode)
    serve(Review(str(cfg.path), model), str(cfg.host), int(cfg.port))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="review")
def main(cfg: DictConfig) -> None:
    run("review.py", lambda: review(cfg))


def start() -> None:
    """The command line as users type it (a leading positional argument allowed)."""
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-") and "=" not in sys.argv[1]:
        folder = sys.argv[1]
        plain = all(char.isalnum() or char in "/._-~" for char in folder)
        sys.argv[1] = f"path={folder}" if plain else f"path='{folder}'"  # Hydra's quoting
    main()


if __name__ == "__main__":
    start()
