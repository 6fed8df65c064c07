"""GReFEL-ViT: the variant of the classic GReFEL scripts.

A plain ViT (timm key layout, so a timm / DeiT ViT state_dict loads by name)
encodes the image; the frozen landmark maps, brought to the patch grid, query
its patch tokens through one cross-attention block; the pooled result feeds
the same SE gate, primary head and reliability head as the POSTER++ preset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grefel.errors import WeightsError
from grefel.models.cross_attention import CrossAttentionBlock
from grefel.models.grefel import LANDMARK_CHANNELS, FrozenLandmarks, GReFELBase, InputSpec, resample
from grefel.models.layers import Block, init_transformer_weights
from grefel.models.pretrained import LANDMARKS, VIT
from grefel.models.registry import ModelSpec, register_model


@dataclass
class GReFELViTConfig:
    num_classes: int = 8
    in_chans: int = 3
    input_size: int = 224
    landmark_size: int = 112
    mean: float = 0.5
    std: float = 0.5
    patch_size: int = 16
    embed_dim: int = 768              # ViT-Base
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    cross_heads: int = 12
    layer_scale: float = 1e-5
    dropout: float = 0.5
    num_anchors: int = 10
    tau: float = 1.0
    delta: float = 1.0
    attention_heads: int = 1

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)                          # (B, N, D)


class GReFELViT(GReFELBase):
    def __init__(self, config: GReFELViTConfig, preset: str = "grefel_vit"):
        super().__init__()
        self.config, self.preset = config, preset
        cfg = config
        if cfg.input_size % cfg.patch_size or cfg.landmark_size % 16:
            raise ValueError("input_size must be a multiple of patch_size and landmark_size of 16")
        D, G = cfg.embed_dim, cfg.grid
        self.input_spec = InputSpec(preset, cfg.in_chans, cfg.input_size, cfg.mean, cfg.std)
        self.landmarks = FrozenLandmarks()
        self.patch_embed = PatchEmbed(cfg.in_chans, D, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, G * G + 1, D))
        self.blocks = nn.Sequential(*[
            Block(D, cfg.num_heads, cfg.mlp_ratio, drop_path=cfg.drop_path * i / max(cfg.depth - 1, 1))
            for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        # The three landmark maps, resampled to the patch grid and concatenated, become the queries.
        self.landmark_proj = nn.Conv2d(sum(LANDMARK_CHANNELS), D, 1)
        self.cross = CrossAttentionBlock(D, cfg.cross_heads, G, layer_scale=cfg.layer_scale)
        self.fusion_norm = nn.LayerNorm(D, eps=1e-6)
        self.build_heads(D, cfg)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.blocks)

    def landmark_queries(self, x: torch.Tensor) -> torch.Tensor:
        G = self.config.grid
        lm = self.landmarks(self.input_spec.landmark_input(self.input_spec.resize(x, self.config.landmark_size)))
        return self.landmark_proj(torch.cat([resample(f, G) for f in lm], 1))                            # (B, D, G, G)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.input_spec.check(x)
        B, G, D = x.shape[0], self.config.grid, self.config.embed_dim
        t = self.patch_embed(self.input_spec.image_input(x))                      # (B, G*G, D)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], 1) + self.pos_embed  # (B, G*G+1, D)
        t = self.norm(self.blocks(t))
        patches = t[:, 1:].transpose(1, 2).reshape(B, D, G, G)                    # (B, D, G, G)
        y = self.cross(patches, self.landmark_queries(x))                         # (B, G, G, D)
        return self.se(self.fusion_norm(y.flatten(1, 2).mean(1)))                 # (B, D)

    def load_vit(self, state: dict[str, torch.Tensor]) -> dict:
        """Load a timm-layout ViT state_dict into the image backbone; returns counts.

        Classifier keys (`head.*`, `fc_norm.*`) are skipped; the position embedding
        is resized bicubically when the grid differs. Any backbone tensor left
        missing or of the wrong shape is an error.
        """
        prefixes = ("patch_embed.", "blocks.", "norm.", "cls_token", "pos_embed")
        own = self.state_dict()
        loaded, skipped, problems = {}, 0, []
        for key, value in state.items():
            key = key.removeprefix("module.")
            if not key.startswith(prefixes):
                skipped += 1
                continue
            if key == "pos_embed" and value.shape != own[key].shape:
                value = _resize_pos_embed(value, self.config.grid)
            if key == "patch_embed.proj.weight" and value.shape[1] != own[key].shape[1]:
                value = value.sum(1, keepdim=True) if own[key].shape[1] == 1 else value
            if key not in own or own[key].shape != value.shape:
                problems.append(f"{key} {tuple(value.shape)}")
                continue
            loaded[key] = value
        expected = [k for k in own if k.startswith(prefixes)]
        missing = [k for k in expected if k not in loaded]
        if problems or missing:
            raise WeightsError(f"ViT weights do not fit {self.preset}: "
                               f"missing {len(missing)} (first: {', '.join(missing[:3])}); "
                               f"unexpected or wrong shape {len(problems)} (first: {'; '.join(problems[:3])})")
        self.load_state_dict(loaded, strict=False)
        return {"loaded": len(loaded), "skipped": skipped}


def _resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    cls, patches = pos[:, :1], pos[:, 1:]
    old = int(patches.shape[1] ** 0.5)
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)


register_model(ModelSpec(
    "grefel_vit", GReFELViT, GReFELViTConfig, {},
    "classic GReFEL scripts: ViT-Base/16 image backbone queried by the landmark maps",
    pretrained={"landmarks": LANDMARKS, "vit": VIT},
))
