"""A face-pretrained image branch: dlib's face-recognition ResNet, early stages frozen, later stages fine-tuned.

The frozen part (input normalisation, stem and the first `frozen_stages`
stages) is a pure function of the un-augmented image, like the landmark
network, so training computes its maps once per image and warps them with
each augmentation (grefel.engine.frozen_cache); the trainable stages continue from
those maps and learn at a lower rate (`optim.image_lr_scale`). The two parts
are separate modules so that a model registers each once (`face` frozen,
`image_backbone` trainable). Their submodule names follow DlibResNet (`stem`,
`stages.N`) so the converted state_dict maps by name; its 128-d identity
layer (`fc`) is not used (its embedding carries no expression: FERPlus linear
probe 51.0% against 73.4% for the stage-128 maps, issue 13).
"""

from __future__ import annotations

import torch
from torch import nn

from grefel.errors import WeightsError
from grefel.models.dlib_resnet import DlibResNet, DlibResNetConfig, dlib_stem


class FrozenFaceStages(nn.Module):
    """Stem and the first stages of the dlib ResNet: no gradients."""

    def __init__(self, net: DlibResNet, frozen_stages: int):
        super().__init__()
        self.stem = net.stem
        self.stages = nn.ModuleList(net.stages[:frozen_stages])
        self.register_buffer("rgb_mean", net.rgb_mean.clone())
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = dlib_stem(self.stem, self.rgb_mean, x)                          # (B, 32, 35, 35) at 150 px
        for stage in self.stages:
            y = stage(y)
        return y                                                            # (B, 64, 17, 17) with 2 frozen


class FaceStages(nn.Module):
    """The fine-tuned stages: the last frozen map -> [that map, the map after each stage]."""

    def __init__(self, net: DlibResNet, frozen_stages: int, trainable_stages: int):
        super().__init__()
        self.offset = frozen_stages
        self.stages = nn.ModuleList(net.stages[frozen_stages:frozen_stages + trainable_stages])
        self.widths = net.widths[frozen_stages - 1:frozen_stages + trainable_stages]

    def forward(self, frozen_map: torch.Tensor) -> list[torch.Tensor]:
        maps, y = [frozen_map], frozen_map
        for stage in self.stages:
            y = stage(y)
            maps.append(y)                                                  # 128x8x8, 256x4x4 at 150 px
        return maps


def face_branch(frozen_stages: int = 2, trainable_stages: int = 2) -> tuple[FrozenFaceStages, FaceStages]:
    cfg = DlibResNetConfig()
    if not 1 <= frozen_stages < len(cfg.widths) or not 1 <= trainable_stages <= len(cfg.widths) - frozen_stages:
        raise ValueError(f"face branch: frozen_stages {frozen_stages} and trainable_stages {trainable_stages} "
                         f"must fit dlib's {len(cfg.widths)} stages, at least one of each")
    net = DlibResNet(cfg)
    return FrozenFaceStages(net, frozen_stages), FaceStages(net, frozen_stages, trainable_stages)


def load_face_branch(frozen: FrozenFaceStages, stages: FaceStages, state: dict[str, torch.Tensor],
                     where: str) -> int:
    """Load a DlibResNet state_dict (scripts/convert_dlib_resnet.py) into both parts; returns the tensors loaded."""
    parts = {"frozen": (frozen, {k: k for k in frozen.state_dict()}),
             "stages": (stages, {k: f"stages.{int(k.split('.')[1]) + stages.offset}.{k.split('.', 2)[2]}"
                                 for k in stages.state_dict()})}
    loaded = 0
    for module, names in parts.values():
        missing = [src for src in names.values() if src not in state]
        if missing:
            raise WeightsError(f"{where}: not a dlib face ResNet state_dict (missing {', '.join(missing[:3])})")
        mapped = {dst: state[src].float() for dst, src in names.items()}
        wrong = [k for k, v in module.state_dict().items() if mapped[k].shape != v.shape]
        if wrong:
            raise WeightsError(f"{where}: wrong shapes for {', '.join(wrong[:3])}")
        module.load_state_dict(mapped, strict=True)
        loaded += len(mapped)
    return loaded
