"""GReFEL with the POSTER++ feature extractor (method spec, section 1).

Shapes in comments are for the paper preset: input 224, both branches at 112,
D = 768, windows 28/14/7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grefel.models.cross_attention import CrossAttentionBlock
from grefel.models.face_branch import FrozenFaceStages, face_branch
from grefel.models.ir import IRBackbone
from grefel.models.layers import Block, SqueezeExcitation, checkpointed, init_transformer_weights
from grefel.models.mobilefacenet import MobileFaceNet
from grefel.models.pretrained import CNN_IMAGE, FACE, IR50, LANDMARKS
from grefel.models.registry import ModelSpec, register_model
from grefel.models.reliability import GReFELOutput, ReliabilityHead
from grefel.models.vgg import VGGBackbone

LANDMARK_CHANNELS = (64, 128, 512)  # MobileFaceNet maps at strides 4, 8, 16


@dataclass
class GReFELConfig:
    num_classes: int = 8
    in_chans: int = 3                 # 1 (grey) or 3 (RGB); grey is repeated for the landmark branch
    input_size: int = 224             # model input, square, values in [0, 1]
    branch_size: int = 112            # the image branch sees the input resized to this
    landmark_size: int | None = None  # the landmark branch's input size (None: branch_size); its maps
                                      # are resampled to the image maps when the two differ
    mean: float = 0.5                 # image-branch normalisation, done inside the model
    std: float = 0.5
    image_backbone: str = "ir"        # "ir" (POSTER++'s IR stages 1-3, the ir_* sizes), "vgg" (vgg_widths) or
                                      # "dlib" (dlib's face-recognition ResNet, face-pretrained; grefel.models.face_branch)
    ir_stem: int = 64
    ir_widths: tuple[int, int, int] = (64, 128, 256)
    ir_units: tuple[int, int, int] = (3, 4, 14)
    vgg_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    face_size: int = 150              # "dlib": its input size (what dlib was trained on)
    face_frozen_stages: int = 2       # "dlib": stem and stages 32 and 64 frozen (cached); stages 128 and 256 fine-tuned
    cross_heads: tuple[int, int, int] = (2, 4, 8)
    cross_mlp_ratio: float = 4.0
    cross_drop_path: tuple[float, float, float] = (0.0, 0.125, 0.25)
    layer_scale: float = 1e-5
    landmark_tokens: bool = False     # also give the fusion ViT the landmark maps themselves as tokens (see GReFEL)
    landmark_branch: bool = True      # False (ablation): no geometry; the image maps query themselves
    reliability: bool = True          # False (ablation): the primary head alone, no anchors or corrections
    embed_dim: int = 768
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    drop_path: float = 0.0            # fusion ViT stochastic depth (max, linear over blocks)
    dropout: float = 0.5              # primary head
    num_anchors: int = 10
    tau: float = 1.0
    delta: float = 1.0
    attention_heads: int = 1
    # Activation checkpointing (training memory for compute; outputs, gradients and BN statistics unchanged):
    checkpoint_ir_stage1: bool = False  # IR input layer + stage 1, recomputed in backward
    checkpoint_fusion: bool = False     # each cross-attention block and fusion ViT block, recomputed in backward

    @property
    def windows(self) -> tuple[int, int, int]:
        return (self.branch_size // 4, self.branch_size // 8, self.branch_size // 16)


def primary_head(dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """MLP D -> D/2 -> D/4 -> D/8 -> C; each hidden layer Linear, ReLU, BatchNorm1d, Dropout."""
    layers: list[nn.Module] = []
    width = dim
    for _ in range(3):
        layers += [nn.Linear(width, width // 2), nn.ReLU(inplace=True), nn.BatchNorm1d(width // 2), nn.Dropout(dropout)]
        width //= 2
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def resample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize square maps to `size`. Whole-factor shrinking averages (anti-aliased, exact in ONNX);
    anything else is bilinear, since ONNX has no anti-aliased or fractional adaptive pooling."""
    current = x.shape[-1]
    if current == size:
        return x
    if current > size and current % size == 0:
        return F.avg_pool2d(x, current // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class FrozenLandmarks(nn.Module):
    """The MobileFaceNet landmark branch: no gradients, always in eval mode."""

    def __init__(self):
        super().__init__()
        self.net = MobileFaceNet()
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "FrozenLandmarks":
        # model.train() must not switch the frozen network's BN layers to batch statistics.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.features(x)


class InputSpec(nn.Module):
    """Checks the input contract and turns it into each branch's input."""

    def __init__(self, preset: str, in_chans: int, input_size: int, mean: float, std: float):
        super().__init__()
        self.preset, self.in_chans, self.input_size = preset, in_chans, input_size
        self.mean, self.std = mean, std

    def check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != (self.input_size,) * 2:
            raise ValueError(f"{self.preset} expects input of shape (B, {self.in_chans}, {self.input_size}, "
                             f"{self.input_size}) with values in [0, 1], got {tuple(x.shape)}")

    def resize(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return resample(x, size).contiguous(memory_format=torch.channels_last)

    def landmark_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # RGB in [0, 1]

    def image_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GReFELBase(nn.Module):
    """What every GReFEL preset shares after its feature extractor: the squeeze-excitation gate giving
    the embedding e, the primary MLP head and the reliability head (None when `cfg.reliability` is off,
    an ablation: the primary prediction is then also the corrected one). Subclasses call `build_heads`
    and define `forward_features(x, ...) -> e`."""

    def build_heads(self, dim: int, cfg) -> None:
        self.se = SqueezeExcitation(dim)
        self.head = primary_head(dim, cfg.num_classes, cfg.dropout)
        self.reliability = ReliabilityHead(dim, cfg.num_classes, cfg.num_anchors, cfg.tau, cfg.delta,
                                           cfg.attention_heads) if getattr(cfg, "reliability", True) else None

    def forward(self, x: torch.Tensor, trust: float = 1.0, **features) -> GReFELOutput:
        e = self.forward_features(x, **features)
        logits = self.head(e)
        if self.reliability is None:
            p = F.softmax(logits / self.config.tau, -1)
            return GReFELOutput(logits=logits, primary=p, corrected=p, embedding=e)
        return self.reliability(e, logits, trust)

    def feature_extractor_parameters(self) -> int:
        """Parameters of everything before the heads (what POSTER++'s 43.7 M counts)."""
        heads = {id(p) for m in (self.head, self.reliability) if m is not None for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in heads)


class GReFEL(GReFELBase):
    def __init__(self, config: GReFELConfig, preset: str = "grefel"):
        super().__init__()
        self.config, self.preset = config, preset
        cfg = config
        if cfg.branch_size % 16:
            raise ValueError(f"branch_size must be a multiple of 16, got {cfg.branch_size}")
        D = cfg.embed_dim
        self.input_spec = InputSpec(preset, cfg.in_chans, cfg.input_size, cfg.mean, cfg.std)
        self.landmarks = FrozenLandmarks() if cfg.landmark_branch else None
        self.face: FrozenFaceStages | None = None
        if cfg.image_backbone == "ir":
            widths = tuple(cfg.ir_widths)
            self.image_backbone: nn.Module = IRBackbone(cfg.in_chans, cfg.ir_stem, widths, cfg.ir_units,
                                                        checkpoint_first_stage=cfg.checkpoint_ir_stage1)
            # IR maps come out at strides 2/4/8; a stride-2 conv per scale meets the landmark maps at 4/8/16.
            self.image_downsample = nn.ModuleList(nn.Conv2d(w, w, 3, 2, 1) for w in widths)
        elif cfg.image_backbone == "vgg":
            widths = tuple(cfg.vgg_widths[1:])
            self.image_backbone = VGGBackbone(cfg.in_chans, cfg.vgg_widths)      # maps already at 4/8/16
            self.image_downsample = nn.ModuleList(nn.Identity() for _ in widths)
        elif cfg.image_backbone == "dlib":
            # The last frozen dlib map and the maps of the two fine-tuned stages after it (64x17x17, 128x8x8,
            # 256x4x4 at 150 px), resampled to the windows; the frozen part lives outside `image_backbone`
            # so `optim.image_lr_scale` and the parameter count see the trainable stages only.
            self.face, self.image_backbone = face_branch(cfg.face_frozen_stages, trainable_stages=2)
            widths = self.image_backbone.widths
            self.image_downsample = nn.ModuleList(nn.Identity() for _ in widths)
        else:
            raise ValueError(f"image_backbone must be 'ir', 'vgg' or 'dlib', got {cfg.image_backbone!r}")
        if cfg.checkpoint_ir_stage1 and cfg.image_backbone != "ir":
            raise ValueError(f"checkpoint_ir_stage1 applies to the IR image branch; {preset} has {cfg.image_backbone!r}")
        # The 512-channel deepest landmark map gets the paper's trainable 3x3 conv; shallower maps
        # need a 1x1 projection only when a light preset narrows the image widths.
        self.landmark_proj = nn.ModuleList([
            nn.Identity() if LANDMARK_CHANNELS[0] == widths[0] else nn.Conv2d(LANDMARK_CHANNELS[0], widths[0], 1),
            nn.Identity() if LANDMARK_CHANNELS[1] == widths[1] else nn.Conv2d(LANDMARK_CHANNELS[1], widths[1], 1),
            nn.Conv2d(LANDMARK_CHANNELS[2], widths[2], 3, 1, 1),
        ]) if cfg.landmark_branch else None
        self.cross_blocks = nn.ModuleList(
            CrossAttentionBlock(w, h, win, cfg.cross_mlp_ratio, dp, cfg.layer_scale)
            for w, h, win, dp in zip(widths, cfg.cross_heads, cfg.windows, cfg.cross_drop_path))
        self.to_tokens = nn.ModuleList([
            nn.Sequential(nn.Conv2d(widths[0], D, 3, 2, 1), nn.Conv2d(D, D, 3, 2, 1)),
            nn.Conv2d(widths[1], D, 3, 2, 1),
            nn.Conv2d(widths[2], D, 1),
        ])
        num_tokens = 3 * cfg.windows[2] ** 2
        # In POSTER++ the landmark maps only steer attention over image tokens (they are the queries; the
        # residual stream is the image's), so their pretrained content reaches the classifier only through
        # attention weights. That suits an image branch pretrained on faces; ours trains from scratch, so
        # `landmark_tokens` adds the landmark maps, pooled to the token grid, as tokens of their own.
        use_tokens = cfg.landmark_tokens and cfg.landmark_branch
        self.landmark_tokens = nn.ModuleList(nn.Conv2d(c, D, 1) for c in LANDMARK_CHANNELS) if use_tokens else None
        if use_tokens:
            num_tokens *= 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, D))
        self.blocks = nn.Sequential(*[
            Block(D, cfg.num_heads, cfg.mlp_ratio, drop_path=cfg.drop_path * i / max(cfg.depth - 1, 1))
            for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.build_heads(D, cfg)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.blocks)

    def frozen_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the frozen parts: the landmark maps at the window sizes (64xW1xW1, 128xW2xW2,
        512xW3xW3) and, with the dlib branch, its last frozen map.

        A pure function of the (un-augmented) input, so training may compute it once per
        image and reuse it across epochs (grefel.engine.frozen_cache).
        """
        self.input_spec.check(x)
        return self._frozen_maps(x)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.landmarks, self.face) if m is not None]

    def _frozen_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        cfg, maps = self.config, []
        if self.landmarks is not None:
            xl = self.input_spec.resize(x, cfg.landmark_size or cfg.branch_size)
            lm = self.landmarks(self.input_spec.landmark_input(xl))             # 64x28x28, 128x14x14, 512x7x7
            maps += [resample(f, w) for f, w in zip(lm, cfg.windows)]
        if self.face is not None:
            maps.append(self.face(self.input_spec.landmark_input(self.input_spec.resize(x, cfg.face_size))))
        return maps

    def forward_features(self, x: torch.Tensor, frozen_maps: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, in_chans, S, S) in [0, 1] -> embedding e (B, D).

        `frozen_maps`, when given, replace the frozen parts' output (precomputed, see frozen_cache).
        """
        self.input_spec.check(x)
        cfg = self.config
        frozen = self._frozen_maps(x) if frozen_maps is None else frozen_maps
        lm = frozen[:3] if self.landmarks is not None else None
        if self.face is not None:
            img = [resample(f, w) for f, w in zip(self.image_backbone(frozen[-1]), cfg.windows)]  # 64x16x16, ...
        else:
            xi = self.input_spec.resize(x, cfg.branch_size)                     # (B, c, 112, 112)
            img = self.image_backbone(self.input_spec.image_input(xi))          # IR: 64x56x56, 128x28x28, 256x14x14
        tokens = []
        for i, (down, cross, embed, fi) in enumerate(zip(self.image_downsample, self.cross_blocks, self.to_tokens, img)):
            fi = down(fi)
            # Without the landmark branch (ablation) the image maps query themselves: same blocks, no geometry.
            query = self.landmark_proj[i](lm[i]) if lm is not None else fi
            y = checkpointed(cross, fi, query) if cfg.checkpoint_fusion else cross(fi, query)  # (B, W, W, C)
            tokens.append(embed(y.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2))  # (B, 49, D)
        if self.landmark_tokens is not None:
            grid = cfg.windows[2]
            tokens += [conv(resample(fl, grid)).flatten(2).transpose(1, 2)          # (B, 49, D)
                       for conv, fl in zip(self.landmark_tokens, lm)]
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1)] + tokens, 1) + self.pos_embed  # (B, 148, D)
        for block in self.blocks:
            t = checkpointed(block, t) if cfg.checkpoint_fusion else block(t)    # (B, 148, D)
        t = self.norm(t)
        return self.se(t[:, 0])                                                 # (B, D)


