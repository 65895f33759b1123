"""DAgger for real: the built-in expert and DrivingEnv, real training, a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pytorch_lightning import Callback, LightningModule, Trainer

from bc import tracking
from bc.inference import store
from bc.data.log import read_driving_log
from bc.errors import ConfigError
from bc.experiments.dagger import PARENT_TAG, STATE_FILE, TAG_ROLE, TAG_ROUND, run_dagger
from bc.inference.predictor import Predictor
from bc.sim.env import DrivingEnv
from conftest import compose_config

DEMO_ROWS, BUDGET = 60, 100  # round 0: 60 expert rows; round 1: the 40 the budget leaves


class InterruptRoundOne(Callback):
    """Ctrl-C at the start of the first training on two recordings (DAgger's round 1), once:
    the marker file says it already happened."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.datamodule.stats.get("recordings") == 2 and not self.marker.exists():
            self.marker.touch()
            raise KeyboardInterrupt


def dagger_config(tmp_path: Path, *extra: str):
    return compose_config("dagger", [
        "model=small", "rounds=3", f"demo_rows={DEMO_ROWS}", "round_rows=60",
        f"label_budget={BUDGET}", "beta=[0.5]", "trainer.max_epochs=1", "data.num_workers=0",
        "data.block_rows=10", "callbacks.progress_bar.refresh_rate=0",
        "callbacks.insight_plots=null", "eval_tracks=[{track: lake, laps: 0.1}]",
        f"out={tmp_path / 'dagger'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra])


def test_dagger_rounds_nested_runs_interrupt_resume_and_a_drivable_model(tmp_path: Path) -> None:
    marker = tmp_path / "interrupted"
    cfg = dagger_config(tmp_path, "+callbacks.interrupt._target_=test_dagger.InterruptRoundOne",
                        f"+callbacks.interrupt.marker={marker}")
    with pytest.raises(KeyboardInterrupt):
        run_dagger(cfg)
    out, uri = tmp_path / "dagger", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    state = json.loads((out / STATE_FILE).read_text())
    parent = state["parent"]
    assert marker.exists() and [item["round"] for item in state["rounds"]] == [0]
    assert client.get_run(parent).info.status == "KILLED"  # round 0 kept, usable

    # the job's stored config is data: the test's own callback is no target bc's groups build
    with pytest.raises(ConfigError, match=r"callbacks\.interrupt\._target_: 'test_dagger"):
        run_dagger(compose_config("dagger", ["resume=true", "experiment_name=dagger",
                                             f"tracking_uri={uri}"]))
    assert client.get_run(parent).info.status == "KILLED"
    stored = yaml.safe_load((out / "config.yaml").read_text())
    del stored["callbacks"]["interrupt"]
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    resumed = run_dagger(compose_config("dagger", ["resume=true", "experiment_name=dagger",
                                                   f"tracking_uri={uri}"]))
    assert resumed == parent and client.get_run(parent).info.status == "FINISHED"
    state = json.loads((out / STATE_FILE).read_text())
    # the label budget stops DAgger after round 1 (3 rounds asked): 60 + 40 labelled frames
    assert [(item["round"], item["rows"]) for item in state["rounds"]] == [(0, 60), (1, 40)]

    # each round: an ordinary Udacity recording, the rows it says, and a nested training run
    experiment = client.get_experiment_by_name("dagger").experiment_id
    nested = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent}'")
    finished = {run.data.tags[TAG_ROUND]: run for run in nested if run.info.status == "FINISHED"}
    killed = [run for run in nested if run.info.status == "KILLED"]
    assert set(finished) == {"0", "1"} and len(killed) == 1  # the interrupted round-1 training
    for item in state["rounds"]:
        log = read_driving_log(item["data"])
        assert len(log) == item["rows"]
        run = finished[str(item["round"])]
        assert run.info.run_id == item["run_id"]
        assert run.data.params["data_stats.recordings"] == str(item["round"] + 1)
        assert "eval/score" in run.data.metrics and "eval/lake/autonomy" in run.data.metrics
        assert "val/loss_best" in run.data.metrics
    assert state["rounds"][1]["beta"] == 0.5 and 0 < state["rounds"][1]["expert_share"] < 1

    # the parent: its role, the per-round table and metrics, the final round's model
    run = client.get_run(parent)
    assert run.data.tags[TAG_ROLE] == "parent"
    assert [m.step for m in client.get_metric_history(parent, "round/rows")] == [0, 1]
    assert run.data.metrics["labels_total"] == BUDGET
    table = json.loads(Path(client.download_artifacts(parent, "rounds.json",
                                                      str(tmp_path))).read_text())
    assert [row["run_id"] for row in table] == [item["run_id"] for item in state["rounds"]]
    model = store.load_model(parent, uri)  # what `drive.py run_id=<parent>` serves
    final = store.load_model(state["rounds"][1]["run_id"], uri)
    frame, _ = DrivingEnv("lake").reset()
    assert Predictor(model).predict_rgb(frame) == Predictor(final).predict_rgb(frame)
    assert np.isfinite(Predictor(model).predict_rgb(frame).steering)

    with pytest.raises(ConfigError, match="FINISHED"):  # nothing left to resume
        run_dagger(compose_config("dagger", ["resume=true", "experiment_name=dagger",
                                             f"tracking_uri={uri}"]))


def test_bad_dagger_settings_fail_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^beta: "):
        run_dagger(dagger_config(tmp_path, "beta=[1.5]"))
    with pytest.raises(ConfigError, match=r"^round_rows: "):
        run_dagger(dagger_config(tmp_path, "round_rows=0"))
    assert not (tmp_path / "dagger").exists() and not (tmp_path / "mlflow.db").exists()


def test_dagger_benchmark_compares_at_equal_labels_on_the_held_out_cells(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from bc.experiments.benchmarks.driving import DrivingBenchmark

    bench = instantiate(compose_config("benchmark", ["benchmark=dagger"]), _convert_="all")
    assert bench.methods == ["bc_3cam_aug", "bc_select", "dagger"] and bench.paces == ["expert"]
    assert f"max_rows={bench.labels}" in bench.record_overrides  # BC's recording: the budget
    assert [cell.name for cell in bench.cells()][0] == "lake" and len(bench.seeds) >= 3
    assert "callbacks.model_checkpoint.monitor=eval/score" in bench.select_overrides(0)
    with pytest.raises(ConfigError, match=r"^labels: "):
        DrivingBenchmark(out=str(tmp_path), methods=["bc", "dagger"])

    bench = DrivingBenchmark(out=str(tmp_path / "run"), seeds=[0, 1, 2], methods=[
        "bc", "bc_select", "dagger"], paces=["expert"], labels=300, hard_track="mountain",
        random_tracks=[1], reverse=False, unseen_lighting=False, eval_laps=0.1)
    metrics = {"autonomy": 100.0, "pace_pct": 95.0, "bound_pct": 90.0, "interventions": 0,
               "lap_time_s": None,
               "mean_speed_mph": 25.0, "progress_laps": 0.1, "sim_time_s": 5.0,
               "stop_reason": "laps"}
    cte = {"bc": (0.5, 0.8, 0.6), "bc_select": (0.5, 0.8, 0.6), "dagger": (0.5, 0.4, 0.2)}
    results = [{"seed": seed, "runs": {m: f"{m}{seed}" for m in cte}, "timings": {},
                "folder": "", "cells": {m: {"expert": {
                    "lake": {**metrics, "mean_abs_cte": values[0]},
                    "mountain": {**metrics, "mean_abs_cte": values[1] + seed / 10},
                    "random-1": {**metrics, "mean_abs_cte": values[2]}}}
                    for m, values in cte.items()}} for seed in range(3)]
    board = bench.payload(results, wall_s=1.0)
    dagger = board["comparison"]["vs_bc"]["dagger"]["mean_abs_cte"]["held-out mean"]
    assert dagger["values"] == pytest.approx([-0.4] * 3) and dagger["ci95"] == pytest.approx(0)
    assert board["comparison"]["vs_bc"]["bc_select"]["autonomy"]["held-out mean"]["mean"] == 0
    assert "- DAgger minus BC (paired by seed, held-out mean over 2 held-out cells, expert " \
           "pace): +0.0 ± 0.0 autonomy points; +0.0 ± 0.0 pace points; -0.400 ± 0.000 m" \
           in board["markdown"]
