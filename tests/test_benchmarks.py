"""Benchmarks: one command and one config group (conf/benchmark/<name>.yaml) for all of them;
the driving benchmark and the demo are presets of one pipeline."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
from conftest import REPO
from hydra.utils import instantiate

from bc.experiments.benchmarks.drive import DriveBenchmark
from bc.experiments.benchmarks.driving import DrivingBenchmark
from bc.experiments.benchmarks.loader import LoaderBenchmark
from bc.experiments.benchmarks.sim import SimBenchmark
from bc.errors import ConfigError
from bc.experiments.pipeline import Pipeline

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
    assert len(driving.seeds) >= 3 and driving.speed_mph is None and driving.set_speed == 30
    assert [cell.name for cell in driving.cells()] == [
        "lake", "lake-reverse", "lake-lighting-1000", "jungle", "random-1", "random-2", "random-3"]
    assert driving.eval_seed not in driving.seeds and len(driving.seeds) >= 5
    assert driving.methods == ["bc", "bc_3cam", "bc_3cam_aug", "bc_speed", "dagger", "bc_select"]
    assert driving.paces == ["expert"] and driving.labels is not None  # equal labelled frames
    assert driving.evaluator == "vector"  # lockstep: cheap enough for the seeds
    assert driving.server_overrides("bc_speed", "expert") == ["speed_source=model"]
    assert driving.server_overrides("bc_speed", "fixed") == ["speed_source=set_speed",
                                                             "set_speed=30"]
    assert driving.server_overrides("bc", "fixed") == driving.server_overrides("bc_speed", "fixed")


def test_driving_benchmark_refuses_a_trained_lighting_and_unknown_methods(tmp_path):
    with pytest.raises(ConfigError, match="^eval_seed: expected a lighting never trained on"):
        DrivingBenchmark(out=str(tmp_path), seeds=[0, 1], eval_seed=1)
    with pytest.raises(ConfigError, match=r"^methods: expected a list of trained methods"):
        DrivingBenchmark(out=str(tmp_path), methods=["expert"])


def fake_seed(seed: int, cells: dict) -> dict:
    """What run_seed returns, with the given {method: {pace: {cell: metrics}}}."""
    return {"seed": seed, "runs": {method: f"run{seed}-{method}" for method in cells},
            "timings": {}, "cells": cells, "folder": ""}


def drive(autonomy: float, pace: float, cte: float = 0.2) -> dict:
    return {"autonomy": autonomy, "pace_pct": pace, "bound_pct": 0.9 * pace,
            "interventions": round((100 - autonomy) / 12),
            "mean_abs_cte": cte, "lap_time_s": 50.0, "mean_speed_mph": 25.0,
            "progress_laps": 1.0, "sim_time_s": 50.0, "stop_reason": "laps"}


def test_driving_leaderboard_is_mean_and_t_interval_over_seeds_with_the_expert_at_100(tmp_path):
    bench = DrivingBenchmark(out=str(tmp_path / "run"), seeds=[0, 1, 2], hard_track="mountain",
                             random_tracks=[], reverse=False, unseen_lighting=False,
                             eval_laps=0.15, leaderboard=str(tmp_path / "board.json"))
    mountain = {"bc": ((90.0, 80.0, 100.0), (70.0, 60.0, 80.0)),  # (expert pace, fixed) per seed
                "bc_speed": ((100.0, 100.0, 100.0), (40.0, 40.0, 70.0))}
    results = [fake_seed(seed, {method: {
        "expert": {"lake": drive(100.0, 95.0), "mountain": drive(own[seed], 90.0 + seed)},
        "fixed": {"lake": drive(100.0, 101.0), "mountain": drive(fixed[seed], 99.0)}}
        for method, (own, fixed) in mountain.items()}) for seed in range(3)]
    bench.finish(results, wall_s=60.0)

    board = json.loads((tmp_path / "board.json").read_text())
    assert board == json.loads((tmp_path / "run" / "leaderboard.json").read_text())
    entries = {entry["method"]: entry for entry in board["entries"]}
    assert [entry["method"] for entry in board["entries"]] == ["expert", "bc_speed", "bc"]
    assert entries["bc_speed"]["runs"] == ["run0-bc_speed", "run1-bc_speed", "run2-bc_speed"]
    for pace in ("expert", "fixed"):  # the expert really drove both cells, at 100 %
        for cell in ("lake", "mountain", "mean"):
            row = entries["expert"]["cells"][pace][cell]
            assert row["autonomy"]["mean"] == 100.0 and row["pace_pct"]["mean"] == 100.0
    t_975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom
    bc_mountain = entries["bc"]["cells"]["expert"]["mountain"]["autonomy"]
    assert bc_mountain["mean"] == pytest.approx(90.0)
    assert bc_mountain["ci95"] == pytest.approx(t_975_2 * 10.0 / math.sqrt(3))
    assert bc_mountain["values"] == [90.0, 80.0, 100.0]
    mean_column = entries["bc"]["cells"]["fixed"]["mean"]["autonomy"]  # per seed over cells
    assert mean_column["values"] == [85.0, 80.0, 90.0]
    assert entries["bc_speed"]["cells"]["expert"]["lake"]["autonomy"]["ci95"] == 0.0
    # the speed output against the same models at the fixed set speed, paired by seed
    difference = board["comparison"]["autonomy"]["mountain"]
    assert difference["values"] == [60.0, 60.0, 30.0]
    assert board["headroom"] == {"method": "bc", "hard_enough": True, "cells_below_expert": {
        "expert": ["lake", "mountain"], "fixed": ["mountain"]}}
    markdown = (tmp_path / "board.md").read_text()
    assert "| BC @ 30 mph | 100.0 ± 0.0 | 70.0 ± 24.8 | 85.0 ± 12.4 | 70.0 ± 24.8 |" in markdown
    assert "| expert @ own pace | 100.0 | 100.0 | 100.0 |" in markdown
    assert "below the expert on 1 of 2 cells (mountain)" in markdown


def tiny_driving_benchmark(tmp_path, *settings: str) -> tuple[subprocess.CompletedProcess, dict]:
    """scripts/benchmark.py driving at a tiny size: one seed, one epoch of the small network,
    a tenth of a lap per cell; `settings` pick the methods, cells and evaluator."""
    done = subprocess.run(
        [sys.executable, BENCHMARK, "driving", "seeds=[0]", "epochs=1", "network=small",
         "reverse=false", "unseen_lighting=false", "eval_laps=0.1", "train_overrides=['data.block_rows=20']",
         *settings, f"out={tmp_path / 'run'}", f"leaderboard={tmp_path / 'board.json'}",
         f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((tmp_path / "board.json").read_text())


def test_driving_benchmark_drives_its_cells_in_lockstep_by_default(tmp_path):
    """Record, train plain BC, drive a cell in lockstep (the default evaluator), from the command line."""
    done, board = tiny_driving_benchmark(tmp_path, "labels=120", "methods=[bc]", "random_tracks=[]",
                                         "hard_track=null")
    drives = board["per_seed"][0]["cells"]["bc"]["expert"]
    assert set(drives) == {"lake"}
    for metrics in drives.values():
        assert metrics["progress_laps"] > 0.02 and 0.0 <= metrics["autonomy"] <= 100.0
        assert 0.0 < metrics["bound_pct"] <= 100.0  # no model laps faster than the car can
    assert "in lockstep" in done.stdout and "(vector evaluation)" in done.stdout


@pytest.mark.slow
def test_driving_benchmark_runs_end_to_end_at_tiny_size(tmp_path):
    """Record, train one model, serve it and drive 2 cells at both paces, from the command line."""
    done, board = tiny_driving_benchmark(tmp_path, "record_laps=0.15", "labels=null", "methods=[bc_speed]",
                                         "random_tracks=[]", "hard_track=mountain", "paces=[expert,fixed]",
                                         "evaluator=socketio")
    assert [entry["method"] for entry in board["entries"]] == ["expert", "bc_speed"]
    drives = board["per_seed"][0]["cells"]["bc_speed"]
    for pace in ("expert", "fixed"):
        for cell in ("lake", "mountain"):
            assert drives[pace][cell]["progress_laps"] > 0.05  # it drove, as far as it could
            assert 0.0 <= drives[pace][cell]["autonomy"] <= 100.0
    assert "speed_source=model" in (tmp_path / "run/seed0/eval/bc_speed-expert/drive_server.log"
                                    ).read_text() or "speed_source=model" in done.stdout
    assert "| expert @ own pace | 100.0 | 100.0 | 100.0 |" in done.stdout
    assert f"leaderboard: {tmp_path / 'run' / 'leaderboard.json'}" in done.stdout
    assert re.search(r"wall time: [\d.]+ min \(socketio evaluation\); record [\d.]+ min, "
                     r"train [\d.]+ min, eval [\d.]+ min", done.stdout)
    assert set(board["time_split_s"]) == {"record", "train", "eval"}


def test_closed_loop_benchmark_measures_serial_vectorised_and_the_floor(tmp_path):
    done = subprocess.run(
        [sys.executable, BENCHMARK, "closed_loop", "model=small", "episodes=2", "steps=12",
         "serial_episodes=1", "callback=false", f"out={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "closed_loop.json").read_text())
    assert result["serial"]["steps"] == 12 and result["async"]["steps"] == 24
    assert result["floor"]["floor_steps_per_s"] > 0 and result["speedup"] > 0
    assert "target: async >= 2x serial" in done.stdout


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


def test_driving_leaderboard_pairs_methods_and_says_whether_it_ranks_them(tmp_path):
    bench = DrivingBenchmark(out=str(tmp_path / "run"), seeds=[0, 1, 2], hard_track="jungle",
                             random_tracks=[], reverse=False, unseen_lighting=False,
                             methods=["bc", "bc_3cam", "bc_3cam_aug"], paces=["expert"],
                             eval_laps=0.15, leaderboard=str(tmp_path / "board.json"))
    jungle = {"bc": (40.0, 50.0, 45.0), "bc_3cam": (60.0, 70.0, 65.0),
              "bc_3cam_aug": (80.0, 85.0, 90.0)}  # autonomy per seed
    results = [fake_seed(seed, {method: {"expert": {
        "lake": drive(100.0, 95.0), "jungle": drive(own[seed], 90.0)}}
        for method, own in jungle.items()}) for seed in range(3)]
    bench.expert_results  # noqa: B018  the expert's real drives of lake and jungle
    bench.finish(results, wall_s=60.0)
    board = json.loads((tmp_path / "board.json").read_text())
    pairs = {tuple(pair["methods"]): pair for pair in board["comparison"]["pairs"]}
    assert set(pairs) == {("bc", "bc_3cam"), ("bc", "bc_3cam_aug"), ("bc_3cam", "bc_3cam_aug")}
    assert pairs[("bc", "bc_3cam")]["differences"]["autonomy"]["jungle"]["values"] == [-20.0] * 3
    assert pairs[("bc", "bc_3cam")]["separated_cells"]["autonomy"] == ["jungle"]
    assert pairs[("bc", "bc_3cam")]["separated_cells"]["mean_abs_cte"] == []  # equal |CTE|
    criteria = board["criteria"]
    assert criteria["expert_full"] and criteria["headroom_cells"] == ["jungle"]
    assert len(criteria["separated_pairs"]) == 3 and criteria["ranks"]
    expert_jungle = {e["method"]: e for e in board["entries"]}["expert"]["cells"]["expert"]
    assert 85.0 < expert_jungle["jungle"]["bound_pct"]["mean"] < 100.0  # below the car's bound
    markdown = (tmp_path / "board.md").read_text()
    assert "BC minus BC 3 cameras (paired by seed" in markdown
    assert "-> the benchmark ranks methods" in markdown
