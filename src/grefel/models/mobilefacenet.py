"""MobileFaceNet 68-point landmark network with the POSTER / POSTER++ key layout.

Origin of the architecture and weights: cunjian/pytorch_face_landmark (the same
network POSTER ships as `mobilefacenet_model_best.pth.tar`). Module and
parameter names follow that code so its state_dicts load strictly.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv -> BN -> PReLU (upstream `Conv_block`)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise, 1x1 linear project (upstream `Depth_Wise`)."""

    def __init__(self, in_c: int, out_c: int, expand: int, stride: int, residual: bool = False):
        super().__init__()
        self.conv = ConvBlock(in_c, expand)
        self.conv_dw = ConvBlock(expand, expand, kernel=3, stride=stride, padding=1, groups=expand)
        self.project = ConvBlock(expand, out_c, activation=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, channels: int, num_blocks: int, expand: int):
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(channels, channels, expand, stride=1, residual=True)
                                     for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv + linear: the 136-value landmark regressor."""

    def __init__(self, out_features: int):
        super().__init__()
        self.conv_6_dw = ConvBlock(512, 512, kernel=7, groups=512, activation=False)
        self.linear = nn.Linear(512, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_dw(x).flatten(1)))


class MobileFaceNet(nn.Module):
    """Landmark network. Input RGB in [0, 1]; at 112x112 the maps are 28, 14 and 7 wide.

    `features(x)` returns the three maps GReFEL attends with (64x28x28,
    128x14x14, 512x7x7 at 112 input); `forward(x)` returns the 68 (x, y)
    landmarks in [0, 1] coordinates of the input, shape (B, 68, 2).
    """

    num_landmarks = 68

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBlock(3, 64, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(64, 64, kernel=3, stride=1, padding=1, groups=64)
        self.conv_23 = DepthWise(64, 64, expand=128, stride=2)
        self.conv_3 = Residual(64, num_blocks=4, expand=128)
        self.conv_34 = DepthWise(64, 128, expand=256, stride=2)
        self.conv_4 = Residual(128, num_blocks=6, expand=256)
        self.conv_45 = DepthWise(128, 128, expand=512, stride=2)
        self.conv_5 = Residual(128, num_blocks=2, expand=256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.output_layer = GDC(2 * self.num_landmarks)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        f1 = self.conv_3(x)                                     # (B, 64, H/4, W/4)
        f2 = self.conv_4(self.conv_34(f1))                      # (B, 128, H/8, W/8)
        f3 = self.conv_6_sep(self.conv_5(self.conv_45(f2)))     # (B, 512, H/16, W/16)
        return f1, f2, f3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (112, 112):
            raise ValueError(f"landmark regression needs 112x112 input, got {tuple(x.shape[-2:])}")
        f3 = self.features(x)[2]
        return self.output_layer(f3).view(-1, self.num_landmarks, 2)  # (B, 68, 2)
