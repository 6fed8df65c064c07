"""`create_model`: the one way to get a model, from a preset name, its pretrained sources or a model file.

    create_model("grefel_face")                          # shipped pretrained parts (landmarks, dlib branch)
    create_model("grefel_paper", pretrained={"ir50": "ir50.pth"})
    create_model(checkpoint="runs/x/checkpoints/best.safetensors")   # a trained model, eval mode
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from grefel.config import to_dict
from grefel.errors import ConfigError
from grefel.models.model_file import checkpoint_paths, load_strict, read_model_checkpoint
from grefel.models.pretrained import apply_pretrained
from grefel.models.registry import model_config, model_spec


def _build(name: str, overrides: dict[str, Any]) -> nn.Module:
    spec = model_spec(name)
    config = model_config(name, **overrides)
    try:
        return spec.build(config, name)
    except (ValueError, RuntimeError) as exc:  # sizes the layers cannot take: negative, not divisible, ...
        raise ConfigError(f"model {name}: cannot be built with this configuration ({str(exc).splitlines()[0]})") from None


def build_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The model a model file describes, with its weights (strict), in eval mode, and the file's info:
    the file is read once."""
    tensors, info = read_model_checkpoint(path)
    try:
        model = _build(info["preset"], info["model"])
    except ConfigError as exc:  # e.g. sizes the layers cannot take
        raise ConfigError(f"{checkpoint_paths(path).with_suffix('.json')}: {exc}") from None
    load_strict(model, tensors, checkpoint_paths(path).with_suffix(".safetensors"))
    return model.eval(), info


# What members of one ensemble must share: same network, same labels, same input contract, same serving.
_ENSEMBLE_SHARED = ("model", "class_names", "input", "preprocessing", "serve", "tta_flip")


def _contract(info: dict[str, Any], key: str) -> Any:
    """`info[key]` as members must share it: the preprocessing's prose `alignment` description is left out
    (older files name the template's previous module); its numbers (`align_template`, sizes) are compared."""
    value = info.get(key)
    return {k: v for k, v in value.items() if k != "alignment"} if key == "preprocessing" and value else value


def ensemble_from_checkpoints(paths: Sequence[str | os.PathLike], preset: str = "cnn_ensemble"
                              ) -> tuple[nn.Module, dict[str, Any]]:
    """An ensemble preset built from trained model files of its member preset (one file per member,
    weights loaded strictly) and the info of its model file: the members' shared inference contract,
    temperature 1 and no logit adjustment (fit both with `grefel calibrate`), the members' provenance."""
    spec = model_spec(preset)
    member_preset = getattr(spec.build, "member_preset", None)
    if member_preset is None:
        raise ConfigError(f"model {preset}: not an ensemble preset")
    if len(paths) < 2:
        raise ConfigError(f"an ensemble needs at least two model files, got {len(paths)}")
    read = [read_model_checkpoint(p) for p in paths]
    first = read[0][1]
    for path, (_, info) in zip(paths, read):
        if info["preset"] != member_preset:
            raise ConfigError(f"{path}: a {info['preset']} model file; {preset} averages {member_preset} models")
        differs = next((k for k in _ENSEMBLE_SHARED if _contract(info, k) != _contract(first, k)), None)
        if differs:
            raise ConfigError(f"{path}: its {differs!r} differs from {paths[0]}'s; ensemble members must share it")
    model = _build(preset, {**first["model"], "members": len(paths)})
    for member, path, (tensors, _) in zip(model.members, paths, read):
        load_strict(member, tensors, path)
    info = {k: first[k] for k in _ENSEMBLE_SHARED if k in first}
    info.update(preset=preset, model=to_dict(model.config), temperature=1.0,
                training={"data": first.get("training", {}).get("data", {})},
                ensemble=[{"path": str(path), "weights_sha256": i.get("weights_sha256"),
                           "training": i.get("training"), "metrics": i.get("metrics")} for path, (_, i) in zip(paths, read)])
    return model.eval(), info


def ensemble_member(path: str | os.PathLike, index: int) -> tuple[nn.Module, dict[str, Any]]:
    """Member `index` (from 1) of an ensemble model file as a model of its own, and the info of its model
    file: the ensemble's inference contract, the member's provenance, temperature 1 and no logit adjustment
    (calibrate it). The inverse of `ensemble_from_checkpoints`, weights and all (a re-fitted head included)."""
    model, info = build_from_checkpoint(path)
    members = getattr(model, "members", None)
    if members is None:
        raise ConfigError(f"{path}: a {info['preset']} model file, not an ensemble")
    if not 1 <= index <= len(members):
        raise ConfigError(f"member {index}: {path} has members 1 to {len(members)}")
    member = members[index - 1]
    record = (info.get("ensemble") or [{}] * len(members))[index - 1]
    member_info = {k: info[k] for k in _ENSEMBLE_SHARED if k in info}
    member_info.update(preset=model.member_preset, model=to_dict(member.config), temperature=1.0,
                       training={**(record.get("training") or {}), "data": info.get("training", {}).get("data", {})},
                       member_of={"path": str(path), "weights_sha256": info.get("weights_sha256"), "member": index,
                                  "of": len(members)})
    return member.eval(), member_info


def create_model(name: str | None = None, *, pretrained: bool | Mapping[str, str | Path | None] = True,
                 checkpoint: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                 **overrides: Any) -> nn.Module:
    """Build preset `name` with `overrides` of its config.

    `pretrained`: True fills every part that has a shipped default (the frozen landmark network, the dlib
    face branch); False leaves all as initialised; a mapping {slot: file} fills those slots from those
    files (see grefel.models.pretrained). `checkpoint`: a model file; without `name` the model it
    describes is returned as saved (eval mode); with `name` that preset is built with `overrides` and
    the file's weights are loaded into it strictly (it must be a file of the same preset and classes),
    e.g. to start a run from a trained model.
    """
    if checkpoint is not None:
        if name is None:
            return build_from_checkpoint(checkpoint)[0]
        tensors, info = read_model_checkpoint(checkpoint)
        model = _build(name, overrides)
        classes = model.config.num_classes
        if info["preset"] != name or info["model"].get("num_classes") != classes:
            raise ConfigError(f"{checkpoint}: a {info['preset']} checkpoint with {info['model'].get('num_classes')} "
                              f"classes cannot start a {name} run with {classes} classes")
        load_strict(model, tensors, checkpoint)
        return model
    if name is None:
        raise ConfigError("create_model needs a preset name or a checkpoint")
    model = _build(name, overrides)
    apply_pretrained(name, model, model_spec(name).pretrained, pretrained, log)
    return model
