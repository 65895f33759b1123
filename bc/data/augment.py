"""Per-sample training augmentation (`augmentation=per_sample`): albumentations photometric
changes plus steering-aware geometry, frame by frame in the DataLoader workers. The default
augments whole batches instead (`bc.data.batch_augment`, several times faster); this path
stays for comparison (`scripts/benchmark.py loader`) and for runs logged with it.

albumentations cannot know that a mirrored frame needs the opposite steering or that a
sideways-shifted frame needs a correction, so `SteeringAugment` does those two itself.
Sign convention (the Unity simulator's): **positive steering = turn right**. Shifting the
picture right by dx pixels makes the road appear further right, as if the car were left
of where it was, so it must steer more to the right: steering += dx * steering_per_px.
Augmentation runs on the cached crop-resized RGB frame (model resolution), before the
colour conversion, so `shift_px` is in model-input pixels (whole pixels: numpy slicing,
10x cheaper than warpAffine).
"""

from __future__ import annotations

import os
import sys
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from bc.core.settings import integer, number, optional, setting  # noqa: E402
from bc.errors import ConfigError  # noqa: E402


def process_seed(seed: int | None) -> int:
    """Fresh seed material per process: DataLoader workers must not share random streams."""
    torch = sys.modules.get("torch")
    info = torch.utils.data.get_worker_info() if torch is not None else None
    if info is not None:  # torch gives each worker (and each epoch's workers) its own seed
        return int(info.seed) % (2**63)
    if seed is not None:
        return int(seed)
    if torch is not None:  # follows torch.manual_seed / Lightning's seed_everything
        return int(torch.initial_seed()) % (2**63)
    return int(np.random.SeedSequence().entropy % (2**63))


def _reseed(transform: Any, seed_sequence: np.random.SeedSequence) -> None:
    """Give every albumentations transform its own stream (set_random_seed shares one)."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(seed_sequence.generate_state(1)[0]))
    children = getattr(transform, "transforms", None) or []
    for child, child_seed in zip(children, seed_sequence.spawn(len(children))):
        _reseed(child, child_seed)


class SteeringAugment:
    """Photometric pipeline + horizontal flip (negates steering) + shift (adjusts steering)."""

    def __init__(
        self,
        photometric: Any | None = None,
        flip_prob: float = 0.5,
        shift_px: float = 0,
        steering_per_px: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if photometric is not None and not callable(photometric):
            raise ConfigError(
                "augmentation.photometric: expected an albumentations transform (e.g."
                f" albumentations.Compose), got {type(photometric).__name__}"
            )
        self.photometric = photometric
        self.flip_prob = setting(
            "augmentation.flip_prob", flip_prob, number, lambda v: 0 <= v <= 1, "a number in [0, 1]"
        )
        self.shift_px = setting(
            "augmentation.shift_px", shift_px, number, lambda v: v >= 0, "a number of pixels >= 0"
        )
        self.steering_per_px = setting(
            "augmentation.steering_per_px", steering_per_px, number, lambda v: True, "a number"
        )
        self.seed = setting(
            "augmentation.seed", seed, optional(integer), lambda v: True, "an integer (or null)"
        )
        self._rng: np.random.Generator | None = None
        self._pid: int | None = None

    @property
    def is_identity(self) -> bool:
        """True when this augmentation never changes anything (the `none` config)."""
        return self.photometric is None and self.flip_prob == 0.0 and self.shift_px == 0.0

    def _generator(self) -> np.random.Generator:
        if self._rng is None or self._pid != os.getpid():
            sequence = np.random.SeedSequence(process_seed(self.seed))
            own, photometric = sequence.spawn(2)
            self._rng = np.random.default_rng(own)
            if self.photometric is not None:
                _reseed(self.photometric, photometric)
            self._pid = os.getpid()
        return self._rng

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rng"] = state["_pid"] = None  # each process draws its own stream
        return state

    def __call__(self, image: np.ndarray, steering: float) -> tuple[np.ndarray, float]:
        """Augment one RGB uint8 H x W x 3 frame and its steering label."""
        if self.is_identity:
            return image, steering
        rng = self._generator()
        steering = float(steering)
        if self.photometric is not None:
            image = self.photometric(image=image)["image"]
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            image = image[:, ::-1]
            steering = -steering
        if self.shift_px >= 1:
            dx = int(rng.integers(-int(self.shift_px), int(self.shift_px), endpoint=True))
            image = shift_horizontal(image, dx)
            steering += dx * self.steering_per_px
        return np.ascontiguousarray(image), steering

    def __repr__(self) -> str:
        return (
            f"SteeringAugment(photometric={self.photometric!r}, flip_prob={self.flip_prob}, "
            f"shift_px={self.shift_px}, steering_per_px={self.steering_per_px})"
        )


def shift_horizontal(image: np.ndarray, dx: int) -> np.ndarray:
    """Move the picture dx whole pixels right (negative: left), repeating the border column."""
    dx = int(dx)
    if dx == 0:
        return image.copy()
    width = image.shape[1]
    if abs(dx) >= width:
        raise ValueError(f"shift of {dx} pixels is not smaller than the image width {width}")
    out = np.empty_like(image)
    if dx > 0:
        out[:, dx:] = image[:, :-dx]
        out[:, :dx] = image[:, :1]
    else:
        out[:, :dx] = image[:, -dx:]
        out[:, dx:] = image[:, -1:]
    return out
