"""The plain fine-tuned baseline of the face-pretrained branch: dlib's ResNet and a linear classifier.

The same frozen and fine-tuned dlib stages as GReFEL's `image_backbone: dlib`,
then the last map average-pooled to a `pool_grid` x `pool_grid` grid (the
linear probe found 2x2 pooling 4-13 points better than global pooling at every
depth: where on the face a feature fires matters), dropout and one linear
layer. No landmarks, no fusion, no anchors: what GReFEL's parts add on top of
this branch is measured against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grefel.models.face_branch import face_branch
from grefel.models.grefel import InputSpec, resample
from grefel.models.pretrained import FACE
from grefel.models.registry import ModelSpec, register_model
from grefel.models.reliability import GReFELOutput


@dataclass
class FaceBaselineConfig:
    num_classes: int = 8
    in_chans: int = 3
    input_size: int = 48
    mean: float = 0.0                 # kept for the checkpoint's input contract; dlib normalises its own input
    std: float = 1.0
    face_size: int = 150
    face_frozen_stages: int = 2
    face_trainable_stages: int = 2
    pool_grid: int = 2
    dropout: float = 0.5
    tau: float = 1.0


class FaceBaseline(nn.Module):
    def __init__(self, config: FaceBaselineConfig, preset: str = "face_baseline"):
        super().__init__()
        self.config, self.preset = config, preset
        cfg = config
        self.input_spec = InputSpec(preset, cfg.in_chans, cfg.input_size, cfg.mean, cfg.std)
        self.face, self.image_backbone = face_branch(cfg.face_frozen_stages, cfg.face_trainable_stages)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(self.image_backbone.widths[-1] * cfg.pool_grid ** 2, cfg.num_classes)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.face]

    def frozen_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[the last frozen dlib map] of the un-augmented input (see grefel.engine.frozen_cache)."""
        self.input_spec.check(x)
        return self._frozen_maps(x)

    def _frozen_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input_spec.landmark_input(self.input_spec.resize(x, self.config.face_size))  # RGB at 150 px
        return [self.face(x)]

    def forward(self, x: torch.Tensor, trust: float = 1.0, frozen_maps: list[torch.Tensor] | None = None
                ) -> GReFELOutput:
        self.input_spec.check(x)
        frozen = self._frozen_maps(x) if frozen_maps is None else frozen_maps
        last = self.image_backbone(frozen[0])[-1]                                   # (B, 256, 4, 4) at 150 px
        e = resample(last, self.config.pool_grid).flatten(1)                        # (B, 256 * g * g)
        logits = self.fc(self.dropout(e))
        p = F.softmax(logits / self.config.tau, -1)
        return GReFELOutput(logits=logits, primary=p, corrected=p, embedding=e)

    def feature_extractor_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters()) - sum(p.numel() for p in self.fc.parameters())


register_model(ModelSpec(
    "face_baseline", FaceBaseline, FaceBaselineConfig, {},
    "dlib's face-recognition ResNet (stages 128/256 fine-tuned) + 2x2 pooling + linear: grefel_face's plain baseline",
    pretrained={"face": FACE},
))
