"""model.onnx beside the TorchScript: the same numbers as the torch network on real frames of
the built-in simulator (max abs difference <= 1e-5), and `drive.py runtime=onnx` serving it
with ONNX Runtime over the real Socket.IO protocol."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bc.core import images

from bc.inference import artifact
from bc.drive.launch import drive_server
from bc.inference.predictor import Predictor, choose_model
from bc.errors import ConfigError
from bc.models import MODELS, build_model
from bc.inference.artifact import load_onnx
from bc.inference.onnx_export import ONNX_FILE, OnnxError
from bc.core.preprocess import to_tensor
from conftest import compose_config
from unity_client import UnityClient, telemetry

TOLERANCE = 1e-5
OPTIONS = {"PilotNet": "nvidia", "CommaAI": "commaai", "SmallNet": "small"}


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """Center-camera JPEGs of the built-in simulator along an expert lap, as Unity encodes them."""
    from bc.experiments.benchmarks.drive import simulator_frames

    return simulator_frames(count=8)


def fitted(net: torch.nn.Module, batch: torch.Tensor, spread: float = 0.1, max_steps: int = 200) -> torch.nn.Module:
    """``net`` after Adam steps towards spread targets on ``batch`` until its outputs' std
    reaches ``spread``: weights shaped by training, whose outputs differ frame to frame like a
    trained model's (an untrained PilotNet answers ~0 everywhere, where any difference looks small)."""
    targets = torch.linspace(-0.6, 0.6, len(batch))[:, None].expand(-1, len(net.outputs))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(max_steps):
        optimizer.zero_grad()
        outputs = net(batch)
        if float(outputs.detach().std(dim=0).min()) >= spread:
            break
        torch.nn.functional.mse_loss(outputs, targets).backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize(("option", "outputs"), [(option, ["steering"]) for option in OPTIONS.values()]
                         + [("small", ["steering", "speed"])])
def test_onnx_matches_torch_on_simulator_frames(tmp_path: Path, jpegs: list[bytes], option: str,
                                                outputs: list[str]) -> None:
    assert sorted(OPTIONS) == sorted(cls.__name__ for cls in MODELS.values())  # every model is checked
    config = OmegaConf.to_container(compose_config("train", [f"model={option}", f"model.outputs={outputs}"]).model)
    torch.manual_seed(0)
    net = build_model(config).eval()
    rgb = [images.decode_jpeg(jpeg) for jpeg in jpegs]
    batch = to_tensor(np.stack([net.preprocess_spec(frame) for frame in rgb]))
    fitted(net, batch)
    folder = artifact.save_model(net, config, tmp_path / "model")

    exported = artifact.load_exported(folder / ONNX_FILE)
    assert exported.spec == net.preprocess_spec and exported.outputs == tuple(outputs)
    with torch.no_grad():
        expected = net(batch).numpy()
    assert expected.std(axis=0).min() >= 0.05  # outputs that differ frame to frame, by 5,000x the tolerance
    assert np.abs(exported.net(batch) - expected).max() <= TOLERANCE  # a batch: the dynamic axis
    by_frame = [Predictor(model).predict_rgb(frame) for model in (artifact.load_model_folder(folder), exported)
                for frame in rgb]
    torch_values, onnx_values = (np.array([value[:len(outputs)] for value in part], dtype=float)
                                 for part in (by_frame[:len(rgb)], by_frame[len(rgb):]))
    assert np.abs(onnx_values - torch_values).max() <= TOLERANCE


def test_drive_serves_onnx_with_onnxruntime(tmp_path: Path, jpegs: list[bytes]) -> None:
    config = OmegaConf.to_container(compose_config("train", ["model=small"]).model)
    torch.manual_seed(1)
    net = build_model(config).eval()
    folder = artifact.save_model(net, config, tmp_path / "model")
    expected = [Predictor(artifact.load_model_folder(folder)).predict_jpeg(jpeg).steering for jpeg in jpegs[:3]]
    with drive_server([f"model_path={folder / ONNX_FILE}", "runtime=onnx"], tmp_path) as server:
        assert server["source"] == str(folder / ONNX_FILE)
        with UnityClient(server["port"]) as client:
            replies = [client.send_telemetry(telemetry(jpeg, speed=5.0)) for jpeg in jpegs[:3]]
    assert "onnxruntime with 1 thread(s)" in server["log"].read_text()
    assert [event for event, _ in replies] == ["steer"] * 3
    served = [float(data["steering_angle"]) for _, data in replies]
    np.testing.assert_allclose(served, np.clip(expected, -1, 1), atol=TOLERANCE)

    keys = dict(run_id=None, model_uri=None, experiment_name="bc", metric="val/loss", mode="min", tracking_uri=None)
    with pytest.raises(ConfigError, match=r"runtime=onnx does not serve model\.ts .*use runtime=torch"):
        choose_model(model_path=str(folder / artifact.TORCHSCRIPT_FILE), runtime="onnx", **keys)
    with pytest.raises(ConfigError, match=r"runtime: expected one of torch, onnx, got 'tensorrt'"):
        choose_model(model_path=str(folder / ONNX_FILE), runtime="tensorrt", **keys)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxError, match=r"bad\.onnx is not an ONNX model onnxruntime can run"):
        load_onnx(tmp_path / "bad.onnx")


def test_serving_imports_onnxruntime_only_for_onnx_and_never_lightning(tmp_path: Path) -> None:
    config = compose_config("train", ["model=small"]).model
    folder = artifact.save_model(build_model(config).eval(), config, tmp_path / "model")
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from hydra.utils import instantiate
from conftest import compose_config
def loaded(*names):
    return sorted({{m.split(".")[0] for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names)}})
instantiate(compose_config("drive", ["model_path={folder / 'model.ts'}"]).predictor)
torch_serving = loaded("onnxruntime", "onnx", "pytorch_lightning", "lightning", "mlflow")
instantiate(compose_config("drive", ["model_path={folder / ONNX_FILE}", "runtime=onnx"]).predictor)
print(json.dumps({{"torch": torch_serving, "onnx": loaded("onnxruntime", "pytorch_lightning", "lightning")}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"torch": [], "onnx": ["onnxruntime"]}
