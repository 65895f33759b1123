"""VisualBackProp (Bojarski et al. 2017, "VisualBackProp: efficient visualization of CNNs for
autonomous driving"): which pixels of a frame the conv layers of a steering network respond to.

One forward pass, no gradients: each conv layer's feature maps (their positive part, what the
ELU/ReLU after it passes on; found by forward hooks, so the models stay untouched) are averaged
over channels; starting from the deepest layer, the averaged map is scaled up to the size of
the layer's input by a transposed convolution with the layer's kernel size, stride and padding
and all-ones weights (divided by the number of kernel windows covering each pixel: where a
kernel is not a multiple of its stride, windows overlap unevenly and would print a grid on
the mask, which says nothing about the network), and multiplied point-wise by the averaged
map of the layer before. At the input the product is the mask, normalised to 0..1 per frame.
The conv layers must form a chain (each one's input is the previous one's output, after
activations), as in every `bc.models` net.

`SaliencyOverlay` draws the mask on the camera frame, mapped back through the model's crop and
resize (`bc.core.preprocess.Preprocess`); `overlay_video` does it for every frame of an mp4.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bc.errors import BcError
from bc.core.preprocess import Preprocess, to_tensor
from bc.sim.plots import open_video

if TYPE_CHECKING:  # pragma: no cover
    from bc.inference.artifact import LoadedModel

OVERLAY_ALPHA = 0.8  # opacity of the heat colour where the mask is 1 (0 where it is 0)
OVERLAY_COLORMAP = cv2.COLORMAP_INFERNO  # dark red (little) -> yellow (most)
OVERLAY_COLORMAP_NAME = "inferno"  # the same map in matplotlib, for the colour bar
MASK_GAMMA = 0.5  # shown as sqrt(mask): VBP's product of layers is peaky; this shows its spread
CROP_LINE_RGB = (200, 200, 200)  # the rows the model does not see are dimmed, this line bounds them
CROP_DIM = 0.55  # brightness of the cropped-off rows


class SaliencyError(BcError, ValueError):
    """The network cannot be explained by VisualBackProp (e.g. it has no conv layers)."""


class VisualBackProp:
    """Saliency masks of `net` (a `bc.models` network: N x 3 x H x W in 0..255 -> outputs)."""

    def __init__(self, net: nn.Module) -> None:
        if isinstance(net, torch.jit.ScriptModule):
            raise SaliencyError("saliency needs the model's network (run_id=...), not a "
                                "TorchScript export: hooks cannot see inside a script module")
        self.net = net
        self.convs = [module for module in net.modules() if isinstance(module, nn.Conv2d)]
        if not self.convs:
            raise SaliencyError(f"{type(net).__name__} has no conv layers; VisualBackProp "
                                f"explains conv networks")

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masks N x H x W in 0..1, the network's outputs N x outputs) for a batch `x`."""
        seen: list[tuple[nn.Conv2d, torch.Size, torch.Tensor]] = []

        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.append((module, inputs[0].shape, output.clamp(min=0).mean(dim=1, keepdim=True)))

        handles = [conv.register_forward_hook(record) for conv in self.convs]
        try:
            with torch.inference_mode():
                outputs = self.net(x)
                masks = self._backprop(seen)
        finally:
            for handle in handles:
                handle.remove()
        return masks[:, 0], outputs

    @staticmethod
    def _backprop(seen: list[tuple[nn.Conv2d, torch.Size, torch.Tensor]]) -> torch.Tensor:
        if not seen:
            raise SaliencyError("no conv layer ran in the forward pass")
        mask = _normalise(seen[-1][2])
        for depth in range(len(seen) - 1, -1, -1):
            conv, input_shape, _ = seen[depth]
            mask = _scale_up(mask, conv, input_shape[-2:])
            if depth > 0:
                previous = seen[depth - 1][2]
                if previous.shape[-2:] != mask.shape[-2:]:
                    raise SaliencyError(
                        f"conv layers do not form a chain: a {tuple(previous.shape[-2:])} feature "
                        f"map feeds a layer whose input is {tuple(mask.shape[-2:])}")
                mask = _normalise(mask * previous)  # per layer: no underflow in deep nets
        return _normalise(mask)

    def frames(self, rgb_frames: Iterable[np.ndarray], spec: Preprocess
               ) -> tuple[np.ndarray, np.ndarray]:
        """(masks N x height x width at the model's input size, outputs N x outputs) for RGB
        camera frames, preprocessed as the drive server does."""
        inputs = to_tensor(np.stack([spec(rgb) for rgb in rgb_frames]))
        device = next(self.net.parameters()).device
        masks, outputs = self(inputs.to(device))
        return masks.float().cpu().numpy(), outputs.float().cpu().numpy()


