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

    def linear_heads(self) -> list[nn.Linear]:
        """The classifier on `embedding` (grefel.training.refit re-fits it)."""
        return [self.fc]

    def feature_extractor_parameters(self) -> int:
        return sum(p.numel() for p in self.features.parameters())


register_model(ModelSpec(
    "cnn_baseline", PlainCNN, PlainCNNConfig, {},  # widths 32-256: grefel_vgg's image branch
    "plain VGG-style CNN baseline (no landmarks, no reliability head), for comparison",
))


@dataclass
class PlainCNNEnsembleConfig(PlainCNNConfig):
    members: int = 2


class PlainCNNEnsemble(nn.Module):
    """Several cnn_baseline models of one configuration whose logits are averaged: a seed ensemble in one
    model file (`grefel model ensemble` assembles it from trained members). Averaging logits, not
    probabilities, keeps one set of logits for temperature scaling and logit adjustment."""

    member_preset = "cnn_baseline"

    def __init__(self, config: PlainCNNEnsembleConfig, preset: str = "cnn_ensemble"):
        super().__init__()
        if config.members < 1:
            raise ValueError(f"members must be at least 1, got {config.members}")
        self.config, self.preset = config, preset
        member = PlainCNNConfig(**{f: getattr(config, f) for f in PlainCNNConfig.__dataclass_fields__})
        self.members = nn.ModuleList(PlainCNN(member, preset) for _ in range(config.members))

    def forward(self, x: torch.Tensor, trust: float = 1.0) -> GReFELOutput:
        outs = [m(x) for m in self.members]
        logits = torch.stack([o.logits for o in outs]).mean(0)                # (B, C)
        p = F.softmax(logits / self.config.tau, -1)
        return GReFELOutput(logits=logits, primary=p, corrected=p,
                            embedding=torch.cat([o.embedding for o in outs], -1))  # (B, members * widths[-1])

    def linear_heads(self) -> list[nn.Linear]:
        """Each member's classifier, in the order the members' embeddings are concatenated."""
        return [m.fc for m in self.members]

    def feature_extractor_parameters(self) -> int:
        return sum(m.feature_extractor_parameters() for m in self.members)


register_model(ModelSpec(
    "cnn_ensemble", PlainCNNEnsemble, PlainCNNEnsembleConfig, {},
    "the logits of several cnn_baseline models averaged (a seed ensemble; `grefel model ensemble` builds one)",
))