register_model(ModelSpec(
    "grefel_paper", GReFEL, GReFELConfig, {},
    "POSTER++ sizes: 224 input, branches at 112, IR-50 stages 1-3, D=768, windows 28/14/7, K=10",
    pretrained={"landmarks": LANDMARKS, "ir50": IR50},
))

register_model(ModelSpec(
    "grefel_small", GReFEL, GReFELConfig,
    # Sized for two CPU cores (see the README's grefel_small notes for the measurements behind it):
    # the image branch at FERPlus's native 48 px, the frozen landmark branch at its trained 112 px
    # (pooled-feature probe on FERPlus valid: 79.1% at 112, 76.5% at 80, 71.3% at 64), windows 12/6/3.
    # landmark_tokens: with an image branch trained from scratch, the landmark maps' own content must reach
    # the classifier (300 steps on FERPlus train: 63% valid with it, 35% without).
    dict(input_size=48, branch_size=48, landmark_size=112, ir_stem=32, ir_widths=(32, 64, 128),
         ir_units=(1, 2, 2), cross_heads=(1, 2, 4), embed_dim=192, num_heads=4, layer_scale=0.1,
         landmark_tokens=True, dropout=0.2),
    "CPU-trainable GReFEL: same structure, 48 px image branch, landmarks at 112, light IR, D=192",
    pretrained={"landmarks": LANDMARKS, "ir50": IR50},
))

