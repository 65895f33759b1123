"""Driving-log loading, frame cache, augmentation, splits and the Lightning datamodule.

Import the heavy parts from their modules (`bc.data.datamodule` pulls Lightning,
`bc.data.augment` albumentations); this package itself only loads logs.
"""

from bc.data.log import DrivingLogError, detect_frame_size, read_driving_log, read_driving_logs

__all__ = ["DrivingLogError", "detect_frame_size", "read_driving_log", "read_driving_logs"]
