"""Augmentation and colour conversion of whole batches of uint8 frames, on any torch device.

The loader hands over batches of cached crop-resized RGB frames (uint8 N x W x H x 3: the
frame cache keeps frames transposed, see `bc.data.dataset`); `model_batch` turns one into the
model's input, float N x 3 x H x W in 0..255 in its colour space (every model normalises its
own input): `BatchAugment` (training only), then `color_batch`. On a GPU this runs after the
batch is moved there (`DrivingDataModule.on_after_batch_transfer`); on a CPU in the
DataLoader workers (`data.augment_on`).

What is driving-specific is written here: a mirrored frame needs the opposite steering, a
frame shifted right by dx pixels needs `dx * steering_per_px` more (positive steering = turn
right: the road appears further right, as if the car were left of where it was). Flip and
shift together are one gather of whole columns (border column repeated), on uint8. The
photometric transforms are a few tensor operations each, with parameters drawn per sample
from the augmentation's own generator on the device: Kornia's augmentation modules do the
same, but cost 1-30 ms per transform on a batch of 32 on the 2-core development machine
(parameter sampling and checks per call), more than this whole pipeline.

Un-augmented frames (validation, and what the drive server sees) are converted by the model's
`Preprocess` itself: on the CPU `Preprocess.color` (OpenCV, one call per batch); on another
device `color_batch`, whose YUV (the PilotNet input) is OpenCV's fixed-point formula in
float32, where every intermediate is a multiple of 2**-14 below 2**8 and hence exact:
bit-identical to `cv2.cvtColor` for every uint8 colour. Colour spaces without such a formula
(hsv, lab) go through `Preprocess.color` on the host.
"""

from __future__ import annotations

import os
from collections import abc
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from bc.data.augment import process_seed
from bc.errors import ConfigError
from bc.core.preprocess import Preprocess
from bc.core.settings import integer, number, optional, setting

# OpenCV's RGB -> YUV for 8-bit frames (color_yuv): coefficients scaled by 2**14.
_YUV_SHIFT = 2.0**-14
_Y_RGB = (4899.0, 9617.0, 1868.0)
_U_B, _V_R = 8061.0, 14369.0
_UV_OFFSET = 128.0 * 2**14 + 2**13  # 128 << 14 plus rounding
_Y_ROUND = 2.0**13
_GRAY = (0.299, 0.587, 0.114)


def _range(field: str, value: Any, low: float = 0.0,
           high: float = float("inf")) -> tuple[float, float]:
    """[low, high] from a config list (or one number: [value, value])."""
    def convert(item: Any) -> tuple[float, float]:
        listed = isinstance(item, abc.Sequence) and not isinstance(item, str)
        pair = list(item) if listed else [item, item]
        if len(pair) != 2:
            raise ValueError(item)
        return number(pair[0]), number(pair[1])

    return setting(field, value, convert, lambda v: low <= v[0] <= v[1] <= high,
                   f"[low, high] with {low:g} <= low <= high <= {high:g}")


