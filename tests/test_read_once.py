"""Each frame is read once per setup (header check, size check and decode from one read) and
each driving_log.csv parsed once, counted by the kernel's own byte counter (/proc/self/io)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bc.core import udacity
from bc.data import log
from bc.data.datamodule import DrivingDataModule
from bc.data.synthetic import write_recording
from bc.core.preprocess import Preprocess


def bytes_read() -> int:
    """Bytes this process has read with read() and friends, all threads (`rchar`)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def datamodule(folder: Path, cache: Path) -> DrivingDataModule:
    return DrivingDataModule([str(folder)], preprocess=Preprocess(), val_fraction=0.25,
                             block_rows=5, balance={"enabled": False}, batch_size=8,
                             cache_dir=str(cache))


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_setup_reads_each_frame_once(tmp_path: Path, cache: str) -> None:
    datamodule(write_recording(tmp_path / "warm-up", rows=12, seed=1), tmp_path / "c0").setup()  # imports
    folder = write_recording(tmp_path / "lap", rows=60)
    frames = sum(path.stat().st_size for path in (folder / udacity.IMAGE_DIR).iterdir())
    dm = datamodule(folder, tmp_path / "c1")
    dm.cache = cache
    before = bytes_read()
    dm.setup()
    read = bytes_read() - before
    assert dm.stats["rows"] == 60
    assert frames <= read < 1.3 * frames, (read, frames)  # twice before: header pass, then decode


def test_a_training_setup_parses_each_log_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders = [write_recording(tmp_path / name, rows=20, seed=seed) for seed, name in enumerate("ab")]
    parsed: list[str] = []
    real = log._parse_csv

    def counted(folder, *args, **kwargs):
        parsed.append(Path(folder).name)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(log, "_parse_csv", counted)
    log.detect_frame_size(folders)  # what train.py does first (the model's frame size) ...
    dm = DrivingDataModule([str(folder) for folder in folders], preprocess=Preprocess(),
                           val_fraction=0.25, block_rows=5, cache_dir=str(tmp_path / "cache"))
    dm.setup()  # ... then the datamodule
    assert sorted(parsed) == ["a", "b"] and dm.stats["recordings"] == 2
    (folders[0] / udacity.LOG_NAME).write_text((folders[0] / udacity.LOG_NAME).read_text()
                                               .replace("\n", "\n", 1))  # same bytes: still parsed
    lines = (folders[0] / udacity.LOG_NAME).read_text().splitlines()
    (folders[0] / udacity.LOG_NAME).write_text("\n".join(lines[:-1]) + "\n")  # changed: parsed again
    assert len(log.read_driving_log(folders[0])) == 19 and parsed.count("a") == 2
