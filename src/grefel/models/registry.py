"""Named model presets: each family module registers its presets, with the pretrained sources they take.

`grefel.models.factory.create_model` builds them; `list_models()` names them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from grefel.config import from_dict
from grefel.errors import ConfigError

if TYPE_CHECKING:
    from grefel.models.pretrained import PretrainedSource


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[Any, str], nn.Module]   # (config, preset name) -> model
    config_class: type
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    pretrained: dict[str, "PretrainedSource"] = field(default_factory=dict)  # slot -> source


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
