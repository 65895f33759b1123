"""The episode loop (bc/evaluation/episodes.py): serial (N = 1) and vectorised (Gymnasium's
AsyncVectorEnv in worker processes) drive the same episodes the same way, for a model run by
torch and by ONNX Runtime; autoreset, truncation, stall and the metrics of a vectorised drive."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import bc.sim  # noqa: F401  (registers bc/Drive-v0)
from bc.core import images
from bc.inference import artifact
from bc.inference.predictor import Predictor
from bc.evaluation.episodes import EpisodeSpec, Episodes, drive
from bc.evaluation.expert import ExpertPolicy, expert_drive
from bc.evaluation.metrics import compute_metrics
from bc.evaluation.policies import ModelPolicy
from bc.models import build_model
from bc.core.preprocess import to_tensor
from bc.sim.env import MAX_EPISODE_STEPS, DrivingEnv
from bc.sim.expert import Expert
from bc.core.udacity import UNITY_JPEG_QUALITY
from conftest import compose_config

STEERING_TOLERANCE = 1e-5  # one frame: batched vs batch-1 forward pass
TRACE_TOLERANCE = 1e-2  # a whole drive: the 6-decimal replies may round apart, the car stays
SPECS = [EpisodeSpec("lake", laps=0.1),
         EpisodeSpec("lake", laps=0.06, reverse=True, lighting=3),
         EpisodeSpec("random:1", laps=0.06, start_s=40.0, start_speed_mph=10.0)]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small network fitted to the expert's steering on lake frames: it drives, wobbles and
    now and then leaves the road (interventions to compare)."""
    env = DrivingEnv("lake", laps=None)
    expert = Expert(env.track, speed_mph=20.0, car=env.car, dt=env.dt)
    frame, info = env.reset()
    frames, labels = [], []
    for step in range(150):
        steering, throttle = expert.act(env.state)
        if step % 3 == 0:
            jpeg = images.encode_jpeg(frame, UNITY_JPEG_QUALITY)
            frames.append(images.decode_jpeg(jpeg))
            labels.append(steering)
        frame, _, _, _, info = env.step((steering + 0.3 * np.sin(step / 7), throttle))
    config = OmegaConf.to_container(compose_config("train", ["model=small"]).model)
    torch.manual_seed(0)
    net = build_model(config)
    batch = to_tensor(np.stack([net.preprocess_spec(rgb) for rgb in frames]))
    target = torch.tensor(labels, dtype=torch.float32)[:, None]
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(batch), target).backward()
        optimizer.step()
    return artifact.save_model(net.eval(), config, tmp_path_factory.mktemp("model") / "model")


@pytest.mark.parametrize("runtime", ["torch", pytest.param("onnx", marks=pytest.mark.slow)])  # ONNX serving: test_onnx.py
def test_serial_and_vectorised_drive_the_same_episodes(model_folder: Path, runtime: str) -> None:
    model = artifact.load_model_folder(model_folder, runtime=runtime)
    serial = [drive([spec], ModelPolicy(model, 20.0))[0] for spec in SPECS]
    with Episodes(SPECS, vectorization="async") as episodes:
        vectorised = episodes.run(ModelPolicy(model, 20.0))
        again = episodes.run(ModelPolicy(model, 20.0))  # reusable: reset each run
    print([len(r.intervention_steps) for r in serial], [r.steps for r in serial])
    for one, many, rerun in zip(serial, vectorised, again):
        assert many.track.name == one.track.name and many.steps == one.steps
        assert np.abs(many.steering - one.steering).max() <= TRACE_TOLERANCE
        assert np.array_equal(many.intervention_steps, one.intervention_steps)
        first, second = compute_metrics(one), compute_metrics(many)
        assert second["laps_completed"] == first["laps_completed"]
        assert second["interventions"] == first["interventions"]
        assert second["mean_abs_cte"] == pytest.approx(first["mean_abs_cte"], abs=1e-3)
        assert np.array_equal(rerun.steering, many.steering)
    # batched inference = drive.py's batch-1 inference on the frames the simulator sends
    predictor = Predictor(model)
    env = SPECS[0].make(jpeg=True)
    jpegs = [env.reset()[1]["jpeg"]] + [env.step((0.1 * k, 0.5))[4]["jpeg"] for k in range(5)]
    batched = predictor.predict_batch([predictor.decode(jpeg) for jpeg in jpegs])
    single = [predictor.predict_jpeg(jpeg) for jpeg in jpegs]
    assert np.abs(np.array([p.steering for p in batched]) -
                  np.array([p.steering for p in single])).max() <= STEERING_TOLERANCE


