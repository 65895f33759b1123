"""Pictures that explain a model (bc.insight): VisualBackProp saliency, the plots a training
run logs under plots/, and the saliency video evaluate.py writes per track."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from torch import nn

from bc.data.synthetic import write_recording
from bc.drive.frames import FrameRecorder
from bc.drive.video import make_video
from bc.errors import BcError, ConfigError
from bc.evaluation.evaluate import evaluate, saliency_overlay, saliency_video
from bc.insight.callback import (
    AUGMENTATION,
    HISTOGRAM,
    PREDICTIONS,
    SALIENCY,
    InsightPlots,
    augmentation_pairs,
    contiguous_blocks,
    held_out_block,
    labels_per_camera,
    validation_predictions,
)
from bc.training.instantiators import instantiate_group
from bc.insight.saliency import SaliencyError, VisualBackProp, draw_saliency
from bc.models import build_model
from bc.models.small import SmallNet
from bc.training.module import SteeringModule
from bc.core.preprocess import Preprocess
from bc.evaluation.autonomous import AutonomousDrive
from bc.sim.plots import open_video
from bc.training.train import train
from conftest import REPO, compose_config
from unity_client import make_jpeg

ROWS, BLOCK_ROWS = 60, 10
PLOTS = {HISTOGRAM, AUGMENTATION, PREDICTIONS, SALIENCY}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("data") / "rec", rows=ROWS, seed=5)


def train_overrides(recording: Path, cache: Path, *more: str) -> list[str]:
    return ["model=small", f"data.paths=[{recording}]", f"data.block_rows={BLOCK_ROWS}",
            "data.num_workers=0", f"data.cache_dir={cache}", *more]


@pytest.fixture(scope="module")
def trained(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny training run with the default callbacks, in its own MLflow store."""
    folder = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = compose_config("train", train_overrides(
        recording, folder / "cache", f"tracking_uri={uri}", f"output_dir={folder / 'out'}",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "callbacks.progress_bar.refresh_rate=0"))
    return {"run_id": train(cfg), "uri": uri, "out": folder / "out"}


def test_training_run_logs_its_plots(trained, tmp_path):
    client = MlflowClient(tracking_uri=trained["uri"])
    logged = {Path(item.path).name for item in client.list_artifacts(trained["run_id"], "plots")}
    assert logged == PLOTS
    folder = download_artifacts(run_id=trained["run_id"], artifact_path="plots",
                                tracking_uri=trained["uri"], dst_path=str(tmp_path))
    for name in PLOTS:
        picture = imageio.imread(Path(folder) / name)
        assert picture.ndim == 3 and min(picture.shape[:2]) > 200, name
        assert picture[..., :3].std() > 10, f"{name} is blank"
        assert (trained["out"] / "plots" / name).is_file()  # kept beside the checkpoints too


@pytest.fixture
def setup_data(recording, tmp_path):
    """A set-up datamodule whose augmentation only mirrors (so its effect is known exactly),
    and a SteeringModule around a fresh SmallNet for it."""
    cfg = compose_config("train", train_overrides(
        recording, tmp_path / "cache", "augmentation=none", "augmentation.flip_prob=1.0",
        "model.preprocess.frame_width=320",
        "model.preprocess.frame_height=160"))
    datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
    datamodule.setup("fit")
    module = SteeringModule(build_model(cfg.model), optimizer=functools.partial(torch.optim.Adam))
    return datamodule, module


