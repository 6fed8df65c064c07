"""Named model presets: `create_model("grefel_small")`, `list_models()`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from torch import nn

from grefel.config import from_dict
from grefel.errors import ConfigError, WeightsError
from grefel.fileio import load_state_dict
from grefel.models.dlib_resnet import DLIB_WEIGHTS, DlibResNet
from grefel.models.face_branch import load_face_branch


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[Any, str], nn.Module]   # (config, preset name) -> model
    config_class: type
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"model preset {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_config(name: str, **overrides: Any) -> Any:
    """The preset's config dataclass with `overrides` applied (checked like YAML input)."""
    spec = model_spec(name)
    base = dataclasses.asdict(spec.config_class(**spec.defaults))
    return from_dict(spec.config_class, {**base, **overrides}, where=f"model {name}")


def shipped_weights(name: str) -> Path:
    return Path(str(resources.files("grefel") / "weights" / name))


def shipped_landmark_weights() -> Path:
    return shipped_weights("mobilefacenet_landmark68.safetensors")


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """dlib's face-recognition ResNet with the shipped converted weights (or `path`), float32."""
    path = shipped_weights(DLIB_WEIGHTS) if path is None else path
    net = DlibResNet()
    state = {k: v.float() for k, v in load_state_dict(path).items()}
    own = net.state_dict()
    if sorted(state) != sorted(own) or any(state[k].shape != own[k].shape for k in own):
        raise WeightsError(f"{path}: not a state_dict of dlib's face-recognition ResNet")
    net.load_state_dict(state, strict=True)
    return net


def load_landmark_weights(model: nn.Module, path: str | Path) -> None:
    """Load the 68-point MobileFaceNet into `model.landmarks.net` strictly (all 333 tensors)."""
    state = load_state_dict(path)
    net = model.landmarks.net
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise WeightsError(f"{path}: not a MobileFaceNet landmark state_dict: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def create_model(name: str, *, landmark_weights: str | Path | None = "shipped",
                 face_weights: str | Path | None = "shipped", **overrides: Any) -> nn.Module:
    """Build preset `name`. A frozen landmark branch, where the preset has one, loads the shipped 68-point weights
    unless `landmark_weights` names another file, or is None (left random, e.g. before
    loading a full checkpoint that contains them); a dlib face branch likewise loads the shipped
    conversion of dlib's face-recognition ResNet unless `face_weights` says otherwise."""
    spec = model_spec(name)
    config = model_config(name, **overrides)
    try:
        model = spec.build(config, name)
    except (ValueError, RuntimeError) as exc:  # sizes the layers cannot take: negative, not divisible, ...
        raise ConfigError(f"model {name}: cannot be built with this configuration ({str(exc).splitlines()[0]})") from None
    if landmark_weights is not None and getattr(model, "landmarks", None) is not None:
        load_landmark_weights(model, shipped_landmark_weights() if landmark_weights == "shipped" else landmark_weights)
    if face_weights is not None and getattr(model, "face", None) is not None:
        path = shipped_weights(DLIB_WEIGHTS) if face_weights == "shipped" else face_weights
        load_face_branch(model.face, model.image_backbone, load_state_dict(path), str(path))
    return model
