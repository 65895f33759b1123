"""Driving-log parsing on real generated recordings: every variant, bad rows, frame sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from bc.core import udacity
from bc.data.log import (
    DrivingLogError,
    detect_frame_size,
    file_name_from_log_path,
    read_driving_log,
    read_driving_logs,
)
from bc.data.synthetic import SKY_RGB, write_recording
from bc.errors import BcError
from bc.core.images import read_rgb
from bc.core.preprocess import Preprocess

ROWS = 24
VALUE_COLUMNS = ["steering", "throttle", "brake", "speed", "row"]


def _names(table, camera="center"):
    return [Path(path).name for path in table[camera]]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {
        variant: write_recording(root / variant, rows=ROWS, variant=variant, seed=3)
        for variant in ("unity", "sample", "windows")
    }


def test_every_variant_parses_to_the_same_table(variants):
    tables = {variant: read_driving_log(folder) for variant, folder in variants.items()}
    unity = tables["unity"]
    assert list(unity.columns) == list(udacity.LOG_COLUMNS) + ["recording", "row"]
    assert len(unity) == ROWS and unity["row"].tolist() == list(range(1, ROWS + 1))
    assert unity["steering"].abs().max() > 0.2 and (unity["steering"] == 0).any()
    for variant, table in tables.items():
        # sample has a header line, so its data rows start at line 2
        offset = 1 if variant == "sample" else 0
        assert np.allclose(
            table[["steering", "throttle", "brake", "speed"]],
            unity[["steering", "throttle", "brake", "speed"]],
        )
        assert (table["row"] - offset).tolist() == unity["row"].tolist()
        folder = variants[variant].resolve()
        assert table["recording"].unique().tolist() == [str(folder)]
        for camera in ("center", "left", "right"):
            assert _names(table, camera) == _names(unity, camera)
            assert all(
                Path(path).is_file() and Path(path).parent == folder / "IMG"
                for path in table[camera]
            )


def test_windows_paths_point_elsewhere_but_resolve_by_file_name(variants):
    raw = (variants["windows"] / "driving_log.csv").read_bytes()
    assert raw.count(b"\r\n") == ROWS  # CRLF line ends, as C# writes them on Windows
    first_line = raw.decode().splitlines()[0]
    assert first_line.startswith("C:\\Users\\") and "\\IMG\\center_" in first_line
    assert (
        file_name_from_log_path("C:\\Users\\me\\data\\IMG\\center_2016_12_01_13_30_48_287.jpg")
        == "center_2016_12_01_13_30_48_287.jpg"
    )
    assert (
        file_name_from_log_path("/home/other/data/IMG/left_1.jpg")
        == file_name_from_log_path(" IMG/left_1.jpg")
        == "left_1.jpg"
    )


def test_sample_variant_has_header_relative_paths_and_comma_space(variants):
    lines = (variants["sample"] / "driving_log.csv").read_text().splitlines()
    assert lines[0] == ",".join(udacity.LOG_COLUMNS)
    assert lines[1].startswith("IMG/center_") and ", IMG/left_" in lines[1]


def test_several_recordings_merge_and_appended_rows_load(tmp_path):
    first = write_recording(tmp_path / "one", rows=10, variant="unity", seed=1)
    second = write_recording(tmp_path / "two", rows=8, variant="sample", seed=2)
    write_recording(second, rows=5, variant="sample", seed=2, append=True)  # re-recording appends
    merged = read_driving_logs([first, second])
    assert len(merged) == 23
    assert (
        merged["recording"].tolist() == [str(first.resolve())] * 10 + [str(second.resolve())] * 13
    )
    assert merged["row"].tolist() == list(range(1, 11)) + list(range(2, 15))
    assert len(set(merged["center"])) == 23
    with pytest.raises(DrivingLogError, match="more than once"):
        read_driving_logs([first, first])
    with pytest.raises(DrivingLogError, match="no recording folders"):
        read_driving_logs([])


def test_comma_decimal_locale_is_named(tmp_path):
    folder = write_recording(tmp_path / "de", rows=6, variant="comma-decimal")
    with pytest.raises(
        DrivingLogError, match=r"driving_log.csv row 1: .*comma as the decimal separator"
    ):
        read_driving_log(folder)
    with pytest.raises(DrivingLogError, match="comma-decimal locale"):
        read_driving_log(folder, on_bad_row="skip")  # ambiguous numbers are never skipped quietly


def _break_rows(folder: Path) -> None:
    """Row 2: missing image, row 4: NaN steering, row 6: short row, row 8: truncated JPEG."""
    csv_path = folder / "driving_log.csv"
    lines = csv_path.read_text().splitlines()
    (folder / "IMG" / Path(lines[1].split(",")[0]).name).unlink()
    fields = lines[3].split(",")
    lines[3] = ",".join(fields[:3] + ["nan"] + fields[4:])
    lines[5] = ",".join(lines[5].split(",")[:4])
    truncated = folder / "IMG" / Path(lines[7].split(",")[1]).name
    truncated.write_bytes(truncated.read_bytes()[:300])
    csv_path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is fine


def test_bad_rows_raise_naming_file_rows_and_count(tmp_path):
    folder = write_recording(tmp_path / "bad", rows=12)
    _break_rows(folder)
    with pytest.raises(DrivingLogError) as info:
        read_driving_log(folder)
    message = str(info.value)
    assert str(folder / "driving_log.csv") in message
    assert "4 bad row(s) of 12" in message
    assert "row 2: center image missing" in message
    assert "row 4: steering 'nan' is not a finite number" in message
    assert "row 6: 4 fields, expected 7" in message
    assert "row 8: left image" in message and "truncated JPEG" in message
    assert "on_bad_row='skip'" in message


def test_skip_mode_drops_bad_rows_and_logs_the_count(tmp_path, caplog):
    folder = write_recording(tmp_path / "bad", rows=12)
    _break_rows(folder)
    with caplog.at_level(logging.WARNING, logger="bc.data.log"):
        table = read_driving_log(folder, on_bad_row="skip")
    assert table["row"].tolist() == [1, 3, 5, 7, 9, 10, 11, 12]
    assert "4 bad row(s) of 12" in caplog.text
    # Only the cameras asked for need images: the truncated left image of row 8 is fine then.
    assert 8 in read_driving_log(folder, on_bad_row="skip", cameras=("center",))["row"].tolist()


def test_many_bad_rows_are_counted_not_all_listed(tmp_path):
    folder = write_recording(tmp_path / "many", rows=10)
    for image in (folder / "IMG").glob("right_*"):
        image.unlink()
    with pytest.raises(DrivingLogError, match=r"10 bad row\(s\) of 10: .*and 5 more"):
        read_driving_log(folder)
    with pytest.raises(DrivingLogError, match="every row is bad"):
        read_driving_log(folder, on_bad_row="skip")


def test_missing_folder_csv_or_images_folder(tmp_path):
    with pytest.raises(DrivingLogError, match="does not exist"):
        read_driving_log(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DrivingLogError, match="has no driving_log.csv"):
        read_driving_log(tmp_path / "empty")
    folder = write_recording(tmp_path / "noimg", rows=3)
    for image in (folder / "IMG").iterdir():
        image.unlink()
    (folder / "IMG").rmdir()
    with pytest.raises(DrivingLogError, match="has no IMG/ folder"):
        read_driving_log(folder)
    with pytest.raises(DrivingLogError, match="on_bad_row"):
        read_driving_log(folder, on_bad_row="ignore")


def test_images_decode_as_rgb_and_fail_loudly(tmp_path):
    folder = write_recording(tmp_path / "rgb", rows=2)
    table = read_driving_log(folder)
    frame = read_rgb(table["center"][0])
    assert frame.shape == (160, 320, 3) and frame.dtype == np.uint8
    sky = frame[:40].reshape(-1, 3).mean(axis=0)
    assert (
        np.allclose(sky, SKY_RGB, atol=25) and sky[2] > sky[0]
    )  # blue sky stays blue: RGB, not BGR
    with pytest.raises(BcError, match="not found: .*nothing.jpg"):
        read_rgb(tmp_path / "nothing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(
        b"\xff\xd8\xff" + b"\x00" * 500 + b"\xff\xd9"
    )  # passes the cheap marker check
    with pytest.raises(BcError, match="broken.jpg: (truncated|corrupt)"):
        read_rgb(broken)


def _set_field(folder: Path, row: int, column: str, value: str) -> None:
    """Rewrite one field of a unity-variant log (1-based csv row)."""
    csv_path = folder / udacity.LOG_NAME
    lines = csv_path.read_text().splitlines()
    fields = lines[row - 1].split(",")
    fields[udacity.LOG_COLUMNS.index(column)] = value
    lines[row - 1] = ",".join(fields)
    csv_path.write_text("\n".join(lines) + "\n")


def test_labels_outside_their_range_are_bad_rows(tmp_path, caplog):
    folder = write_recording(tmp_path / "range", rows=8)
    _set_field(folder, 3, "steering", "5.0")
    _set_field(folder, 6, "speed", "-2")
    with pytest.raises(DrivingLogError) as info:
        read_driving_log(folder)
    message = str(info.value)
    assert str(folder / "driving_log.csv") in message and "2 bad row(s) of 8" in message
    assert "row 3: steering 5.0 is outside its range [-1, 1]" in message
    assert "row 6: speed -2 is outside its range [0, inf)" in message
    with caplog.at_level(logging.WARNING, logger="bc.data.log"):
        table = read_driving_log(folder, on_bad_row="skip")
    assert table["row"].tolist() == [1, 2, 4, 5, 7, 8] and table.attrs["skipped_rows"] == 2
    assert "2 bad row(s) of 8" in caplog.text
    assert table["steering"].abs().max() <= 1.0


@pytest.mark.parametrize("variant", ["sample", "unity"])
def test_a_log_without_rows_names_its_file(variant, tmp_path):
    folder = write_recording(tmp_path / variant, rows=0, variant=variant)
    if variant == "sample":  # Udacity's header, then nothing
        assert (folder / "driving_log.csv").read_text().strip() == ",".join(udacity.LOG_COLUMNS)
        expected = "has no rows after its header"
    else:
        expected = "has no rows"
    with pytest.raises(DrivingLogError, match=f"{folder / 'driving_log.csv'} {expected}"):
        read_driving_logs([folder])


def test_frames_of_another_simulator_load_and_their_size_is_detected(tmp_path):
    folder = write_recording(
        tmp_path / "square", rows=6, variant="sample", frame_size=(96, 96), cameras=("center",)
    )
    table = read_driving_log(folder, cameras=("center",))
    assert len(table) == 6 and (table["left"] == "").all()
    assert read_rgb(table["center"][0]).shape == (96, 96, 3)
    assert detect_frame_size([folder], ["center"]) == (96, 96)
    assert detect_frame_size([write_recording(tmp_path / "udacity", rows=2)]) == (320, 160)
    with pytest.raises(DrivingLogError, match="row 2: left image missing"):
        read_driving_log(folder)  # the left camera was asked for but never recorded
    # The first good frame decides: a broken first image is passed over.
    first = sorted((folder / "IMG").glob("center_*"))[0]
    first.write_bytes(first.read_bytes()[:200])
    assert detect_frame_size([folder], ["center"]) == (96, 96)


def test_mixed_frame_sizes_name_file_row_and_both_sizes(tmp_path):
    folder = write_recording(tmp_path / "mixed", rows=5, cameras=("center",))
    odd = write_recording(tmp_path / "odd", rows=5, frame_size=(96, 96), cameras=("center",))
    victim = sorted((folder / "IMG").glob("center_*"))[3]
    victim.write_bytes(sorted((odd / "IMG").glob("center_*"))[0].read_bytes())
    pattern = (
        rf"{folder / 'driving_log.csv'} row 4: center image {victim.name} is 96x96, but the size"
        r" of center_\S+ in row 1 is 320x160"
    )
    with pytest.raises(DrivingLogError, match=pattern):
        read_driving_log(folder, cameras=("center",))
    with pytest.raises(DrivingLogError, match="is 96x96"):
        read_driving_log(folder, cameras=("center",), on_bad_row="skip")  # never skipped quietly
    # Across recordings, and against a given (the model's) size.
    with pytest.raises(
        DrivingLogError, match=rf"{odd / 'driving_log.csv'} row 1: .* is 96x96, but .* is 320x160"
    ):
        read_driving_logs([write_recording(tmp_path / "good", rows=3), odd], cameras=("center",))
    with pytest.raises(
        DrivingLogError,
        match=r"row 1: center image \S+ is 96x96, but the expected frame size is 64x64",
    ):
        read_driving_log(odd, cameras=("center",), frame_size=(64, 64))


def test_a_crop_that_leaves_nothing_of_the_frames_names_the_frame(tmp_path):
    folder = write_recording(tmp_path / "flat", rows=3, frame_size=(320, 70), cameras=("center",))
    crop_80_rows = Preprocess(crop_top=60, crop_bottom=20)
    with pytest.raises(DrivingLogError) as info:
        detect_frame_size([folder], ["center"], preprocess=crop_80_rows)
    message = str(info.value)
    assert "center_" in message and f"{folder / 'driving_log.csv'} row 1" in message
    assert "320x70" in message and "crop_top + crop_bottom (60 + 20)" in message
    assert detect_frame_size(
        [folder], ["center"], preprocess={"crop_top": 0, "crop_bottom": 12}
    ) == (320, 70)
