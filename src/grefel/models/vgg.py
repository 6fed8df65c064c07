"""VGG-style image backbone: blocks of two 3x3 conv-BN-ReLU, each block ending in a 2x2 max-pool.

At FERPlus's native 48 px this plain stack is a strong from-scratch recogniser
(the plain-CNN baseline is it plus a linear classifier), so GReFEL's light CPU
preset uses it as its image branch: the maps after blocks 2, 3 and 4 sit at
strides 4, 8 and 16, exactly where the landmark maps meet them.
"""

from __future__ import annotations

import torch
from torch import nn


def vgg_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class VGGBackbone(nn.Module):
    """Four VGG blocks; returns the maps after blocks 2, 3 and 4 (strides 4, 8, 16)."""

    def __init__(self, in_chans: int = 3, widths=(64, 128, 256, 512)):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"VGG backbone needs 4 block widths, got {len(widths)}")
        self.widths = tuple(widths)
        c_in = (in_chans,) + self.widths[:-1]
        self.blocks = nn.ModuleList(vgg_block(a, b) for a, b in zip(c_in, self.widths))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.blocks[0](x)    # (B, w1, H/2, W/2)
        x2 = self.blocks[1](x)   # (B, w2, H/4, W/4)
        x3 = self.blocks[2](x2)  # (B, w3, H/8, W/8)
        x4 = self.blocks[3](x3)  # (B, w4, H/16, W/16)
        return x2, x3, x4