def _normalise(mask: torch.Tensor) -> torch.Tensor:
    """Each map of a batch scaled to 0..1 (an all-zero map stays zero)."""
    peak = mask.flatten(1).amax(dim=1).clamp(min=torch.finfo(mask.dtype).tiny)
    return mask / peak.view(-1, *([1] * (mask.ndim - 1)))


def _scale_up(mask: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """`mask` (N x 1 x h x w, the conv's output size) spread over the conv's input size by a
    transposed convolution with all-ones weights of the conv's geometry."""
    kernel, stride = conv.kernel_size, conv.stride
    padding, dilation = conv.padding, conv.dilation
    if isinstance(padding, str):  # 'same' / 'valid'
        padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation)) \
            if padding == "same" else (0, 0)
    natural = [(n - 1) * s - 2 * p + d * (k - 1) + 1 for n, s, p, d, k in
               zip(mask.shape[-2:], stride, padding, dilation, kernel)]
    extra = [target - got for target, got in zip(size, natural)]
    ones = torch.ones(1, 1, *kernel, dtype=mask.dtype, device=mask.device)
    usable = all(0 <= e < max(s, d) for e, s, d in zip(extra, stride, dilation))
    scaled = F.conv_transpose2d(mask, ones, stride=stride, padding=padding, dilation=dilation,
                                output_padding=tuple(extra) if usable else 0)
    coverage = F.conv_transpose2d(torch.ones_like(mask[:1]), ones, stride=stride,
                                  padding=padding, dilation=dilation,
                                  output_padding=tuple(extra) if usable else 0)
    scaled = scaled / coverage.clamp(min=1)  # no grid where kernel windows overlap unevenly
    if scaled.shape[-2:] != tuple(size):  # an odd geometry: fit the size by interpolation
        scaled = F.interpolate(scaled, size=tuple(size), mode="bilinear", align_corners=False)
    return scaled


def frame_mask(mask: np.ndarray, spec: Preprocess, frame_shape: tuple[int, ...]) -> np.ndarray:
    """A model-input-size mask (height x width) as a camera-frame-size mask: resized back onto
    the rows the model sees (between its sky and hood crops), zero on the cropped rows."""
    rows, columns = frame_shape[:2]
    full = np.zeros((rows, columns), np.float32)
    seen = rows - spec.crop_top - spec.crop_bottom
    full[spec.crop_top: rows - spec.crop_bottom] = cv2.resize(
        mask.astype(np.float32), (columns, seen), interpolation=cv2.INTER_LINEAR)
    return full


def heat_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`rgb` with a same-size 0..1 `mask` blended in as a heat colour (stronger = more opaque)."""
    strength = np.clip(mask, 0.0, 1.0) ** MASK_GAMMA
    heat = cv2.applyColorMap((strength * 255).astype(np.uint8), OVERLAY_COLORMAP)[..., ::-1]
    alpha = (OVERLAY_ALPHA * strength)[..., None]
    out = rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_saliency(rgb: np.ndarray, mask: np.ndarray, spec: Preprocess) -> np.ndarray:
    """`rgb` (a camera frame) with the model-input-size `mask` as a heat colour over the rows
    the model sees; the cropped rows are dimmed and bounded by a thin line."""
    out = heat_overlay(rgb, frame_mask(mask, spec, rgb.shape))
    rows = rgb.shape[0]
    for cropped in (out[: spec.crop_top], out[rows - spec.crop_bottom:]):
        cropped[:] = (cropped * CROP_DIM).astype(np.uint8)
    for row in (spec.crop_top, rows - spec.crop_bottom - 1):
        if 0 < row < rows - 1:
            out[row] = CROP_LINE_RGB
    return out


class SaliencyOverlay:
    """Camera frames -> the same frames with the model's VisualBackProp mask drawn on them."""

    def __init__(self, model: "LoadedModel") -> None:
        self.spec = model.spec
        self.model = model
        self.vbp = VisualBackProp(model.net)
        model.net.eval()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB camera frame (the model's frame size) with its saliency drawn on it."""
        self.spec.check_frame(rgb)
        masks, _ = self.vbp.frames([rgb], self.spec)
        return draw_saliency(rgb, masks[0], self.spec)



def overlay_video(source: str | Path, output: str | Path, overlay: SaliencyOverlay) -> Path:
    """Write `output` (mp4, the source's frame rate): every frame of `source` with `overlay`
    drawn on it. Used for the center-camera video of an evaluation drive."""
    import imageio.v2 as imageio


    reader = imageio.get_reader(str(source))
    try:
        fps = float(reader.get_meta_data().get("fps") or 0)
        with open_video(output, fps=fps if math.isfinite(fps) and fps > 0 else 15.0) as writer:
            for rgb in reader:
                writer.append_data(overlay(np.asarray(rgb)))
    finally:
        reader.close()
    return Path(output)
