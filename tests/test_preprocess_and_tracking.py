"""The shared preprocessing function and the MLflow model round trip."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bc import tracking
from bc.inference import store
from bc.inference import artifact
from bc.errors import ConfigError
from bc.core.preprocess import Preprocess, to_tensor


def test_preprocess_crops_resizes_and_converts():
    frame = np.zeros((160, 320, 3), np.uint8)
    frame[:60] = (255, 0, 0)  # sky rows are cropped away
    spec = Preprocess(crop_top=60, crop_bottom=20, height=66, width=200, color_space="rgb")
    out = spec(frame)
    assert out.shape == (66, 200, 3) and out.dtype == np.uint8
    assert out.max() == 0
    yuv = Preprocess()(np.full((160, 320, 3), 128, np.uint8))
    assert abs(int(yuv[0, 0, 0]) - 128) <= 1  # grey keeps its luma in YUV
    assert to_tensor(out).shape == (1, 3, 66, 200)


@pytest.mark.parametrize("bad", [{"color_space": "bgr"}, {"height": 0}, {"crop_top": -1}, {"size": 3}])
def test_bad_preprocess_spec_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "size" not in bad else "unknown"):
        Preprocess.from_dict(bad)


def test_model_round_trip_by_run_id_and_export(tmp_path, monkeypatch, compose):
    monkeypatch.chdir(tmp_path)
    config = OmegaConf.to_container(compose("train", ["model=small"]).model)
    net = artifact.build_model(config).eval()
    experiment = tracking.get_or_create_experiment("roundtrip")
    client = tracking.client()
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val/loss", 0.25)
    store.log_model(run.info.run_id, net, config)
    client.set_terminated(run.info.run_id)

    x = torch.rand(3, *net.input_shape) * 255
    loaded = store.load_model(run.info.run_id)
    assert loaded.spec == net.preprocess_spec
    exported = artifact.load_exported(next((tmp_path / "mlruns").rglob(artifact.TORCHSCRIPT_FILE)))
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net(x))
        torch.testing.assert_close(exported.net(x), net(x))
    assert tracking.find_run("best", "roundtrip") == run.info.run_id

    with pytest.raises(tracking.TrackingError, match="no MLflow run"):
        store.load_model("0" * 32)
    empty = client.create_run(experiment).info.run_id
    with pytest.raises(tracking.TrackingError, match="no logged model"):
        store.load_model(empty)
    with pytest.raises(tracking.TrackingError, match="no MLflow experiment"):
        tracking.find_run("best", "missing")
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        store.load_model(run.info.run_id, "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="not a registered model"):
        artifact.build_model({"_target_": "os.system", "command": "true"})