register_model(ModelSpec(
    "grefel_vgg", GReFEL, GReFELConfig,
    # grefel_small's fusion, windows and heads with a stronger image branch: the VGG stack of cnn_baseline
    # (widths 32-256), whose maps after blocks 2-4 meet the landmark maps at 12/6/3 with no extra
    # downsampling. grefel_small's light IR branch underfits FERPlus (train accuracy 75.7% below valid 80.9%
    # after 15 epochs), while a plain 4-block CNN at 48 px was measured at 85.6% on FERPlus valid (issue 5).
    dict(input_size=48, branch_size=48, landmark_size=112, image_backbone="vgg", vgg_widths=(32, 64, 128, 256),
         cross_heads=(1, 2, 4), embed_dim=192, num_heads=4, layer_scale=0.1, landmark_tokens=True, dropout=0.2),
    "CPU-trainable GReFEL with the VGG image branch of cnn_baseline (48 px), landmarks at 112, D=192",
    pretrained={"landmarks": LANDMARKS, "cnn_image": CNN_IMAGE},
))

register_model(ModelSpec(
    "grefel_face", GReFEL, GReFELConfig,
    # GReFEL with a face-pretrained image branch, as the paper's IR-50: dlib's face-recognition ResNet (trained
    # on ~3 M faces) at 150 px, stem and stages 32/64 frozen (cached per image), stages 128 and 256 fine-tuned;
    # its 64x17x17, 128x8x8 and 256x4x4 maps meet the landmark maps in windows of 16/8/4 (branch_size 64).
    dict(input_size=48, branch_size=64, landmark_size=112, image_backbone="dlib", face_size=150,
         face_frozen_stages=2, cross_heads=(2, 4, 8), embed_dim=192, num_heads=4, layer_scale=0.1,
         landmark_tokens=True, dropout=0.2),
    "GReFEL with dlib's face-recognition ResNet as its image branch (150 px, stages 128/256 fine-tuned), D=192",
    pretrained={"landmarks": LANDMARKS, "face": FACE},
))
