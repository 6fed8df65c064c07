"""A plain CNN baseline (VGG-style, four conv blocks), trained by the same engine.

It shows what GReFEL's landmark branch and reliability head add: same data,
same budget, no geometry and no anchors. Its output fills only the primary
fields of GReFELOutput (the corrected distribution is the primary one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grefel.models.grefel import InputSpec
from grefel.models.reliability import GReFELOutput


@dataclass
class PlainCNNConfig:
    num_classes: int = 8
    in_chans: int = 3
    input_size: int = 48
    mean: float = 0.5
    std: float = 0.5
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    dropout: float = 0.5
    tau: float = 1.0


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class PlainCNN(nn.Module):
    def __init__(self, config: PlainCNNConfig, preset: str = "cnn_baseline"):
        super().__init__()
        self.config, self.preset = config, preset
        cfg = config
        self.input_spec = InputSpec(preset, cfg.in_chans, cfg.input_size, cfg.mean, cfg.std)
        layers: list[nn.Module] = []
        c = cfg.in_chans
        for w in cfg.widths:                               # each block halves the resolution
            layers += conv_bn(c, w) + conv_bn(w, w) + [nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(c, cfg.num_classes)

    def forward(self, x: torch.Tensor, trust: float = 1.0) -> GReFELOutput:
        self.input_spec.check(x)
        e = self.features(self.input_spec.image_input(x)).mean((2, 3))  # (B, 512)
        logits = self.fc(self.dropout(e))
        p = F.softmax(logits / self.config.tau, -1)
        return GReFELOutput(logits=logits, primary=p, corrected=p, embedding=e)

    def feature_extractor_parameters(self) -> int:
        return sum(p.numel() for p in self.features.parameters())
