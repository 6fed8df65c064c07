"""Reliability balancing: the GReFEL head (method spec, section 2).

Notation follows the spec: l_p primary distribution, l_g anchor correction,
l_a attentive correction, kappa(l) = 1 - H(l) / log C the confidence of a
distribution, t the trust ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


def kappa(p: torch.Tensor) -> torch.Tensor:
    """Confidence of distributions over the last dim: 1 for one-hot, 0 for uniform."""
    entropy = -(p * p.clamp_min(EPS).log()).sum(-1)
    return 1.0 - entropy / math.log(p.shape[-1])


@dataclass
class GReFELOutput:
    """Everything training, evaluation and analysis read from one forward pass."""

    logits: torch.Tensor                      # (B, C) primary logits z
    primary: torch.Tensor                     # (B, C) l_p = softmax(z / tau)
    corrected: torch.Tensor                   # (B, C) train: l~ (trust ramp, batch attention); eval: anchors only
    embedding: torch.Tensor | None = None     # (B, D) e
    anchor: torch.Tensor | None = None        # (B, C) l_g
    attentive: torch.Tensor | None = None     # (B, C) l_a, training only
    anchor_distances: torch.Tensor | None = None  # (B, C, K) ||e - a_ij||
    confidence: torch.Tensor | None = None    # (B, 3) c_p, c_g, c_a (c_a = 0 at eval)


class ReliabilityHead(nn.Module):
    """Anchor and attentive corrections of the primary prediction, weighted by confidence.

    Readings chosen here (see the spec): anchors are initialised with small
    random values, not zeros; delta (anchor softmax temperature) and tau
    (primary temperature) are separate. The attentive correction attends
    across the mini-batch, each sample to every sample including itself, so it
    exists only in training; in eval mode the corrected distribution uses the
    anchors alone and never depends on other images in the batch.
    """

    def __init__(self, dim: int, num_classes: int, num_anchors: int = 10, tau: float = 1.0,
                 delta: float = 1.0, attention_heads: int = 1):
        super().__init__()
        if num_classes % attention_heads:
            raise ValueError(f"num_classes {num_classes} is not divisible by attention_heads {attention_heads}")
        self.num_classes, self.num_anchors, self.dim = num_classes, num_anchors, dim
        self.tau, self.delta, self.attention_heads = tau, delta, attention_heads
        self.anchors = nn.Parameter(0.02 * torch.randn(num_classes, num_anchors, dim))  # (C, K, D)
        self.query = nn.Linear(dim, num_classes)
        self.key = nn.Linear(dim, num_classes)
        self.value = nn.Linear(dim, num_classes)
        self.out = nn.Linear(num_classes, num_classes)

    def anchor_correction(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = e.shape[0]
        C, K, D = self.anchors.shape
        # cdist's matmul path loses precision for nearby points; the explicit norm stays exact.
        d = (e[:, None, :] - self.anchors.view(1, C * K, D)).norm(dim=-1)        # (B, C*K)
        s = F.softmax(-d / self.delta, dim=-1)                                      # (B, C*K)
        return s.view(B, C, K).sum(-1), d.view(B, C, K)                             # (B, C), (B, C, K)

    def attentive_correction(self, e: torch.Tensor) -> torch.Tensor:
        B, h = e.shape[0], self.attention_heads
        C = self.num_classes

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, h, C // h).transpose(0, 1).unsqueeze(0)               # (1, h, B, C/h)

        a = F.scaled_dot_product_attention(heads(self.query(e)), heads(self.key(e)), heads(self.value(e)))
        return F.softmax(self.out(a.squeeze(0).transpose(0, 1).reshape(B, C)), dim=-1)  # (B, C)

    def forward(self, e: torch.Tensor, logits: torch.Tensor, trust: float = 1.0) -> GReFELOutput:
        l_p = F.softmax(logits / self.tau, dim=-1)                                  # (B, C)
        c_p = kappa(l_p)
        l_g, dist = self.anchor_correction(e)
        c_g = kappa(l_g)
        if self.training:
            l_a = self.attentive_correction(e)
            c_a = kappa(l_a)
            # EPS in both weights keeps l_c a distribution when both corrections are uniform.
            w_g, w_a = (c_g + EPS)[:, None], (c_a + EPS)[:, None]
            l_c = (w_g * l_g + w_a * l_a) / (w_g + w_a)
        else:
            l_a, c_a, l_c = None, torch.zeros_like(c_g), l_g
        l_f = c_p[:, None] * l_p + (1.0 - c_p[:, None]) * l_c
        corrected = (1.0 - trust) * l_p + trust * l_f if self.training else l_f
        return GReFELOutput(logits=logits, primary=l_p, corrected=corrected, embedding=e, anchor=l_g,
                            attentive=l_a, anchor_distances=dist, confidence=torch.stack([c_p, c_g, c_a], 1))
