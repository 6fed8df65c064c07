"""Window cross-attention: landmark features ask questions of the image features.

One window per scale covers the whole map (POSTER++: windows 28/14/7 on
28/14/7 maps). Queries are the landmark tokens themselves (no learned Q
projection, as in POSTER++); keys and values come from one Linear(C -> 2C)
of the image tokens. A Swin-style relative position bias is added to the
attention logits.

Reading chosen here: POSTER++ layer-normalises the image tokens only. The
frozen landmark maps come from a network with batch-norm folded into its
convolutions, so their scale is arbitrary; we layer-normalise the queries too
(an elementwise affine, still no projection) so the attention logits start at
the usual 1/sqrt(d) temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grefel.models.layers import DropPath, LayerScale, Mlp


def relative_position_index(window: int) -> torch.Tensor:
    """(W*W, W*W) index into a (2W-1)^2 bias table, as in Swin."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowCrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        kv = self.kv(x).view(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)                                              # (B, h, N, C/h)
        q = q.view(B, N, h, C // h).transpose(1, 2)                      # (B, h, N, C/h)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(N, N, h).permute(2, 0, 1).unsqueeze(0)          # (1, h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttentionBlock(nn.Module):
    """Image tokens + LayerScale(cross-attention(landmark queries)), then + LayerScale(MLP)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, layer_scale: float = 1e-5):
        super().__init__()
        self.norm_image = nn.LayerNorm(dim)
        self.norm_query = nn.LayerNorm(dim)
        self.attn = WindowCrossAttention(dim, num_heads, window)
        self.ls1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale)
        self.drop_path = DropPath(drop_path)

    def forward(self, image: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
        """image, landmark: (B, C, W, W) maps of one scale -> (B, W, W, C) channel-last."""
        B, C, H, W = image.shape
        if (H, W) != (self.attn.window, self.attn.window) or landmark.shape != image.shape:
            raise ValueError(f"cross-attention at window {self.attn.window} got image {tuple(image.shape)} "
                             f"and landmark {tuple(landmark.shape)} maps")
        x = image.flatten(2).transpose(1, 2)                             # (B, N, C)
        q = landmark.flatten(2).transpose(1, 2)                          # (B, N, C)
        x = x + self.drop_path(self.ls1(self.attn(self.norm_image(x), self.norm_query(q))))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x.view(B, H, W, C)
