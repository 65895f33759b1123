"""Bad data is found while the datamodule sets up, named by file and row, and honours
`on_bad_row`: never a silent frame, never a failure in the middle of training."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bc import cli

from bc.core import udacity
from bc.data.datamodule import DrivingDataModule
from bc.data.log import DrivingLogError
from bc.data.synthetic import write_recording
from bc.errors import EXIT_USAGE
from bc.core.images import jpeg_problem
from bc.core.preprocess import Preprocess

ROWS = 12


def zero_scan_data(path: Path) -> None:
    """Zero a JPEG's entropy-coded data, keeping its headers and end marker: every marker
    check passes, and OpenCV and Pillow decode it to a grey picture without an error."""
    data = path.read_bytes()
    scan = data.find(b"\xff\xda")
    start = scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    end = data.rfind(b"\xff\xd9")
    path.write_bytes(data[:start] + bytes(end - start) + data[end:])
    assert jpeg_problem(path.read_bytes()) is None


def datamodule(folder: Path, tmp_path: Path, **settings) -> DrivingDataModule:
    defaults = dict(
        preprocess=Preprocess(),
        val_fraction=0.25,
        block_rows=3,
        balance={"enabled": False},
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    return DrivingDataModule([str(folder)], **{**defaults, **settings})


def train_like(dm: DrivingDataModule, epochs: int = 2) -> int:
    """Every batch of `epochs` training + validation epochs; returns the samples seen."""
    seen = 0
    for _ in range(epochs):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            seen += sum(len(x) for x, _ in loader)
    return seen


def image(folder: Path, camera: str, row: int) -> Path:
    """The `camera` image of csv row `row` (1-based, unity variant: no header)."""
    line = (folder / udacity.LOG_NAME).read_text().splitlines()[row - 1]
    return folder / udacity.IMAGE_DIR / Path(line.split(",")[udacity.CAMERAS.index(camera)]).name


def test_a_jpeg_with_zeroed_scan_data_is_an_error_naming_file_and_row(tmp_path, capsys):
    folder = write_recording(tmp_path / "lap", rows=ROWS)
    victim = image(folder, "center", 7)  # the centre camera is used for training and validation
    zero_scan_data(victim)
    dm = datamodule(folder, tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.run("train.py", dm.setup)  # found while setting up: before any batch
    assert info.value.code == EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: 1 row(s) with a frame")
    assert f"{folder.resolve() / 'driving_log.csv'} row 7" in lines[0]
    assert victim.name in lines[0] and "corrupt JPEG" in lines[0]
    assert "data.on_bad_row=skip" in lines[0]


def test_bad_frames_are_skipped_and_counted_and_training_never_fails(tmp_path, caplog):
    folder = write_recording(tmp_path / "lap", rows=ROWS)
    zero_scan_data(image(folder, "center", 2))  # only decoding shows it: found by the cache
    truncated = image(folder, "right", 5)  # the marker check shows it: found with the log
    truncated.write_bytes(truncated.read_bytes()[:500])
    zero_scan_data(image(folder, "center", 10))
    dm = datamodule(folder, tmp_path, on_bad_row="skip")
    with caplog.at_level(logging.WARNING, logger="bc.data"):
        dm.setup()
    assert dm.stats["skipped_rows"] == 3 and dm.stats["rows"] == ROWS - 3
    # each frame is read once: the marker check and the decoding report together
    assert "3 row(s) with a frame that cannot be used" in caplog.text
    assert "driving_log.csv row 5: right: image file" in caplog.text
    assert sorted(dm.table["row"]) == [1, 3, 4, 6, 7, 8, 9, 11, 12]
    sources = dm.train_set.sources + dm.val_set.sources  # "<csv> row N (camera)" per sample
    assert {int(source.split(" row ")[1].split()[0]) for source in sources} == set(dm.table["row"])
    assert train_like(dm) == 2 * (len(dm.train_set) + len(dm.val_set)) > 0
    # Without the right camera, row 5's right image does not matter.
    centre_only = datamodule(folder, tmp_path, on_bad_row="skip", cameras=["center"])
    centre_only.setup()
    assert centre_only.stats["skipped_rows"] == 2 and 5 in centre_only.table["row"].tolist()


def test_steering_outside_its_range_is_not_trained_on(tmp_path):
    folder = write_recording(tmp_path / "lap", rows=ROWS)
    lines = (folder / udacity.LOG_NAME).read_text().splitlines()
    fields = lines[3].split(",")
    fields[udacity.LOG_COLUMNS.index("steering")] = "5.0"
    lines[3] = ",".join(fields)
    (folder / udacity.LOG_NAME).write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DrivingLogError,
        match=r"driving_log.csv: 1 bad row\(s\) of 12: row 4: steering 5.0 is outside its range"
        r" \[-1, 1\]",
    ):
        datamodule(folder, tmp_path).setup()
    dm = datamodule(folder, tmp_path, on_bad_row="skip")
    dm.setup()
    assert dm.stats["skipped_rows"] == 1 and 4 not in dm.table["row"].tolist()
    assert max(abs(dm.train_set.steering).max(), abs(dm.val_set.steering).max()) <= 1.0 + 0.2


def test_frames_smaller_than_the_crop_are_named_when_the_log_is_loaded(tmp_path):
    flat = write_recording(tmp_path / "flat", rows=4, frame_size=(320, 70))
    with pytest.raises(DrivingLogError) as info:
        datamodule(flat, tmp_path, val_fraction=0.0).setup()
    message = str(info.value)
    assert f"{flat.resolve() / 'driving_log.csv'} row 1" in message and "is 320x70" in message
    assert "crop_top + crop_bottom (60 + 20) leaves nothing of a 70-row frame" in message
    # One small frame in a recording of 320x160 frames: its file, row and both sizes.
    folder = write_recording(tmp_path / "lap", rows=6)
    small = image(folder, "center", 3)
    small.write_bytes(image(flat, "center", 1).read_bytes())
    with pytest.raises(
        DrivingLogError,
        match=rf"row 3: center image {small.name} is 320x70, but the size of \S+ \(\S+ row 1\)"
        r" is 320x160",
    ):
        datamodule(folder, tmp_path, val_fraction=0.0).setup()


def test_a_header_only_log_names_its_file(tmp_path):
    folder = write_recording(tmp_path / "empty", rows=0, variant="sample")
    with pytest.raises(
        DrivingLogError,
        match=f"{folder.resolve() / 'driving_log.csv'} has no rows after its header",
    ):
        datamodule(folder, tmp_path).setup()
