"""Closed-loop evaluation during training (bc/evaluation/callback.py) and offline vs online
(bc/experiments/offline_online.py): real training on a bc.sim recording, a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from bc import tracking
from bc.inference import store
from bc.evaluation.callback import ClosedLoopEval
from bc.evaluation.policies import ModelPolicy
from bc.evaluation.score import SCORE, Scorer, eval_metrics
from bc.errors import ConfigError
from bc.training.mlflow_run import TAG_WEIGHTS
from bc.models.small import SmallNet
from bc.training.module import SteeringModule
from bc.experiments.offline_online import RUN_NAME, NotEnoughPoints
from bc.evaluation.recorder import Recorder
from bc.training.train import train
from conftest import compose_config

EPOCHS = 3
TRACKS = "[{track: lake, laps: 0.1}]"


def test_checkpoint_chosen_by_eval_score_is_the_logged_model(tmp_path: Path) -> None:
    data = tmp_path / "lake"
    Recorder(max_rows=60, speed_mph=None, progress=False).record("lake", data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config("train", [
        "model=small", f"data.paths=[{data}]", "data.block_rows=10", "data.num_workers=0",
        f"data.cache_dir={tmp_path / 'cache'}", f"trainer.max_epochs={EPOCHS}",
        f"output_dir={tmp_path / 'out'}", f"tracking_uri={uri}", "experiment_name=closed_loop",
        "callbacks.progress_bar.refresh_rate=0", "callbacks.insight_plots=null",
        "callbacks.early_stopping=null", "callbacks.closed_loop.every_n_epochs=1",
        f"callbacks.closed_loop.tracks={TRACKS}", "callbacks.closed_loop.set_speed=20",
        "callbacks.model_checkpoint.monitor=eval/score", "callbacks.model_checkpoint.mode=max"])
    run_id = train(cfg)

    client = MlflowClient(uri)
    history = client.get_metric_history(run_id, SCORE)
    assert len(history) == EPOCHS  # one eval/score per epoch ...
    assert len(client.get_metric_history(run_id, "eval/lake/autonomy")) == EPOCHS  # ... per track
    best = max(metric.value for metric in history)
    run = client.get_run(run_id)
    assert run.data.metrics["eval/score_best"] == pytest.approx(best)
    assert run.data.tags[TAG_WEIGHTS].startswith("best eval/score")
    # the logged model is the checkpoint that drove best: it drives the same episode to that score
    model = store.load_model(run_id, uri)
    results = Scorer(list(compose_config("train", [f"callbacks.closed_loop.tracks={TRACKS}"])
                          .callbacks.closed_loop.tracks)).score(ModelPolicy(model, 20.0))
    assert eval_metrics(results)[SCORE] == pytest.approx(best, rel=1e-6)  # logged as float32


def test_closed_loop_refuses_models_the_simulator_cannot_feed() -> None:
    net = SmallNet(preprocess={"crop_top": 20, "crop_bottom": 10, "height": 33, "width": 100,
                               "color_space": "yuv", "frame_width": 640, "frame_height": 480})
    callback = ClosedLoopEval(every_n_epochs=1, tracks=["lake"])
    with pytest.raises(ConfigError, match=r"^callbacks\.closed_loop: .*640x480"):
        callback.setup(None, SteeringModule(net, optimizer=torch.optim.Adam), "fit")
    with pytest.raises(ConfigError, match=r"^every_n_epochs: "):
        ClosedLoopEval(every_n_epochs=-1)
    with pytest.raises(ConfigError, match=r"^tracks\[0\]\.laps: "):
        ClosedLoopEval(every_n_epochs=1, tracks=[{"track": "lake", "laps": 0}])
    assert ClosedLoopEval().scorer is None  # off by default: nothing built, nothing driven


def log_epochs(client: MlflowClient, experiment: str, name: str,
               pairs: list[tuple[float, float]]) -> str:
    run = client.create_run(experiment, run_name=name)
    metrics = [Metric(key, value, 0, step) for step, (loss, score) in enumerate(pairs)
               for key, value in (("val/loss", loss), (SCORE, score))]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_offline_vs_online_plots_and_logs_the_rank_correlation(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from scipy import stats

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment("sweep", uri)
    first = [(0.9, 10.0), (0.5, 40.0), (0.4, 35.0)]  # val/loss's pick (0.4) drives worse
    second = [(0.8, 20.0), (0.6, 30.0), (0.3, 80.0)]
    log_epochs(client, experiment, "job0", first)
    log_epochs(client, experiment, "job1", second)
    job = instantiate(compose_config("offline_online", [
        "experiment_name=sweep", f"tracking_uri={uri}", f"out={tmp_path / 'out'}"]))
    summary = job.run()

    points = first + second
    expected = stats.spearmanr([p[0] for p in points], [p[1] for p in points]).statistic
    assert summary["spearman"] == pytest.approx(expected) and summary["points"] == 6
    assert summary["selection_agrees"] == 1  # job1: both pick epoch 2; job0: they differ
    assert sorted(summary["online_lost_by_offline_selection"]) == pytest.approx([0.0, 5.0])
    run = client.get_run(summary["run_id"])
    assert run.info.run_name == RUN_NAME and run.data.metrics["spearman"] == pytest.approx(expected)
    assert {item.path for item in client.list_artifacts(summary["run_id"])} == {
        "offline_vs_online.png", "offline_vs_online.csv"}
    assert (tmp_path / "out" / "offline_vs_online.png").stat().st_size > 1000

    with pytest.raises(NotEnoughPoints, match="callbacks.closed_loop.every_n_epochs=1"):
        instantiate(compose_config("offline_online", [
            "experiment_name=sweep", f"tracking_uri={uri}", f"out={tmp_path / 'out2'}",
            f"sweep={tmp_path / 'no-such-sweep'}"])).run()
