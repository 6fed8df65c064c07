"""Model files: a model's weights and everything inference needs to use them, read and written here only.

`X.safetensors` holds the state_dict; `X.json` the inference contract (preset
and its config, class names, input size and channels, preprocessing, served
prediction, temperature, test-time flip) and how the weights were made
(command, data, metrics). The shipped FERPlus model is one
(`grefel/weights/grefel_ferplus.*`), and so is every `best.*` a training run
writes. Training states (optimizer, EMA, RNG; `grefel.training.state`) are
another format that only training reads.

`read_model_checkpoint` reads and checks a file once; `grefel.models.factory`
builds the model from what it returns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grefel.calibration import T_MAX, T_MIN
from grefel.errors import ConfigError, WeightsError
from grefel.fileio import atomic_write_json, read_pair, write_pair
from grefel.labels import CANONICAL_CLASSES
from grefel.models.registry import list_models, model_spec

CHECKPOINT_FORMAT = "grefel-checkpoint/1"
SERVE_CHOICES = ("primary", "corrected")
SHIPPED_NAME = "grefel_ferplus"


def save_model_checkpoint(stem: Path, model: nn.Module, info: dict[str, Any]) -> None:
    """`stem`.safetensors (state_dict) + `stem`.json (inference contract and provenance)."""
    write_pair(stem, model.state_dict(), {"format": CHECKPOINT_FORMAT, **info})


def checkpoint_paths(path: str | os.PathLike) -> Path:
    """Accept X.safetensors, X.json or the stem X; return the stem."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def read_model_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and validated info of a model file, read once; nothing is built yet."""
    stem = checkpoint_paths(path)
    if not stem.with_suffix(".safetensors").is_file():
        raise WeightsError(f"{stem.with_suffix('.safetensors')}: checkpoint not found")
    tensors, info = read_pair(stem)
    validate_checkpoint_info(info, stem.with_suffix(".json"))
    return tensors, info


def read_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The validated JSON of a model file alone, for users of an exported copy (ONNX) of its weights."""
    where = checkpoint_paths(path).with_suffix(".json")
    try:
        info = json.loads(where.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{where}: not found") from None
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{where}: expected a JSON object")
    validate_checkpoint_info(info, where)
    return info


def validate_checkpoint_info(info: dict[str, Any], where: Path) -> None:
    if info.get("format") != CHECKPOINT_FORMAT:
        if {"info_sha256", "step", "config"} <= info.keys():   # grefel.training.state's last.* / prev.*
            raise ConfigError(f"{where}: a training state (what `grefel train --resume` continues from), not a "
                              f"model file; use the model its run selected: {where.with_name('best.safetensors')}")
        raise ConfigError(f"{where}: format {info.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    required = {"preset": str, "model": dict, "class_names": list, "serve": str, "temperature": (int, float),
                "input": dict, "preprocessing": dict}
    for key, kind in required.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise ConfigError(f"{where}: field {key!r} missing or of the wrong type")
    if info["preset"] not in list_models():
        raise ConfigError(f"{where}: unknown preset {info['preset']!r}; available: {', '.join(list_models())}")
    fields = {f.name for f in dataclasses.fields(model_spec(info["preset"]).config_class)}
    unknown = [k for k in info["model"] if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: model has unknown key {unknown[0]!r} for preset {info['preset']}")
    size, channels = info["input"].get("size"), info["input"].get("channels")
    if type(size) is not int or size != info["model"].get("input_size", size) or channels not in (1, 3):
        raise ConfigError(f"{where}: input {info['input']} does not give the model's input size and channels (1 or 3)")
    crop, color = info["preprocessing"].get("crop_size"), info["preprocessing"].get("color")
    if type(crop) is not int or crop < 1 or color not in ("grey", "rgb"):
        raise ConfigError(f"{where}: preprocessing needs crop_size (pixels) and color (grey or rgb)")
    if info["class_names"] != list(CANONICAL_CLASSES[:len(info["class_names"])]) or \
            len(info["class_names"]) != info["model"].get("num_classes"):
        raise ConfigError(f"{where}: class_names {info['class_names']} do not match the canonical order "
                          f"and the model's num_classes")
    if info["serve"] not in SERVE_CHOICES:
        raise ConfigError(f"{where}: serve {info['serve']!r}, expected one of {', '.join(SERVE_CHOICES)}")
    try:
        temperature = float(info["temperature"])
    except OverflowError:  # a JSON integer beyond float range
        temperature = math.inf
    if not T_MIN <= temperature <= T_MAX:
        raise ConfigError(f"{where}: temperature {info['temperature']} outside [{T_MIN:g}, {T_MAX:g}]")
    _check_logit_adjustment(info, where)


def log_prior(class_counts: list[float]) -> list[float]:
    """log of the training class prior, each count +1 so that a class never seen stays finite."""
    counts = [float(c) + 1.0 for c in class_counts]
    total = sum(counts)
    return [math.log(c / total) for c in counts]


def logit_shift(info: dict[str, Any]) -> list[float] | None:
    """What the served logits lose before the temperature: tau * log(training class prior) (logit adjustment,
    Menon et al. 2021), from the file's `logit_adjustment` {"tau", "train_class_counts"}; None without one.
    tau 0 serves the model as trained; tau 1 undoes the prior, as if every class had been as frequent."""
    adjustment = info.get("logit_adjustment")
    if adjustment is None:
        return None
    return [float(adjustment["tau"]) * p for p in log_prior(adjustment["train_class_counts"])]


def _check_logit_adjustment(info: dict[str, Any], where: Path) -> None:
    adjustment = info.get("logit_adjustment")
    if adjustment is None:
        return
    tau = adjustment.get("tau") if isinstance(adjustment, dict) else None
    counts = adjustment.get("train_class_counts") if isinstance(adjustment, dict) else None
    if type(tau) not in (int, float) or not 0 <= tau <= 2:
        raise ConfigError(f"{where}: logit_adjustment.tau {tau!r}: expected a number in [0, 2]")
    if not isinstance(counts, list) or len(counts) != len(info["class_names"]) or \
            not all(type(c) in (int, float) and 0 <= c < 1e12 for c in counts):
        raise ConfigError(f"{where}: logit_adjustment.train_class_counts: expected a count per class")


def load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path | str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(keys)} (first: {', '.join(keys[:3])})" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise WeightsError(f"{where}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)


def update_checkpoint_info(path: str | os.PathLike, info: dict[str, Any], output: str | os.PathLike | None = None
                           ) -> Path:
    """Write `info` (e.g. a fitted temperature) as the JSON of the model file at `path`, or of a copy at
    `output` (the weights copied beside it); returns the JSON written. The weights are not rewritten,
    so their recorded sha256 still holds."""
    validate_checkpoint_info(info, checkpoint_paths(path).with_suffix(".json"))
    stem = checkpoint_paths(path)
    target = checkpoint_paths(output) if output else stem
    if target != stem:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stem.with_suffix(".safetensors"), target.with_suffix(".safetensors"))
    atomic_write_json(target.with_suffix(".json"), info)
    return target.with_suffix(".json")


def shipped_checkpoint() -> Path:
    """The FERPlus model that ships inside the package (grefel/weights/grefel_ferplus.*)."""
    return Path(str(resources.files("grefel") / "weights" / f"{SHIPPED_NAME}.safetensors"))


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """A user-given checkpoint, or the shipped one when none is given."""
    if path is not None:
        return checkpoint_paths(path).with_suffix(".safetensors")
    shipped = shipped_checkpoint()
    if not shipped.is_file():
        raise WeightsError(f"no checkpoint given and no shipped model in this install ({shipped} is missing)")
    return shipped