def test_plot_data_is_what_training_uses(setup_data):
    datamodule, _ = setup_data
    before, after = labels_per_camera(datamodule)
    train_rows = int((datamodule.table["split"] == "train").sum())
    assert list(before) == ["center", "left", "right"]
    assert all(len(labels) == train_rows for labels in before.values())
    assert sum(len(labels) for labels in after.values()) == len(datamodule.train_set)
    # balancing capped the near-zero bin (the same rows for every camera: left labels +0.2)
    near_zero = {key: int((np.abs(labels["center"]) <= 0.01).sum())
                 for key, labels in (("before", before), ("after", after))}
    assert near_zero["after"] < near_zero["before"]
    assert len(after["center"]) == train_rows - (near_zero["before"] - near_zero["after"])
    np.testing.assert_allclose(np.sort(after["left"] - 0.2), np.sort(after["center"]), atol=1e-6)

    state = torch.random.get_rng_state()
    plain, augmented = augmentation_pairs(datamodule, 6, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # training draws as without it
    assert len(plain.cameras) == 6 and plain.x.shape == (6, 3, 33, 100)
    # flip_prob=1: every frame mirrored and its label negated, exactly as training gets it
    torch.testing.assert_close(augmented.x, plain.x.flip(-1))
    torch.testing.assert_close(augmented.y, -plain.y)
    assert augmented.changes == [["flip"]] * 6  # what the preview writes under each frame


def test_predictions_and_held_out_block(setup_data):
    datamodule, module = setup_data
    predicted = validation_predictions(datamodule, module.net.eval())
    x, _ = datamodule.val_set.__getitems__(np.arange(len(datamodule.val_set)))
    with torch.no_grad():
        expected = module.net(x)[:, 0].numpy()
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    block, name = held_out_block(datamodule, max_frames=None)
    assert block.stop - block.start == BLOCK_ROWS and name.startswith("rec rows ")
    assert held_out_block(datamodule, max_frames=4)[0] == slice(block.start, block.start + 4)
    blocks = contiguous_blocks(np.array(["a", "a", "a", "b", "b", "b"]),
                               np.array([1, 2, 5, 6, 7, 8]))
    assert blocks == [slice(0, 2), slice(2, 3), slice(3, 6)]


def test_callback_is_configured_and_checked(tmp_path):
    callbacks = instantiate_group(compose_config("train", [f"output_dir={tmp_path}"]).callbacks,
                                  "callbacks")
    plots = [callback for callback in callbacks if isinstance(callback, InsightPlots)]
    assert len(plots) == 1 and plots[0].folder == tmp_path / "plots"
    bad = compose_config("train", [f"output_dir={tmp_path}",
                                   "callbacks.insight_plots.preview_frames=-1"]).callbacks
    with pytest.raises(ConfigError, match=r"^callbacks.insight_plots.preview_frames: expected "
                                          r"an integer >= 0, got -1$"):
        instantiate_group(bad, "callbacks")


def square_net() -> SmallNet:
    """A SmallNet whose conv filters all add up their window (positive weights, no bias): a
    unit responds exactly where its window sees a bright pixel (black is -1 after
    normalisation, so an all-black window is negative and the ReLU passes nothing)."""
    net = SmallNet({"height": 33, "width": 100, "color_space": "rgb"})
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.fill_(1.0 / conv.weight[0].numel())
            conv.bias.zero_()
    return net.eval()


def test_visualbackprop_marks_what_the_conv_layers_respond_to():
    frame = torch.zeros(1, 3, 33, 100)
    frame[..., 12:20, 60:70] = 255.0  # a bright square on black
    masks, outputs = VisualBackProp(square_net())(frame)
    mask = masks[0].numpy()
    assert mask.shape == (33, 100) and outputs.shape == (1, 1)
    assert mask.max() == pytest.approx(1.0) and mask.min() >= 0.0
    assert mask[16, 65] > 0.5  # the square's middle
    outside = np.ones_like(mask, dtype=bool)
    outside[12 - 3:20 + 3, 60 - 3:70 + 3] = False  # the square plus the first kernel's reach
    assert mask[outside].max() == 0.0

    for target in ("nvidia.PilotNet", "commaai.CommaAI", "small.SmallNet"):
        spec = {"height": 66, "width": 200}
        net = build_model({"_target_": f"bc.models.{target}", "preprocess": spec}).eval()
        masks, _ = VisualBackProp(net)(torch.rand(2, 3, 66, 200) * 255)
        assert masks.shape == (2, 66, 200) and float(masks.max()) == pytest.approx(1.0)
    with pytest.raises(SaliencyError, match="Sequential has no conv layers"):
        VisualBackProp(nn.Sequential(nn.Flatten(), nn.Linear(3, 1)))


def test_visualbackprop_has_no_place_of_its_own():
    """A blob at one place on every frame is the model's, not the method's: on a uniform frame
    the mask is uniform (kernel windows overlap unevenly at stride 2, which the coverage
    division evens out), and only fades at the bottom rows and right columns, which
    PilotNet's strided convs read less (or never); moving the picture moves the peak with it."""
    torch.manual_seed(0)
    net = build_model({"_target_": "bc.models.nvidia.PilotNet", "preprocess": {"height": 66, "width": 200}}).eval()
    mask = VisualBackProp(net)(torch.full((1, 3, 66, 200), 128.0))[0][0]
    inside = mask[:52, :194]
    assert float(inside.min()) == pytest.approx(1.0, abs=1e-4)  # uniform where every layer reads
    assert float(mask[52:, :].max()) <= 1.0 and float(mask[:, 197:].max()) < 0.6  # edges fade, no blob
    assert float(mask[61:, :].max()) == 0.0 and float(mask[:, 197:].min()) == 0.0  # never read
    picture = torch.zeros(1, 3, 66, 200)
    picture[..., 20:40, 120:140] = 255.0
    moved = picture.roll(-60, dims=-1)
    peaks = [int(mask.sum(dim=0).argmax()) for mask in VisualBackProp(net)(torch.cat([picture, moved]))[0]]
    assert abs((peaks[0] - peaks[1]) - 60) <= 2, peaks


def test_saliency_is_drawn_where_the_model_looks_on_the_camera_frame():
    spec = Preprocess(crop_top=60, crop_bottom=20, height=33, width=100, color_space="rgb",
                      frame_width=320, frame_height=160)
    frame = np.full((160, 320, 3), 100, np.uint8)
    mask = np.zeros((33, 100), np.float32)
    mask[:8, :25] = 1.0  # the top-left quarter of what the model sees
    drawn = draw_saliency(frame, mask, spec).astype(int)
    changed = np.abs(drawn - 100).sum(axis=2)
    assert changed[65:75, 10:70].min() > 40  # rows 60..140 hold the model input, 3.2 px a column
    assert changed[100:130, 150:300].max() == 0  # no saliency there: untouched
    assert (drawn[:59] < 100).all() and (drawn[141:] < 100).all()  # cropped rows dimmed


def test_evaluation_saliency_video_is_logged_beside_the_drive(trained, tmp_path):
    track = tmp_path / "lake"
    with open_video(track / "center.mp4", fps=15) as writer:
        for index in range(5):
            writer.append_data(np.full((160, 320, 3), 40 * index, np.uint8))
    video = saliency_video(trained["run_id"], trained["uri"], track, "lake",
                           saliency_overlay(trained["run_id"], trained["uri"]))
    frames = read_video(video)
    assert len(frames) == 5 and frames[0].shape == (160, 320, 3)
    client = MlflowClient(tracking_uri=trained["uri"])
    logged = client.list_artifacts(trained["run_id"], "eval/lake")
    assert "eval/lake/saliency.mp4" in {item.path for item in logged}
    with pytest.raises(ConfigError, match="saliency: true draws on each track's center-camera"):
        evaluate(trained["run_id"], ["lake"], AutonomousDrive(video=False), out=tmp_path,
                 tracking_uri=trained["uri"], saliency=True)


def test_torchscript_models_are_refused():
    net = torch.jit.trace(square_net(), torch.zeros(1, 3, 33, 100))
    with pytest.raises(BcError, match="needs the model's network"):
        VisualBackProp(net)


def read_video(path: Path) -> list[np.ndarray]:
    return [frame for frame in imageio.get_reader(str(path))]


def test_video_script_draws_a_run_models_saliency(trained, tmp_path, capsys):
    """scripts/video.py <frames> saliency=true run_id=...: the run's saliency on a drive's frames
    (its `make` with the composed config; tests/test_video.py runs the script itself)."""
    from bc.commands import video as video_script

    with FrameRecorder(tmp_path / "drive", overwrite=False) as recorder:
        for index in range(6):
            recorder.record(make_jpeg(index), steering=0.1, throttle=0.3, speed=9.0)
    overrides = [f"folder={tmp_path / 'drive'}", "fps=10", "saliency=true"]
    video_script.make(compose_config("video", [*overrides, f"run_id={trained['run_id']}",
                                               f"tracking_uri={trained['uri']}"]))
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'drive-saliency.mp4'}"
    frames = read_video(tmp_path / "drive-saliency.mp4")
    plain = read_video(make_video(tmp_path / "drive", fps=10, output=tmp_path / "plain.mp4"))
    assert len(frames) == 6 and frames[0].shape == (160, 320, 3)
    change = frames[0].astype(int) - plain[0].astype(int)
    assert change[:55].mean() < -10 and change[:55].max() < 20  # the sky it does not see: dimmed
    assert change[65:135].max() > 60  # what it sees: a heat colour, brighter where it looks

    with pytest.raises(ConfigError, match="run_id: saliency=true needs the model"):
        video_script.make(compose_config("video", overrides))


@pytest.mark.slow
def test_evaluate_script_writes_and_logs_the_saliency_video_per_track(trained, tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"run_id={trained['run_id']}",
               f"tracking_uri={trained['uri']}", "track=[lake,random:1]", "max_steps=20",
               "saliency=true", "progress=false", f"out={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=trained["uri"])
    for label in ("lake", "random-1"):
        assert len(read_video(tmp_path / label / "saliency.mp4")) == 20
        logged = {item.path for item in client.list_artifacts(trained["run_id"], f"eval/{label}")}
        assert f"eval/{label}/saliency.mp4" in logged
