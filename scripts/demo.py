"""The main job, end to end: record the lake track with the noisy expert, train PilotNet on it,
let it drive the lake track closed-loop through scripts/drive.py, and show the numbers.

Every step is the same command a user would type (printed before it runs); all runs land in
one MLflow experiment (`demo`). Settings: conf/demo.yaml (e.g. `epochs=3 record_laps=2`).
"""

import shlex
import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

SCRIPTS = Path(__file__).resolve().parent


def run(step: str, script: str, *overrides: str) -> None:
    """Run one of our CLIs as a user would, stopping the demo if it fails."""
    command = [sys.executable, str(SCRIPTS / script), *overrides]
    print(f"\n=== {step} ===\n$ python scripts/{script} {' '.join(shlex.quote(o) for o in overrides)}",
          flush=True)
    started = time.monotonic()
    if subprocess.call(command) != 0:
        sys.exit(f"demo: step '{step}' failed (command above)")
    print(f"--- {step}: {time.monotonic() - started:.0f} s", flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    from bc import tracking

    started = time.monotonic()
    out = Path(cfg.out).resolve()
    data = out / "data" / cfg.track
    run_name = f"demo-{out.name}"
    run("1/3 record training data with the noisy expert", "simulate.py", "mode=record",
        f"track={cfg.track}", f"laps={cfg.record_laps}", f"speed_mph={cfg.speed_mph}",
        f"seed={cfg.seed}", f"out={data}")
    run("2/3 train", "train.py", f"model={cfg.model}", f"data.paths=[{data}]",
        f"trainer.max_epochs={cfg.epochs}", f"experiment_name={cfg.experiment}",
        f"run_name={run_name}", f"seed={cfg.seed}", f"hydra.run.dir={out / 'train'}")
    client = tracking.client()
    experiment = client.get_experiment_by_name(cfg.experiment)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.mlflow.runName = '{run_name}'")
    if not runs:
        sys.exit(f"demo: training logged no MLflow run named {run_name}")
    run_id = runs[0].info.run_id
    run("3/3 drive closed-loop: drive server + simulator over Socket.IO", "evaluate.py",
        f"run_id={run_id}", f"track={cfg.track}", f"laps={cfg.eval_laps}",
        f"set_speed={cfg.speed_mph}", f"seed={cfg.eval_seed}", f"out={out / 'eval'}", "video=true")
    eval_dir = out / "eval" / cfg.track
    print(f"""
=== demo finished in {time.monotonic() - started:.0f} s ===
  recording        {data}
  MLflow run       {run_id} (experiment '{cfg.experiment}')
  metrics          {eval_dir / 'metrics.json'}
  trajectory plot  {eval_dir / 'trajectory.png'}
  drive video      {eval_dir / 'center.mp4'}
  browse runs      .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db
  drive it again   .venv/bin/python scripts/drive.py run_id={run_id}""")


if __name__ == "__main__":
    main()