def test_autoreset_runs_the_next_episode_in_the_same_slot() -> None:
    spec = EpisodeSpec("lake", laps=0.04, start_s="random", obs_type="state",
                       stall_timeout_s=None)
    results = drive([spec, EpisodeSpec("mountain", laps=0.03, obs_type="state")],
                    ExpertPolicy(), repeats=3, seed=7)
    assert len(results) == 6 and all(result.stop_reason == "laps" for result in results)
    lake = results[:3]
    # Gymnasium's autoreset: each episode starts afresh (a new random start, from step 1) ...
    assert all(result.t[0] == pytest.approx(spec.dt) for result in lake)
    assert len({round(float(result.x[0]), 3) for result in lake}) == 3
    # ... exactly as resetting one env by hand, seeded once then unseeded
    env, expert = spec.make(), ExpertPolicy()
    for index, result in enumerate(lake):
        observation, info = env.reset(seed=7 if index == 0 else None)
        expert.reset(0, spec)
        xs, done = [], False
        while not done:
            action = expert.act([0], observation[None], [info])[0]
            observation, _, terminated, truncated, info = env.step(action)
            xs.append(info["x"])
            done = terminated or truncated
        assert np.array_equal(result.x, xs)


def test_time_limit_stall_and_the_metrics_of_a_vectorised_drive() -> None:
    env = gymnasium.make("bc/Drive-v0", track="lake", obs_type="state")
    assert env.spec.max_episode_steps == MAX_EPISODE_STEPS
    env.reset(seed=0)
    env = gymnasium.make("bc/Drive-v0", track="lake", obs_type="state", max_episode_steps=3)
    env.reset(seed=0)
    assert [env.step((0.0, 1.0))[3] for _ in range(3)] == [False, False, True]

    class Parked:  # a policy that never moves
        def reset(self, slot, spec): pass
        def intervened(self, slot): pass
        def act(self, slots, observations, infos): return np.zeros((len(slots), 2))

    stalled, limited = drive([EpisodeSpec("lake", stall_timeout_s=1.0, obs_type="state"),
                              EpisodeSpec("lake", max_steps=5, stall_timeout_s=None,
                                          obs_type="state")], Parked())
    assert (stalled.stop_reason, stalled.steps) == ("stalled", 15)  # 1 s at 15 Hz
    assert (limited.stop_reason, limited.steps) == ("max_steps", 5)

    # the expert's reference through the vector API = one episode alone, metric for metric
    pairs = [("lake", False), ("mountain", True)]
    alone = [compute_metrics(expert_drive(track, 0.2, reverse=reverse)) for track, reverse in pairs]
    specs = [EpisodeSpec(track, laps=0.2, reverse=reverse, obs_type="state",
                         stall_timeout_s=None, max_steps=10_000) for track, reverse in pairs]
    with Episodes(specs, jpeg=False, vectorization="async") as episodes:
        together = [compute_metrics(result) for result in episodes.run(ExpertPolicy())]
    for one, many in zip(alone, together):
        assert {**many, "stop_reason": None} == {**one, "stop_reason": None}


def test_lighting_and_start_come_from_reset() -> None:
    env = DrivingEnv("lake", lighting_seed=None)
    first, _ = env.reset(seed=3, options={"start_s": "random"})
    assert env.lighting_seed == 3
    again, _ = env.reset(seed=3, options={"start_s": "random"})
    assert np.array_equal(first, again)
    other, _ = env.reset(seed=3, options={"start_s": "random", "lighting": 5})
    assert env.lighting_seed == 5 and not np.array_equal(first, other)
    with pytest.raises(ValueError, match="lighting"):
        env.reset(options={"weather": "rain"})
