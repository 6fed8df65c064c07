"""IR image backbone (ArcFace `bottleneck_IR` units), as used by POSTER++.

GReFEL uses the first three stages only. The paper preset is IR-50
(units 3/4/14, widths 64/128/256); lighter presets shrink units and widths.

Module names follow POSTER++'s `ir50.py` (`input_layer`, `body1`, `body2`,
`body3`, each unit with `shortcut_layer` and `res_layer`), so a POSTER++
`ir50.pth` loads by name. A face.evoLVe IR-50 state_dict (one flat `body.N`
list of 24 units) maps as body.0-2 -> body1.0-2, body.3-6 -> body2.0-3,
body.7-20 -> body3.0-13; its stage 4 (body.21-23) and `output_layer`
(the recognition embedding) are not used by GReFEL and are reported as skipped.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from grefel.errors import WeightsError
from grefel.models.layers import checkpointed


class Subsample(nn.Module):
    """Every `stride`-th pixel of each map: the identity shortcut of a strided unit.

    POSTER++ writes it `MaxPool2d(1, stride)`, the same numbers, but a max-pool copies its input and keeps
    int64 argmax indices for backward (twice the map's fp32 size, in every unit); a strided view keeps nothing.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class BottleneckIR(nn.Module):
    def __init__(self, in_c: int, depth: int, stride: int):
        super().__init__()
        if in_c == depth:
            self.shortcut_layer: nn.Module = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_c, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_c),
            nn.Conv2d(in_c, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_layer(x) + self.res_layer(x)


def _stage(in_c: int, depth: int, units: int) -> nn.Sequential:
    return nn.Sequential(BottleneckIR(in_c, depth, 2), *[BottleneckIR(depth, depth, 1) for _ in range(units - 1)])


class IRBackbone(nn.Module):
    """Three IR stages; returns maps at strides 2, 4 and 8 of the input."""

    def __init__(self, in_chans: int = 3, stem: int = 64, widths=(64, 128, 256), units=(3, 4, 14),
                 checkpoint_first_stage: bool = False):
        super().__init__()
        self.widths = tuple(widths)
        # The input layer and stage 1 run at the full branch resolution (112 px in the paper preset): at
        # batch 32 they hold ~1 GB of activations for ~13% of the compute, so they are the cheapest to
        # recompute in backward.
        self.checkpoint_first_stage = checkpoint_first_stage
        self.input_layer = nn.Sequential(nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(stem), nn.PReLU(stem))
        self.body1 = _stage(stem, widths[0], units[0])
        self.body2 = _stage(widths[0], widths[1], units[1])
        self.body3 = _stage(widths[1], widths[2], units[2])

    def _first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.body1(self.input_layer(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        run = self._first_stage
        x1 = checkpointed(self, x, call=run) if self.checkpoint_first_stage else run(x)  # (B, w1, H/2, W/2)
        x2 = self.body2(x1)                     # (B, w2, H/4, W/4)
        x3 = self.body3(x2)                     # (B, w3, H/8, W/8)
        return x1, x2, x3


_FLAT_BODY = re.compile(r"^body\.(\d+)\.(.*)$")
_STAGE_STARTS = (0, 3, 7, 21)  # IR-50 unit index where body1, body2, body3 and the unused stage 4 begin


def map_ir50_key(key: str) -> str | None:
    """POSTER++ / face.evoLVe IR-50 key -> IRBackbone key; None for the parts GReFEL does not use."""
    key = key.removeprefix("module.")
    if key.startswith(("output_layer.", "body4.")):
        return None
    match = _FLAT_BODY.match(key)
    if match is None:
        return key
    unit, rest = int(match.group(1)), match.group(2)
    for stage, (start, end) in enumerate(zip(_STAGE_STARTS, _STAGE_STARTS[1:]), start=1):
        if start <= unit < end:
            return f"body{stage}.{unit - start}.{rest}"
    return None


def load_ir50(backbone: IRBackbone, state: dict[str, torch.Tensor], *, allow_partial: bool = False) -> dict:
    """Load IR-50 weights into `backbone`; returns {"loaded", "skipped", "missing"} counts.

    Skipped are the source tensors GReFEL does not use (stage 4, embedding head).
    Any backbone tensor left missing, or a shape mismatch, is an error unless
    `allow_partial` is set.
    """
    own = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    skipped, unexpected, wrong_shape = [], [], []
    for key, value in state.items():
        target = map_ir50_key(key)
        if target is None:
            skipped.append(key)
        elif target not in own:
            unexpected.append(key)
        elif own[target].shape != value.shape:
            wrong_shape.append(f"{key} {tuple(value.shape)} vs {tuple(own[target].shape)}")
        else:
            mapped[target] = value
    missing = [k for k in own if k not in mapped]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} (first: {', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(f"wrong shape {len(wrong_shape)} (first: {'; '.join(wrong_shape[:3])})")
    if problems and not allow_partial:
        raise WeightsError("IR-50 weights do not fit the image backbone: " + "; ".join(problems))
    backbone.load_state_dict(mapped, strict=False)
    return {"loaded": len(mapped), "skipped": len(skipped), "missing": len(missing),
            "unexpected": len(unexpected), "wrong_shape": len(wrong_shape)}
