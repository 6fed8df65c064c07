"""GReFEL losses (method spec, section 3).

L = L_cls + t * (lambda_a * L_anchor + lambda_c * L_center)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grefel.models.reliability import EPS, GReFELOutput


@dataclass
class LossConfig:
    anchor_weight: float = 1.0      # lambda_a
    center_weight: float = 1.0      # lambda_c
    anchor_margin: float = 1.0      # hinge on the mean squared per-dimension gap between anchors of different classes
    label_smoothing: float = 0.0    # mixed into the target before the NLL


def classification_nll(dist: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                       multi_target: bool = False) -> torch.Tensor:
    """Class-weighted NLL of a distribution (not logits).

    `target` is (B, C): one-hot (hard labels) or a probability vector (soft
    FERPlus labels): -sum_c y_c w_c log l_c, normalised by sum_c y_c w_c over
    the batch, which equals `F.nll_loss(weight=w)` for one-hot targets.
    `multi_target` is Microsoft's FERPlus multi-target loss, -log sum_c y_c l_c.
    """
    log_p = dist.clamp_min(EPS).log()                                           # (B, C)
    if multi_target:
        positive = (target > 0.5).to(dist.dtype)
        return -(dist * positive).sum(-1).clamp_min(EPS).log().mean()
    w = target if class_weights is None else target * class_weights              # (B, C)
    return -(w * log_p).sum() / w.sum().clamp_min(EPS)


def anchor_spread_loss(anchors: torch.Tensor, margin: float) -> torch.Tensor:
    """Push anchors of different classes apart, bounded.

    ARBEx uses -mean ||a - a'||^2 / sqrt(D), which is unbounded below: the anchors
    can run away and the loss dominates. We hinge it instead: pairs of different
    classes whose mean squared per-dimension gap ||a - a'||^2 / D exceeds `margin`
    (1.0 = the scale of a layer-normalised embedding) contribute nothing, so the
    loss lies in [0, margin].
    """
    C, K, D = anchors.shape
    flat = anchors.reshape(C * K, D)
    sq = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1) / D               # (CK, CK)
    cls = torch.arange(C, device=anchors.device).repeat_interleave(K)
    other = cls[:, None] != cls[None, :]
    return torch.relu(margin - sq[other]).mean()


def center_loss(out: GReFELOutput, target: torch.Tensor) -> torch.Tensor:
    """c_p (detached) times the distance from e to the nearest anchor of the true class, / sqrt(D).

    With soft targets the distance to each class's nearest anchor is weighted by y_c.
    """
    nearest = out.anchor_distances.min(-1).values                               # (B, C)
    c_p = out.confidence[:, 0].detach()                                          # (B,)
    D = out.embedding.shape[-1]
    return (c_p * (target * nearest).sum(-1)).mean() / D ** 0.5


class GReFELLoss(nn.Module):
    def __init__(self, config: LossConfig | None = None, class_weights: torch.Tensor | None = None,
                 multi_target: bool = False):
        super().__init__()
        self.config = config or LossConfig()
        self.multi_target = multi_target
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, out: GReFELOutput, target: torch.Tensor, anchors: torch.Tensor | None,
                trust: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the total loss and its parts (detached) for logging."""
        cfg = self.config
        # Targets span the 8 canonical classes; a model with fewer keeps the first C (training checks
        # up front that no sample has mass beyond them).
        target = target[..., :out.corrected.shape[-1]]
        if cfg.label_smoothing and not self.multi_target:
            target = (1 - cfg.label_smoothing) * target + cfg.label_smoothing / target.shape[-1]
        cls = classification_nll(out.corrected, target, self.class_weights, self.multi_target)
        parts = {"cls": cls}
        total = cls
        if anchors is not None and out.anchor_distances is not None:
            anchor = anchor_spread_loss(anchors, cfg.anchor_margin)
            center = center_loss(out, target)
            total = total + trust * (cfg.anchor_weight * anchor + cfg.center_weight * center)
            parts.update(anchor=anchor, center=center)
        return total, {k: v.detach() for k, v in parts.items()}
