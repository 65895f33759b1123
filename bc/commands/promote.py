"""Set a registry alias (``champion``) on the registered version with the best closed-loop score.

    python scripts/promote.py name=<registered model> [alias=champion] [experiment_name=bc]
                              [metric=eval/lake/autonomy] [mode=max] [tie_break=null]

The chosen version gets tags (``promoted_as``, ``promotion.*``) and a description that say why;
equal best values stop with an error unless ``tie_break`` names the rule. Then
``python scripts/drive.py model_uri=models:/<name>@champion`` serves it. Configuration:
conf/promote.yaml; the work is done by bc.tracking.registry.promote.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bc.cli import CONF_DIR, run


def promote(cfg: DictConfig) -> None:
    from bc.errors import ConfigError
    from bc.tracking.registry import promote as set_alias

    if not cfg.name:
        raise ConfigError("name: expected the registered model's name (train.py register=<name>), got nothing")
    promotion = set_alias(str(cfg.name), str(cfg.alias), str(cfg.experiment_name), str(cfg.metric),
                          str(cfg.mode), cfg.tracking_uri, cfg.tie_break)
    version = promotion.version
    print(f"models:/{cfg.name}@{cfg.alias} -> version {version.version} (run {version.run_id}: "
          f"{cfg.metric} = {promotion.value:g}, the best in experiment {cfg.experiment_name!r})\n"
          f"{promotion.reason}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="promote")
def main(cfg: DictConfig) -> None:
    run("promote.py", lambda: promote(cfg))


if __name__ == "__main__":
    main()
