"""The inference view of a trained model: images in, calibrated probabilities out.

The same module is what `grefel predict` runs in PyTorch and what `grefel
export` writes to ONNX, so both backends compute the same numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from grefel.fileio import atomic_open
from grefel.models.factory import build_from_checkpoint
from grefel.models.mobilefacenet import ConvBlock
from grefel.models.model_file import SERVE_CHOICES, logit_shift
from grefel.models.reliability import EPS


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into that conv's weights and bias.

    Exact up to float rounding, and it cuts the eval-mode CPU time of grefel_vgg by about a fifth
    (the landmark network alone has 49 such pairs). In place, and for inference only: the model is
    put in eval mode and its state_dict changes (BN entries gone, conv biases added).
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvBlock) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv, module.bn = fuse_conv_bn_eval(module.conv, module.bn), nn.Identity()
        elif isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    return model


def served_tta_flip(info: dict, tta_flip: bool | None = None) -> bool:
    """Whether a checkpoint is served with test-time flip: as it was evaluated, unless `tta_flip` says."""
    return bool(info.get("tta_flip", False)) if tta_flip is None else bool(tta_flip)


class ServingModel(nn.Module):
    """Eval-mode wrapper: (B, C_in, S, S) in [0, 1] -> (B, classes) probabilities.

    `serve` picks argmax l_p ("primary", what ARBEx predicts) or the anchor-corrected
    distribution ("corrected"); `temperature` is the fitted calibration
    temperature, applied to the primary logits or to the log of the corrected
    distribution. `tta_flip` averages each image with its mirror first (logits
    for primary, distributions for corrected), as `grefel.engine.predict` does.
    The wrapped model's batch norms are folded into its convs (`fold_batchnorm`).
    """

    def __init__(self, model: nn.Module, serve: str = "primary", temperature: float = 1.0, tta_flip: bool = False,
                 shift: list[float] | None = None):
        super().__init__()
        if serve not in SERVE_CHOICES:
            raise ValueError(f"serve must be one of {SERVE_CHOICES}, got {serve!r}")
        self.model = fold_batchnorm(model)
        self.serve = serve
        self.temperature = float(temperature)
        self.tta_flip = tta_flip
        # Logit adjustment (grefel.models.model_file.logit_shift): subtracted before the temperature.
        self.register_buffer("shift", torch.tensor(shift or [0.0] * model.config.num_classes), persistent=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, tta_flip: bool | None = None) -> "ServingModel":
        """The checkpoint's model with its served prediction and temperature, the file read once;
        `.info` holds its JSON."""
        model, info = build_from_checkpoint(path)
        serving = cls(model, info["serve"], float(info["temperature"]), served_tta_flip(info, tta_flip),
                      logit_shift(info))
        serving.info = info
        return serving

    def train(self, mode: bool = True) -> "ServingModel":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # With TTA the image and its mirror run as one batch: one pass is cheaper than two on a CPU.
        out = self.model(torch.cat([x, x.flip(-1)]) if self.tta_flip else x)
        if self.serve == "primary":
            logits = (out.logits[:n] + out.logits[n:]) / 2 if self.tta_flip else out.logits
        else:
            dist = (out.corrected[:n] + out.corrected[n:]) / 2 if self.tta_flip else out.corrected
            logits = dist.clamp_min(EPS).log()
        return F.softmax((logits - self.shift) / self.temperature, dim=-1)

    def export_onnx(self, path: str | Path, input_shape: tuple[int, int, int, int] | None = None,
                    opset: int = 17) -> Path:
        """Write this model as ONNX (input `image`, output `probabilities`, dynamic batch), atomically.
        `input_shape` defaults to a batch of 2 at the checkpoint's input size."""
        if input_shape is None:
            cfg = self.model.config
            input_shape = (2, cfg.in_chans, cfg.input_size, cfg.input_size)
        example = torch.rand(*input_shape)
        with atomic_open(path, "wb") as handle, torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python-level shape check; the shapes are fixed per preset.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(self, (example,), handle, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["probabilities"],
                              dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
        return Path(path)
