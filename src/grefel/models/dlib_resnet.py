"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`) in PyTorch.

The network of dlib's `dnn_face_recognition_ex.cpp`, trained by Davis King on
about 3 million faces (public domain / CC0). Its 128-d embedding describes
identity, not expression; grefel uses its mid-level maps, which carry face
structure learnt from millions of faces (FERPlus linear probe: 73.4% at the end
of the 128-channel stage against 55.8% for the same network at random init).

The structure follows dlib exactly, quirks included, so converted weights
(scripts/convert_dlib_resnet.py) reproduce `compute_face_descriptor`:
- every conv has a bias, and dlib's `affine` layers (batch norm frozen into a
  scale and shift) are folded into the conv before them at conversion;
- strided convs and pools have no padding (dlib's default when stride != 1),
  stride-1 convs pad by 1;
- a downsampling unit adds a 2x2 average pool of its input to the strided
  branch; dlib's `add_prev` adds tensors of different shapes by zero-padding
  both to the larger one (channels, and at 8 -> 3/4 px, rows and columns),
  aligned at the top-left.

Sizes at the 150 px input: stem 32x72x72 -> max-pool 32x35x35 -> stage 32
(35) -> stage 64 (17) -> stage 128 (8) -> stage 256 (4) -> stage 256 (2) ->
mean -> 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# dlib's input_rgb_image: (pixel - mean) / 256 on 0-255 RGB.
DLIB_RGB_MEAN = (122.782, 117.001, 104.298)
DLIB_INPUT_SIZE = 150
DLIB_WEIGHTS = "dlib_face_resnet.safetensors"   # in grefel/weights, made by scripts/convert_dlib_resnet.py
STAGE_NAMES = ("stage32", "stage64", "stage128", "stage256", "stage256b")


def dlib_stem(stem: nn.Conv2d, rgb_mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> dlib's input scale, (255 x - mean) / 256, then the 7x7/2 conv, relu and 3x3/2 max-pool."""
    return F.max_pool2d(F.relu(stem((x - rgb_mean) * (255.0 / 256.0))), 3, 2)   # (B, 32, 35, 35) at 150 px


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, each tensor zero-padded at the end of every dim."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]   # (C, H, W)

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class DlibResidual(nn.Module):
    """relu(conv2(relu(conv1(x))) + shortcut), shortcut = x or avg_pool2(x) when the unit downsamples."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 0 if stride > 1 else 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.downsample = stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if self.downsample:
            return F.relu(add_padded(y, F.avg_pool2d(x, 2, 2)))
        return F.relu(y + x)


def stage(c_in: int, c_out: int, units: int, downsample: bool) -> nn.Sequential:
    blocks = [DlibResidual(c_in, c_out, 2 if downsample else 1)]
    blocks += [DlibResidual(c_out, c_out, 1) for _ in range(units - 1)]
    return nn.Sequential(*blocks)


@dataclass(frozen=True)
class DlibResNetConfig:
    widths: tuple[int, ...] = (32, 64, 128, 256, 256)
    units: tuple[int, ...] = (3, 4, 3, 3, 1)
    embed_dim: int = 128


class DlibResNet(nn.Module):
    """Input: (B, 3, H, W) RGB in [0, 1] (150 px is what dlib was trained on). `forward_stages`
    returns the map after each stage; `forward` the 128-d descriptor (dlib's, unnormalised)."""

    def __init__(self, config: DlibResNetConfig = DlibResNetConfig()):
        super().__init__()
        w, u = config.widths, config.units
        self.widths = tuple(w)
        self.stem = nn.Conv2d(3, w[0], 7, 2, 0)
        self.stages = nn.ModuleList(
            [stage(w[0], w[0], u[0], downsample=False)]
            + [stage(w[i - 1], w[i], u[i], downsample=True) for i in range(1, len(w))])
        self.fc = nn.Linear(w[-1], config.embed_dim, bias=False)
        self.register_buffer("rgb_mean", torch.tensor(DLIB_RGB_MEAN).view(1, 3, 1, 1) / 255.0)  # on the [0, 1] scale

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps, y = [], dlib_stem(self.stem, self.rgb_mean, x)
        for block in self.stages:
            y = block(y)
            maps.append(y)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_stages(x)[-1].mean((2, 3)))             # (B, 128)
