"""scripts/video.py: a saved drive run becomes a playable mp4 with one video frame per image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from bc.drive.frames import FrameRecorder
from bc.drive.video import VideoError, make_video
from bc.core.images import ImageError
from unity_client import make_jpeg

VIDEO_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "video.py"
FRAMES = 12


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A folder as ``drive.py image_folder=...`` leaves it: frames + drive_log.csv."""
    # A space in the name: the positional argument is quoted.
    with FrameRecorder(tmp_path / "my run", overwrite=False) as recorder:
        for index in range(FRAMES):
            steering = (index - FRAMES / 2) / FRAMES
            recorder.record(make_jpeg(index), steering=steering, throttle=0.3, speed=9.0)
    return tmp_path / "my run"


def read_video(path: Path) -> list[np.ndarray]:
    reader = imageio.get_reader(str(path))
    try:
        assert reader.get_meta_data()["fps"] == pytest.approx(10.0)
        return [frame for frame in reader]
    finally:
        reader.close()


def test_video_script_writes_a_playable_mp4_with_every_frame(run_folder, tmp_path):
    command = [sys.executable, str(VIDEO_SCRIPT), str(run_folder), "fps=10", "overlay=true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = run_folder.parent / "my run.mp4"
    assert f"wrote {output.name}" in result.stdout or f"wrote {output}" in result.stdout
    frames = read_video(output)
    assert len(frames) == FRAMES and frames[0].shape == (160, 320, 3)

    plain = make_video(run_folder, fps=10, output=tmp_path / "plain.mp4")
    plain_frames = read_video(plain)
    assert len(plain_frames) == FRAMES
    # The overlay (text + steering bar) changes the picture; the video is the recorded scene.
    assert np.abs(frames[0].astype(int) - plain_frames[0].astype(int)).mean() > 1.0
    scene = imageio.imread(sorted(run_folder.glob("*.jpg"))[0])
    assert np.abs(plain_frames[0].astype(int) - scene.astype(int)).mean() < 8.0


def test_video_script_accepts_folder_override_and_reports_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, str(VIDEO_SCRIPT), f"folder={empty}"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"video.py: error: {empty} has no .jpg frames"
    no_folder = subprocess.run([sys.executable, str(VIDEO_SCRIPT)], capture_output=True,
                               text=True, timeout=120, cwd=tmp_path)
    assert no_folder.returncode == 2
    assert no_folder.stderr.startswith("video.py: error: folder: missing; usage:")
    (empty / "a.jpg").write_bytes(make_jpeg(0))
    with pytest.raises(VideoError, match="overlay=true needs"):
        make_video(empty, fps=10, overlay=True)
    (empty / "b.jpg").write_bytes(make_jpeg(0)[:-300])  # a cut-off frame names its file
    with pytest.raises(ImageError, match="b.jpg.*truncated"):
        make_video(empty, fps=10, output=tmp_path / "cut.mp4")
    with pytest.raises(VideoError, match="fps: expected a number > 0"):
        make_video(empty, fps=0)


def test_positional_folder_is_rewritten_to_a_quoted_override():
    from bc.commands import video as video_script

    assert video_script.positional_to_override(["video.py", "runs/a b", "fps=5"]) == [
        "video.py", "folder='runs/a b'", "fps=5"]
    assert video_script.positional_to_override(["video.py", "folder=x"]) == ["video.py", "folder=x"]
    assert video_script.quote_override("it's") == "'it\\'s'"
