"""One line, exit 2, for the bad inputs of the second fuzz pass, and reads with bounds: an
oversized csv field, a non-UTF-8 drive log, frame paths that are /dev/zero, pipes, huge sparse
files or outside video.py's folder, and a damaged checkpoint on resume (the run keeps its
status)."""

from __future__ import annotations

import os
import resource
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from bc import cli, tracking

from bc.core import udacity
from bc.data.datamodule import DrivingDataModule
from bc.data.synthetic import write_recording
from bc.drive.frames import FrameRecorder
from bc.drive.video import make_video
from bc.errors import EXIT_USAGE
from bc.core.images import MAX_FRAME_BYTES
from bc.core.preprocess import Preprocess
from unity_client import make_jpeg

ROWS = 8


def one_line_exit_2(capsys, prog: str, job) -> str:
    """`job` run as an entry point runs it: one line on stderr and exit 2; returns the line."""
    with pytest.raises(SystemExit) as exited:
        cli.run(prog, job)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == EXIT_USAGE and len(lines) == 1, lines
    return lines[0]


def datamodule(folder: Path, tmp_path: Path, **settings) -> DrivingDataModule:
    return DrivingDataModule([str(folder)], preprocess=Preprocess(), val_fraction=0.25, block_rows=3,
                             balance={"enabled": False}, batch_size=4,
                             cache_dir=str(tmp_path / "cache"), **settings)


def image(folder: Path, camera: str, row: int) -> Path:
    line = (folder / udacity.LOG_NAME).read_text().splitlines()[row - 1]
    return folder / udacity.IMAGE_DIR / Path(line.split(",")[udacity.CAMERAS.index(camera)]).name


def test_a_driving_log_field_over_the_csv_limit_is_one_line(tmp_path: Path, capsys) -> None:
    folder = write_recording(tmp_path / "lap", rows=ROWS)
    lines = (folder / udacity.LOG_NAME).read_text().splitlines()
    lines[3] = lines[3].replace(",", "," + "x" * 140_000, 1)
    (folder / udacity.LOG_NAME).write_text("\n".join(lines) + "\n")
    line = one_line_exit_2(capsys, "train.py", lambda: datamodule(folder, tmp_path).setup())
    assert line.startswith(f"train.py: error: {folder.resolve() / udacity.LOG_NAME} row 4: field larger")


def swap_in(folder: Path, row: int, kind: str, tmp_path: Path) -> Path:
    """Replace row `row`'s centre image with `kind`: a link to /dev/zero, a pipe, a huge sparse
    file (a hole: nothing on disk)."""
    victim = image(folder, "center", row)
    victim.unlink()
    if kind == "/dev/zero":
        victim.symlink_to("/dev/zero")
    elif kind == "sparse":
        with open(victim, "wb") as handle:
            handle.truncate(20 * 1024**3)  # 20 GB of nothing
    return victim


@contextmanager
def address_space_cap(extra: int = 2 * 1024**3):
    """At most `extra` more bytes of address space while inside: code that reads a frame
    file whole fails with MemoryError instead of taking the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("kind", ["/dev/zero", "sparse"])
def test_a_frame_that_is_no_camera_frame_is_a_bad_row_never_read_whole(tmp_path: Path, capsys,
                                                                       kind: str) -> None:
    folder = write_recording(tmp_path / "lap", rows=ROWS)
    victim = swap_in(folder, 3, kind, tmp_path)
    with address_space_cap():
        line = one_line_exit_2(capsys, "train.py", lambda: datamodule(folder, tmp_path).setup())
        why = "not a regular file" if kind != "sparse" else f"over the limit of {MAX_FRAME_BYTES}"
        assert f"{udacity.LOG_NAME} row 3" in line and victim.name in line and why in line, line
        dm = datamodule(folder, tmp_path, on_bad_row="skip")
        dm.setup()
    assert dm.stats["rows"] == ROWS - 1 and dm.stats["skipped_rows"] == 1


def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    from bc.core.images import ImageError, read_image_file

    pipe = tmp_path / "frame.jpg"
    os.mkfifo(pipe)
    with pytest.raises(ImageError, match="frame.jpg: not a regular file"):
        read_image_file(pipe)


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    with FrameRecorder(tmp_path / "run", overwrite=False) as recorder:
        for index in range(3):
            recorder.record(make_jpeg(index), steering=0.0, throttle=0.3, speed=9.0)
    return tmp_path / "run"


def test_video_on_a_non_utf8_drive_log_is_one_line(run_folder: Path, capsys) -> None:
    log = run_folder / "drive_log.csv"
    log.write_bytes(log.read_bytes() + b"\xff\xfe,\xfa\n")
    line = one_line_exit_2(capsys, "video.py", lambda: make_video(run_folder, fps=10))
    assert f"{log}: not UTF-8 text" in line


def test_video_on_an_oversized_drive_log_field_is_one_line(run_folder: Path, capsys) -> None:
    log = run_folder / "drive_log.csv"
    log.write_text(log.read_text() + "x" * 140_000 + ",0,0,0\n")
    line = one_line_exit_2(capsys, "video.py", lambda: make_video(run_folder, fps=10))
    assert f"{log} line" in line and "field larger" in line


@pytest.mark.parametrize("escape", ["../outside.jpg", "{outside}", "link/outside.jpg", "."])
def test_video_reads_frames_only_inside_its_folder(run_folder: Path, tmp_path: Path, capsys,
                                                   escape: str) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(make_jpeg(7))
    (run_folder / "link").symlink_to(tmp_path)
    log = run_folder / "drive_log.csv"
    rows = log.read_text().splitlines()
    name = rows[2].split(",")[1]  # time,image,...
    rows[2] = rows[2].replace(name, escape.format(outside=outside), 1)
    log.write_text("\n".join(rows) + "\n")
    line = one_line_exit_2(capsys, "video.py", lambda: make_video(run_folder, fps=10))
    assert f"{log} line 3: image" in line and "is not a file inside" in line
    assert not (tmp_path / "run.mp4").exists()


def test_resume_from_a_damaged_checkpoint_is_one_line_and_the_run_stays_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process (train.py reports the same BcError as its one line, exit 2)."""
    monkeypatch.chdir(tmp_path)
    recording = write_recording(tmp_path / "rec", rows=20)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    from omegaconf import OmegaConf

    from conftest import compose_config

    config = OmegaConf.to_container(compose_config("train", [
        "model=small", "data.num_workers=0", f"data.paths=[{recording}]", "data.block_rows=10",
        f"output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
        "model.preprocess.frame_width=320", "model.preprocess.frame_height=160"]), resolve=True)
    run_id = client.create_run(tracking.get_or_create_experiment("bc", uri)).info.run_id
    client.log_text(run_id, yaml.safe_dump(config), "config.yaml")
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"net.x": torch.zeros(100)}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-200])  # killed while it was written
    client.set_tag(run_id, "last_checkpoint", str(checkpoint))
    client.set_terminated(run_id, "KILLED")
    from bc.errors import BcError
    from bc.training.train import train

    with pytest.raises(BcError) as error:
        train(compose_config("train", [f"resume={run_id}", f"tracking_uri={uri}", f"output_dir={tmp_path / 'resumed'}"]))
    line = str(error.value)
    assert "\n" not in line
    assert line.startswith(f"resume: run {run_id}'s checkpoint {checkpoint} is unreadable"), line
    assert client.get_run(run_id).info.status == "KILLED"
