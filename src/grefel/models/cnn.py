"""A plain CNN baseline (the VGG backbone of grefel.models.vgg and a linear classifier), trained by the same engine.

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
from grefel.models.registry import ModelSpec, register_model
from grefel.models.reliability import GReFELOutput
from grefel.models.vgg import VGGBackbone


@dataclass
class PlainCNNConfig:
    num_classes: int = 8
    in_chans: int = 3
    input_size: int = 48
    mean: float = 0.5
    std: float = 0.5
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    dropout: float = 0.5
    tau: float = 1.0


class PlainCNN(nn.Module):
    def __init__(self, config: PlainCNNConfig, preset: str = "cnn_baseline"):
        super().__init__()
        self.config, self.preset = config, preset
        cfg = config
        self.input_spec = InputSpec(preset, cfg.in_chans, cfg.input_size, cfg.mean, cfg.std)
        self.features = VGGBackbone(cfg.in_chans, cfg.widths)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.widths[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor, trust: float = 1.0) -> GReFELOutput:
        self.input_spec.check(x)
        e = self.features(self.input_spec.image_input(x))[-1].mean((2, 3))  # (B, widths[-1])
        logits = self.fc(self.dropout(e))
        p = F.softmax(logits / self.config.tau, -1)
        return GReFELOutput(logits=logits, primary=p, corrected=p, embedding=e)

    def feature_extractor_parameters(self) -> int:
        return sum(p.numel() for p in self.features.parameters())


register_model(ModelSpec(
    "cnn_baseline", PlainCNN, PlainCNNConfig, {},  # widths 32-256: grefel_vgg's image branch
    "plain VGG-style CNN baseline (no landmarks, no reliability head), for comparison",
))
