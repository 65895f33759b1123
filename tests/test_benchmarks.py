"""Benchmarks: one command and one config group (conf/benchmark/<name>.yaml) for all of them;
the driving benchmark and the demo are presets of one pipeline."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO
from hydra.utils import instantiate

from bc.benchmarks.drive import DriveBenchmark
from bc.benchmarks.driving import DrivingBenchmark
from bc.benchmarks.loader import LoaderBenchmark
from bc.benchmarks.sim import SimBenchmark
from bc.errors import ConfigError
from bc.pipeline import Pipeline

BENCHMARK = str(REPO / "scripts" / "benchmark.py")


@pytest.mark.parametrize("name, kind", [("loader", LoaderBenchmark), ("sim", SimBenchmark),
                                        ("drive", DriveBenchmark), ("driving", DrivingBenchmark)])
def test_each_config_builds_its_benchmark(compose, name, kind):
    benchmark = instantiate(compose("benchmark", [f"benchmark={name}"]), _convert_="all")
    assert type(benchmark) is kind and callable(benchmark.run)


def test_model_group_is_swappable_and_settings_are_checked(compose):
    drive = instantiate(compose("benchmark", ["benchmark=drive", "model=small"]), _convert_="all")
    assert drive.model["_target_"] == "bc.models.small.SmallNet"
    with pytest.raises(Exception) as raised:  # Hydra wraps what the constructor raised
        instantiate(compose("benchmark", ["benchmark=sim", "frames=0"]), _convert_="all")
    assert isinstance(raised.value.__cause__, ConfigError)
    assert str(raised.value.__cause__) == "frames: expected >= 1, got 0"


def test_demo_and_driving_benchmark_are_presets_of_one_pipeline(compose):
    demo = instantiate(compose("demo"), _convert_="all")
    driving = instantiate(compose("benchmark", ["benchmark=driving"]), _convert_="all")
    assert type(demo) is Pipeline and isinstance(driving, Pipeline)
    assert demo.eval_groups() == [(["lake"], 3.0)]
    assert driving.eval_groups() == [(["lake"], 3.0), (["mountain", "random:1", "random:2",
                                                        "random:3", "random:4", "random:5"], 1.0)]
    assert [title for title, _ in driving.groups()] == [
        "lake (trained)", "mountain (unseen, hard)", "random x5 (unseen)", "all unseen (6 tracks)"]


def test_driving_summary_is_mean_and_std_over_seeds(tmp_path):
    bench = DrivingBenchmark(out=str(tmp_path), seeds=[0, 1], hard_track="mountain",
                             random_tracks=[], eval_laps=1, set_speed=20)
    metrics = {"autonomy": 100.0, "mean_abs_cte": 0.1, "laps_completed": 1, "progress_laps": 1.0,
               "interventions": 0, "mean_speed_mph": 19.5, "sim_time_s": 60.0,
               "distance_m": 500.0, "p95_abs_cte": 0.2, "max_abs_cte": 0.3, "target_laps": 1.0}
    results = [{"seed": seed, "timings": {"record_s": 1.0, "train_s": 2.0, "eval_s": 3.0},
                "tracks": {"lake": {**metrics, "mean_abs_cte": cte},
                           "mountain": {**metrics, "autonomy": autonomy}}}
               for seed, cte, autonomy in ((0, 0.1, 90.0), (1, 0.3, 80.0))]
    reference = {"lake": {"mean_abs_cte": 0.05}, "mountain": {"mean_abs_cte": 0.07}}
    summary = bench.summarize(results, reference)
    rows = {row["group"]: row for row in summary["rows"]}
    assert rows["lake (trained)"]["mean_abs_cte"] == pytest.approx((0.2, 0.1414213), abs=1e-6)
    assert rows["mountain (unseen, hard)"]["autonomy"] == pytest.approx((85.0, 7.0710678))
    targets = bench.check_targets(summary)
    assert targets[0].startswith("target lake: 100 % autonomy for 1 laps at >= 20 mph, every "
                                 "seed: met")
    assert "MISSED by 10.0 points" in targets[1]
    assert "| lake (trained) | 1 | 20 | 100.0 ± 0.0 | 0.200 ± 0.141 |" in bench.format_markdown(
        summary, wall_s=60.0)


def test_sim_benchmark_runs_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, BENCHMARK, "sim", "frames=30", "samples=3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "camera frames rendered" in done.stdout and "3 rows in" in done.stdout
    assert re.search(r"env\.step: +\d+\.\d steps/s .*dynamics \+ centreline \+ center camera",
                     done.stdout)
    assert "car dynamic" in done.stdout
    bad = subprocess.run([sys.executable, BENCHMARK, "sim", "frames=0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == "benchmark.py: error: frames: expected >= 1, got 0\n"


@pytest.mark.slow
def test_drive_benchmark_drives_frames_through_the_real_server(compose):
    result = instantiate(compose("benchmark", ["benchmark=drive", "model=small", "frames=60"]),
                         _convert_="all").run()
    assert result["frames"] == 60 and result["round_trip"]["replies_per_s"] > 0
    assert 0 < result["floor"]["p50_ms"] <= result["floor"]["p99_ms"]


@pytest.mark.slow
def test_loader_benchmark_times_loader_and_model(compose):
    result = instantiate(compose("benchmark", ["benchmark=loader", "model=small", "samples=60",
                                               "workers=[0]", "model_steps=2"]),
                         _convert_="all").run()
    assert result["loader"][0]["samples"] == 60 and result["model"] > 0