def _probability(field: str, value: Any) -> float:
    return setting(field, value, number, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _uniform(count: int, bounds: tuple[float, float], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    low, high = bounds
    return torch.rand(count, generator=generator, device=device) * (high - low) + low


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


class BatchTransform:
    """A photometric change applied to each sample of a batch with probability `p`, with its
    own parameters per sample. Subclasses implement `apply`."""

    name = "augmentation.photometric"

    def __init__(self, p: float = 1.0) -> None:
        self.p = _probability(f"{self.name}.p", p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Apply to float N x 3 x H x W (0..255), each sample with probability p."""
        picked = torch.rand(len(x), generator=generator, device=x.device) < self.p
        return self.apply(x, picked, generator)

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        """Change the samples where `picked` (bool N) is true, in place where it can."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _where(picked: torch.Tensor, values: torch.Tensor, neutral: float) -> torch.Tensor:
    """Per-sample parameters, `neutral` (no change) for samples not picked: elementwise
    transforms then run over the whole batch without gathering the picked samples."""
    return _per_sample(torch.where(picked, values, neutral))


def _on_picked(x: torch.Tensor, picked: torch.Tensor,
               change: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`change(samples)` on the picked samples only (transforms that cost per pixel)."""
    rows = picked.nonzero().squeeze(1)
    if len(rows):
        x[rows] = change(x[rows])
    return x


class BrightnessContrast(BatchTransform):
    """x * (1 + c) + 255 * b, c in [-contrast, contrast], b in [-brightness, brightness]
    (albumentations' RandomBrightnessContrast with brightness_by_max)."""

    name = "augmentation.photometric.BrightnessContrast"

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p)
        self.brightness = setting(f"{self.name}.brightness", brightness, number,
                                  lambda v: 0 <= v <= 1, "a number in [0, 1]")
        self.contrast = setting(f"{self.name}.contrast", contrast, number,
                                lambda v: 0 <= v <= 1, "a number in [0, 1]")

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        gain = _uniform(len(x), (1 - self.contrast, 1 + self.contrast), generator, x.device)
        offset = _uniform(len(x), (-self.brightness, self.brightness), generator, x.device)
        return x.mul_(_where(picked, gain, 1.0)).add_(_where(picked, offset * 255, 0.0))


class Saturation(BatchTransform):
    """Colour saturation scaled by 1 + s, s in [-limit, limit] (towards or away from grey)."""

    name = "augmentation.photometric.Saturation"

    def __init__(self, limit: float = 0.3, p: float = 0.5) -> None:
        super().__init__(p)
        self.limit = setting(f"{self.name}.limit", limit, number, lambda v: 0 <= v <= 1,
                             "a number in [0, 1]")

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        weights = torch.tensor(_GRAY, device=x.device).view(1, 3, 1, 1)
        gray = (x * weights).sum(1, keepdim=True)
        scale = _uniform(len(x), (1 - self.limit, 1 + self.limit), generator, x.device)
        return x.sub_(gray).mul_(_where(picked, scale, 1.0)).add_(gray)


class Shadow(BatchTransform):
    """A shadow across the road: the part of the frame on one side of a line from a random
    column at the top to a random column at the bottom, darkened by `intensity`."""

    name = "augmentation.photometric.Shadow"

    def __init__(self, intensity: Sequence[float] = (0.3, 0.6), p: float = 0.3) -> None:
        super().__init__(p)
        self.intensity = _range(f"{self.name}.intensity", intensity, 0.0, 1.0)

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        return _on_picked(x, picked, lambda samples: self._shade(samples, generator))

    def _shade(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = x.shape
        top, bottom = (torch.rand(count, generator=generator, device=x.device) * width
                       for _ in range(2))
        side = torch.rand(count, generator=generator, device=x.device) < 0.5
        keep = _per_sample(1 - _uniform(count, self.intensity, generator, x.device))
        rows = torch.linspace(0, 1, height, device=x.device).view(1, 1, height, 1)
        columns = torch.arange(width, device=x.device, dtype=x.dtype).view(1, 1, 1, width)
        edge = _per_sample(top) + _per_sample(bottom - top) * rows  # N x 1 x H x 1
        inside = (columns < edge) ^ _per_sample(side)  # N x 1 x H x W
        return x.mul_(torch.where(inside, keep, torch.ones((), device=x.device)))


class GaussianBlur(BatchTransform):
    """Gaussian blur with a `kernel` x `kernel` window and sigma in `sigma` per sample
    (separable, border replicated)."""

    name = "augmentation.photometric.GaussianBlur"

    def __init__(self, sigma: Sequence[float] = (0.3, 1.0), kernel: int = 3,
                 p: float = 1.0) -> None:
        super().__init__(p)
        self.sigma = _range(f"{self.name}.sigma", sigma, 0.01)
        self.kernel = setting(f"{self.name}.kernel", kernel, integer,
                              lambda v: v >= 3 and v % 2 == 1, "an odd integer >= 3")

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        return _on_picked(x, picked, lambda samples: self._blur(samples, generator))

    def _blur(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = x.shape
        sigma = _uniform(count, self.sigma, generator, x.device)
        half = self.kernel // 2
        taps = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
        weights = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        weights = weights / weights.sum(1, keepdim=True)  # N x kernel
        padded = F.pad(x, (half, half, half, half), mode="replicate")
        rows = sum(_per_sample(weights[:, tap]) * padded[:, :, :, tap:tap + width]
                   for tap in range(self.kernel))  # N x 3 x (H + 2 half) x W
        return sum(_per_sample(weights[:, tap]) * rows[:, :, tap:tap + height]
                   for tap in range(self.kernel))


class GaussianNoise(BatchTransform):
    """Additive Gaussian noise, standard deviation in `std` (fractions of 255) per sample, the
    same on the three channels (luminance noise; a third of the random numbers)."""

    name = "augmentation.photometric.GaussianNoise"

    def __init__(self, std: Sequence[float] = (0.02, 0.05), p: float = 1.0) -> None:
        super().__init__(p)
        self.std = _range(f"{self.name}.std", std, 0.0, 1.0)

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        return _on_picked(x, picked, lambda samples: self._noise(samples, generator))

    def _noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        std = _per_sample(_uniform(len(x), self.std, generator, x.device)) * 255
        noise = torch.randn((len(x), 1, *x.shape[2:]), generator=generator, device=x.device,
                            dtype=x.dtype)
        return x.add_(noise.mul_(std))


class OneOf(BatchTransform):
    """With probability `p`, one of `transforms` (chosen uniformly per sample; their own
    `p` is not used)."""

    name = "augmentation.photometric.OneOf"

    def __init__(self, transforms: Sequence[BatchTransform], p: float = 0.5) -> None:
        super().__init__(p)
        self.transforms = _transforms(transforms, self.name + ".transforms")
        if not self.transforms:
            raise ConfigError(f"{self.name}.transforms: expected at least one transform, got []")

    def apply(self, x: torch.Tensor, picked: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(len(self.transforms), (len(x),), generator=generator,
                              device=x.device)
        for choice, transform in enumerate(self.transforms):
            x = transform.apply(x, picked & (which == choice), generator)
        return x


def _transforms(transforms: Any, field: str) -> list[BatchTransform]:
    transforms = list(transforms or [])
    for transform in transforms:
        if not isinstance(transform, BatchTransform):
            raise ConfigError(f"{field}: expected transforms of bc.data.batch_augment (e.g."
                              f" BrightnessContrast), got {type(transform).__name__}")
    return transforms


class BatchAugment:
    """Steering-aware augmentation of a batch: `photometric` transforms, horizontal flip
    (negates steering) and shift of up to `shift_px` pixels (adds dx * steering_per_px).
    Labels are N x k, steering first; other columns (the speed target) are left alone."""

    def __init__(
        self,
        photometric: Sequence[BatchTransform] | None = None,
        flip_prob: float = 0.5,
        shift_px: float = 0,
        steering_per_px: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.photometric = _transforms(photometric, "augmentation.photometric")
        self.flip_prob = _probability("augmentation.flip_prob", flip_prob)
        self.shift_px = setting("augmentation.shift_px", shift_px, number, lambda v: v >= 0,
                                "a number of pixels >= 0")
        self.steering_per_px = setting("augmentation.steering_per_px", steering_per_px, number,
                                       lambda v: True, "a number")
        self.seed = setting("augmentation.seed", seed, optional(integer), lambda v: True,
                            "an integer (or null)")
        self._generators: dict[tuple[int, str], torch.Generator] = {}

    @property
    def is_identity(self) -> bool:
        """True when this augmentation never changes anything (the `none` config)."""
        return not self.photometric and self.flip_prob == 0 and self.shift_px < 1

    def generator(self, device: torch.device) -> torch.Generator:
        """This process's random stream on `device` (DataLoader workers each draw their own)."""
        key = (os.getpid(), str(device))
        if key not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(process_seed(self.seed))
            self._generators[key] = generator
        return self._generators[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_generators": {}}  # each process (and copy) seeds its own

    def __call__(self, frames: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment cached frames (uint8 N x W x H x 3, see `bc.data.dataset.FrameCache`) and
        their labels; returns float RGB N x 3 x H x W in 0..255 and the new labels."""
        generator = self.generator(frames.device)
        labels = labels.clone()
        x = _to_float(self._flip_and_shift(frames, labels, generator))
        if self.photometric:
            for transform in self.photometric:
                x = transform(x, generator)
            x = x.clamp_(0, 255)
        return x, labels

    def _flip_and_shift(self, frames: torch.Tensor, labels: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
        count, width = frames.shape[:2]
        shift = int(self.shift_px)
        if self.flip_prob == 0 and shift == 0:
            return frames
        device = frames.device
        columns = torch.arange(width, device=device).expand(count, width)
        steering = labels[:, 0]
        if shift > 0:
            dx = torch.randint(-shift, shift + 1, (count,), generator=generator, device=device)
            columns = (columns - dx.view(-1, 1)).clamp(0, width - 1)
        if self.flip_prob > 0:
            flip = torch.rand(count, generator=generator, device=device) < self.flip_prob
            columns = torch.where(flip.view(-1, 1), width - 1 - columns, columns)
            steering = torch.where(flip, -steering, steering)
        if shift > 0:
            steering = steering + dx.to(steering.dtype) * self.steering_per_px
        labels[:, 0] = steering
        # flipped[c] = frame[W-1-c], then shifted[c] = flipped[clamp(c - dx)]: as a frame's
        # columns are contiguous in the cache, both are one gather of whole columns.
        rows = (columns + torch.arange(count, device=device).view(-1, 1) * width).view(-1)
        return frames.reshape(count * width, -1).index_select(0, rows).view(frames.shape)

    def __repr__(self) -> str:
        return (f"BatchAugment(photometric={self.photometric!r}, flip_prob={self.flip_prob}, "
                f"shift_px={self.shift_px}, steering_per_px={self.steering_per_px})")


def color_batch(rgb: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """Float RGB N x 3 x H x W in 0..255 to the model's colour space: for integer values
    the numbers `spec.color` (what the drive server runs) gives for the same uint8 frames
    (augmented frames need not hold integers: the conversion rounds like OpenCV's)."""
    if spec.color_space == "rgb":
        return rgb
    if spec.color_space != "yuv":
        frames = rgb.round().permute(0, 3, 2, 1).to("cpu", torch.uint8)
        return model_input(frames, spec).to(rgb.device)
    red, green, blue = rgb.unbind(1)
    out = torch.empty_like(rgb)
    luma, u, v = out.unbind(1)
    # For integer RGB each product and sum below is a multiple of 2**-14 below 2**8: exact.
    torch.mul(red, _Y_RGB[0] * _YUV_SHIFT, out=luma)
    luma.add_(green, alpha=_Y_RGB[1] * _YUV_SHIFT).add_(blue, alpha=_Y_RGB[2] * _YUV_SHIFT)
    luma.add_(_Y_ROUND * _YUV_SHIFT).floor_()
    for chroma, source, weight in ((u, blue, _U_B), (v, red, _V_R)):
        torch.sub(source, luma, out=chroma)
        chroma.mul_(weight * _YUV_SHIFT).add_(_UV_OFFSET * _YUV_SHIFT).floor_().clamp_(0, 255)
    return out


def model_input(frames: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """Cached RGB frames (uint8 N x W x H x 3) to the model's input: float N x 3 x H x W in
    0..255 in its colour space. On the CPU `spec.color` itself converts (OpenCV, one call
    for the batch); elsewhere `color_batch` does, on the device."""
    if frames.device.type == "cpu":
        if spec.color_space != "rgb":
            pixels = frames.numpy().reshape(-1, frames.shape[2], 3)  # frames stacked, one image
            frames = torch.from_numpy(spec.color(pixels).reshape(frames.shape))
        return _to_float(frames)
    return color_batch(_to_float(frames), spec)


def _to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 N x W x H x 3 -> float32 N x 3 x H x W."""
    return frames.permute(0, 3, 2, 1).contiguous().float()


def model_batch(frames: torch.Tensor, labels: torch.Tensor, spec: Preprocess,
                augment: BatchAugment | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached frames and their labels -> the model's input batch and labels, augmented when
    `augment` is given (training)."""
    with _one_thread_on_cpu(frames.device):
        if augment is None or augment.is_identity:
            return model_input(frames, spec), labels
        rgb, labels = augment(frames, labels)
        return color_batch(rgb, spec), labels


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """One torch thread for the batch's operations on a CPU: each is a pass over a few MB,
    which a second thread does not speed up, but which waits for it (several times slower on
    a busy 2-core machine). DataLoader workers have one thread already."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
