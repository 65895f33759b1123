"""Driving-log loading, frame cache, augmentation, splits and the Lightning datamodule.

Import the heavy parts from their modules (`bc.data.datamodule` pulls Lightning,
`bc.data.augment` albumentations); this package itself only loads logs and images.
"""

from bc.images import ImageError, read_rgb
from bc.data.log import COLUMNS, DrivingLogError, read_driving_log, read_driving_logs

__all__ = [
    "COLUMNS",
    "DrivingLogError",
    "ImageError",
    "read_rgb",
    "read_driving_log",
    "read_driving_logs",
]
