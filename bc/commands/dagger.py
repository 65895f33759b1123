"""DAgger with the built-in expert: `python scripts/dagger.py rounds=3 model=small`.

Round 0 trains on the noisy expert's demonstrations; each later round the model drives the
simulator in-process (as drive.py serves it), the expert labels every state it visits, and the
model retrains on all the data. One MLflow parent run per job, a nested run per round; the
final model serves with `drive.py run_id=<parent run id>`. Continue an interrupted job with
`resume=true`. Settings: conf/dagger.yaml; the work: bc/experiments/dagger.py.
"""

import os

from omegaconf import DictConfig

from bc.cli import command, run

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@command("dagger", "dagger.py")
def main(cfg: DictConfig) -> str:
    from bc.experiments.dagger import run_dagger

    return run("dagger.py", lambda: run_dagger(cfg))


if __name__ == "__main__":
    main()
