"""Model presets. Importing this package registers them."""

from grefel.models.cnn import PlainCNN, PlainCNNConfig
from grefel.models.face_baseline import FaceBaseline, FaceBaselineConfig
from grefel.models.grefel import GReFEL, GReFELConfig
from grefel.models.grefel_vit import GReFELViT, GReFELViTConfig
from grefel.models.registry import (ModelSpec, create_model, list_models, load_landmark_weights, model_config,
                                    model_spec, register_model)
from grefel.models.reliability import GReFELOutput, ReliabilityHead, kappa

register_model(ModelSpec(
    "grefel_paper", GReFEL, GReFELConfig, {},
    "POSTER++ sizes: 224 input, branches at 112, IR-50 stages 1-3, D=768, windows 28/14/7, K=10",
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
))
register_model(ModelSpec(
    "face_baseline", FaceBaseline, FaceBaselineConfig, {},
    "dlib's face-recognition ResNet (stages 128/256 fine-tuned) + 2x2 pooling + linear: grefel_face's plain baseline",
))
register_model(ModelSpec(
    "grefel_vit", GReFELViT, GReFELViTConfig, {},
    "classic GReFEL scripts: ViT-Base/16 image backbone queried by the landmark maps",
))
register_model(ModelSpec(
    "cnn_baseline", PlainCNN, PlainCNNConfig, {},  # widths 32-256: grefel_vgg's image branch
    "plain VGG-style CNN baseline (no landmarks, no reliability head), for comparison",
))

__all__ = ["FaceBaseline", "FaceBaselineConfig", "GReFEL", "GReFELConfig", "GReFELViT", "GReFELViTConfig", "GReFELOutput", "ModelSpec", "PlainCNN", "PlainCNNConfig",
           "ReliabilityHead", "create_model", "kappa", "list_models", "load_landmark_weights",
           "model_config", "model_spec", "register_model"]
