"""Checkpoints: the training state that `--resume` continues from, and model checkpoints.

Training state (`checkpoints/last.safetensors` + `last.json`): model, EMA and
optimizer tensors in safetensors; scheduler, scaler, epoch, step, RNG states
and the resolved config in JSON, which also records the sha256 of its
tensors. The previous pair is kept as `prev.*` until a new pair is complete,
so a crash or a full disk at any point leaves one consistent pair to resume
from, and a corrupt `last` is detected (hash mismatch) and skipped.

Model checkpoint (`best.safetensors` + `best.json`, and the shipped model): the
model state_dict plus everything inference needs (preset and its config,
class names, input contract, preprocessing, temperature, served prediction)
and how it was made (command, data, metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes
from torch import nn

from grefel.calibration import T_MAX, T_MIN
from grefel.errors import ConfigError, WeightsError
from grefel.fileio import atomic_write_bytes, atomic_write_json
from grefel.labels import CANONICAL_CLASSES

CHECKPOINT_FORMAT = "grefel-checkpoint/1"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return safetensors_bytes({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})


def _info_sha256(info: dict[str, Any]) -> str:
    """sha256 of the JSON fields a save chose (not the hashes the save adds), key order independent."""
    body = {k: v for k, v in info.items() if k not in ("weights_sha256", "info_sha256")}
    return _sha256(json.dumps(body, sort_keys=True).encode())


def _write_pair(stem: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    data = _tensor_bytes(tensors)
    atomic_write_bytes(stem.with_suffix(".safetensors"), data)
    atomic_write_json(stem.with_suffix(".json"), {**info, "weights_sha256": _sha256(data)})


def _read_pair(stem: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    try:
        info = json.loads(meta.read_text())
        data = weights.read_bytes()
    except FileNotFoundError as exc:
        raise WeightsError(f"{exc.filename}: not found") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 4300+ digit integer
        raise WeightsError(f"{meta}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{meta}: expected a JSON object")
    if info.get("weights_sha256") not in (None, _sha256(data)):
        raise WeightsError(f"{weights}: content does not match the sha256 recorded in {meta.name} "
                           "(truncated or from another save)")
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as exc:
        raise WeightsError(f"{weights}: not a readable safetensors file ({exc})") from None
    return tensors, info


# ---- training state ---------------------------------------------------------------------------

def save_training_state(directory: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write last.* so that at every instant a complete pair (last or prev) exists."""
    directory.mkdir(parents=True, exist_ok=True)
    last, prev = directory / "last", directory / "prev"
    staged = directory / "staged"
    # The weights hash does not cover the JSON; this one does, so a damaged last.json that still parses
    # (a changed epoch, a lost key) is detected like a truncated one.
    _write_pair(staged, tensors, {**info, "info_sha256": _info_sha256(info)})  # a failure leaves last.* untouched
    for suffix in (".safetensors", ".json"):
        # prev.* becomes a second name of last.* (a link, or a copy where links are unsupported), so last.*
        # stays complete while prev.* changes; moving last.* away would leave no whole pair in between.
        if last.with_suffix(suffix).exists():
            tmp = directory / f".prev{suffix}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                try:
                    os.link(last.with_suffix(suffix), tmp)
                except OSError:
                    shutil.copyfile(last.with_suffix(suffix), tmp)
                os.replace(tmp, prev.with_suffix(suffix))
            finally:
                tmp.unlink(missing_ok=True)
    for suffix in (".safetensors", ".json"):
        os.replace(staged.with_suffix(suffix), last.with_suffix(suffix))


def load_training_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """The newest consistent pair: last, else prev (with a warning). Returns (tensors, info, which)."""
    errors = []
    for name in ("last", "prev"):
        try:
            tensors, info = _read_pair(directory / name)
            if info.pop("info_sha256", None) != _info_sha256(info) or "weights_sha256" not in info:
                raise WeightsError(f"{directory / name}.json: content does not match its recorded sha256 "
                                   "(edited, damaged or not a training state)")
        except WeightsError as exc:
            errors.append(str(exc))
            continue
        if name == "prev":
            warnings.warn(f"{directory}/last is unusable ({errors[0]}); resuming from {directory}/prev",
                          stacklevel=2)
        return tensors, info, name
    raise WeightsError(f"no usable checkpoint to resume from in {directory}: " + "; ".join(errors))


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-safe rest."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        rest["state"][str(pid)] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                rest["state"][str(pid)][key] = value
    return tensors, rest


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in rest["state"].items()}
    for key, value in tensors.items():
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = value
    return {"param_groups": rest["param_groups"], "state": state}


# ---- model checkpoints ------------------------------------------------------------------------

def save_model_checkpoint(stem: Path, model: nn.Module, info: dict[str, Any]) -> None:
    """`stem`.safetensors (state_dict) + `stem`.json (inference contract and provenance)."""
    _write_pair(stem, model.state_dict(), {"format": CHECKPOINT_FORMAT, **info})


def checkpoint_paths(path: str | os.PathLike) -> Path:
    """Accept X.safetensors, X.json or the stem X; return the stem."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def read_model_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and validated info of a model checkpoint; nothing is built yet."""
    stem = checkpoint_paths(path)
    if not stem.with_suffix(".safetensors").is_file():
        raise WeightsError(f"{stem.with_suffix('.safetensors')}: checkpoint not found")
    tensors, info = _read_pair(stem)
    validate_checkpoint_info(info, stem.with_suffix(".json"))
    return tensors, info


def validate_checkpoint_info(info: dict[str, Any], where: Path) -> None:
    from grefel.models import list_models, model_spec
    from grefel.models.serving import SERVE_CHOICES

    if info.get("format") != CHECKPOINT_FORMAT:
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


def build_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Build the preset recorded in the checkpoint and load its weights strictly; eval mode."""
    from grefel.models import create_model

    tensors, info = read_model_checkpoint(path)
    try:
        model = create_model(info["preset"], landmark_weights=None, face_weights=None, **info["model"])
    except ConfigError as exc:  # e.g. sizes the layers cannot take
        raise ConfigError(f"{checkpoint_paths(path).with_suffix('.json')}: {exc}") from None
    load_strict(model, tensors, checkpoint_paths(path).with_suffix(".safetensors"))
    return model.eval(), info


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


SHIPPED_NAME = "grefel_ferplus"


def shipped_checkpoint() -> Path:
    """The FERPlus model that ships inside the package (grefel/weights/grefel_ferplus.*)."""
    from importlib import resources

    return Path(str(resources.files("grefel") / "weights" / f"{SHIPPED_NAME}.safetensors"))


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """A user-given checkpoint, or the shipped one when none is given."""
    if path is not None:
        return checkpoint_paths(path).with_suffix(".safetensors")
    shipped = shipped_checkpoint()
    if not shipped.is_file():
        raise WeightsError(f"no checkpoint given and no shipped model in this install ({shipped} is missing)")
    return shipped
