"""Model presets. Importing this package registers them (each family module registers its own)."""

from grefel.models.cnn import PlainCNN, PlainCNNConfig, PlainCNNEnsemble, PlainCNNEnsembleConfig
from grefel.models.face_baseline import FaceBaseline, FaceBaselineConfig
from grefel.models.factory import build_from_checkpoint, create_model, ensemble_from_checkpoints, ensemble_member
from grefel.models.grefel import GReFEL, GReFELConfig
from grefel.models.grefel_vit import GReFELViT, GReFELViTConfig
from grefel.models.registry import ModelSpec, list_models, model_config, model_spec, register_model
from grefel.models.reliability import GReFELOutput, ReliabilityHead, kappa

__all__ = ["FaceBaseline", "FaceBaselineConfig", "GReFEL", "GReFELConfig", "GReFELOutput", "GReFELViT",
           "GReFELViTConfig", "ModelSpec", "PlainCNN", "PlainCNNConfig", "PlainCNNEnsemble", "PlainCNNEnsembleConfig",
           "ReliabilityHead", "build_from_checkpoint", "create_model", "ensemble_from_checkpoints", "ensemble_member", "kappa", "list_models", "model_config", "model_spec", "register_model"]
