"""Any camera, end to end: a model trained on another simulator's frames (96x96, one camera)
is served by `scripts/drive.py run_id=latest` with no code change, and steers over the real
Socket.IO protocol; a Udacity-size frame is answered safely with a warning naming both sizes."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from unity_client import UnityClient, telemetry

from bc.data.synthetic import render_frame, write_recording
from bc.drive.launch import drive_server
from bc.core.images import encode_jpeg

FRAME = (96, 96)
SAFE_STOP = {"steering_angle": "0.000000", "throttle": "0.000000"}


@pytest.mark.slow  # long end to end; the default suite covers each piece
def test_a_model_of_another_camera_trains_serves_and_steers(tmp_path):
    recording = write_recording(tmp_path / "square", rows=240, seed=3, frame_size=FRAME,
                                cameras=("center",))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    trained = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "model=small",
         f"data.paths=[{recording}]", "data.cameras=[center]", "data.num_workers=0",
         "data.balance.enabled=false", f"data.cache_dir={tmp_path / 'cache'}",
         "model.preprocess.crop_top=0", "model.preprocess.crop_bottom=12",
         "trainer.max_epochs=20", "optimizer.lr=3e-3", "experiment_name=square", f"tracking_uri={uri}",
         f"hydra.run.dir={tmp_path / 'train'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]

    overrides = ["run_id=latest", "experiment_name=square", f"tracking_uri={uri}"]
    with drive_server(overrides, tmp_path) as server:
        assert "for 96x96 frames" in server["log"].read_text()
        rng = np.random.default_rng(0)
        with UnityClient(server["port"]) as client:
            steering = {}
            for label in (-0.6, 0.6):
                jpeg = encode_jpeg(render_frame(label, rng, FRAME), quality=75)
                event, data = client.send_telemetry(telemetry(jpeg, speed=0.0))
                assert event == "steer"
                steering[label] = float(data["steering_angle"])
            # It drives: a road bending left is steered left, one bending right, right.
            assert steering[-0.6] < -0.1 and steering[0.6] > 0.1, steering
            udacity_frame = encode_jpeg(render_frame(0.6, rng), quality=75)
            assert client.send_telemetry(telemetry(udacity_frame, speed=0.0)) == ("steer", SAFE_STOP)
    assert "this model expects 96x96 frames, got 320x160" in server["log"].read_text()


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BC_CACHE_DIR", str(tmp_path / "cache"))
