"""Training states: what `--resume` continues from, in `checkpoints/last.*` (and `prev.*`).

Model, EMA and optimizer tensors in safetensors; scheduler, scaler, epoch,
step, RNG states and the resolved config in JSON, which also records the
sha256 of its tensors and of itself. The previous pair is kept as `prev.*`
until a new pair is complete, so a crash or a full disk at any point leaves
one consistent pair to resume from, and a corrupt `last` is detected (hash
mismatch) and skipped. Only training reads these; a model file for inference
is `grefel.models.model_file`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grefel.engine.optim import load_scheduler_state
from grefel.errors import GrefelError, WeightsError
from grefel.fileio import prefixed, read_pair, sha256_hex, unprefixed, write_pair
from grefel.models.model_file import load_strict


def _info_sha256(info: dict[str, Any]) -> str:
    """sha256 of the JSON fields a save chose (not the hashes the save adds), key order independent."""
    body = {k: v for k, v in info.items() if k not in ("weights_sha256", "info_sha256")}
    return sha256_hex(json.dumps(body, sort_keys=True).encode())


def save_training_state(directory: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write last.* so that at every instant a complete pair (last or prev) exists."""
    directory.mkdir(parents=True, exist_ok=True)
    last, prev = directory / "last", directory / "prev"
    staged = directory / "staged"
    # The weights hash does not cover the JSON; this one does, so a damaged last.json that still parses
    # (a changed epoch, a lost key) is detected like a truncated one.
    write_pair(staged, tensors, {**info, "info_sha256": _info_sha256(info)})  # a failure leaves last.* untouched
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
            tensors, info = read_pair(directory / name)
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


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, json) of the Python, NumPy and torch generators."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    info = {"numpy": [name, pos, has_gauss, gauss], "python": [py_version, list(py_state), py_gauss]}
    return tensors, info


def set_rng_state(tensors: dict[str, Any], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    name, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = info["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


def restore_training_state(ckpt_dir: Path, model, ema, optimizer, scheduler, amp) -> dict[str, Any]:
    """Load `last` (or `prev` when `last` is damaged) into the run's objects; returns its JSON state."""
    tensors, state, which = load_training_state(ckpt_dir)
    load_strict(model, unprefixed(tensors, "model"), ckpt_dir / f"{which}.safetensors")
    if ema is not None:
        ema.load_state_dict(unprefixed(tensors, "ema"))
    optimizer.load_state_dict(optimizer_from_flat(unprefixed(tensors, "optim"), state["optimizer"]))
    load_scheduler_state(scheduler, state["scheduler"])
    amp.scaler.load_state_dict(state["scaler"])
    set_rng_state(tensors, state["rng"])
    print(f"resuming {ckpt_dir.parent} from {which} checkpoint: epoch {state['epoch']}, step {state['step']}",
          flush=True)
    return state


def save_last(ckpt_dir: Path, model, ema, optimizer, scheduler, amp, state: dict[str, Any]) -> None:
    """The full training state `--resume` continues from; `state` holds epoch, step, best and config."""
    rng_tensors, rng_info = rng_state()
    optim_tensors, optim_rest = optimizer_to_flat(optimizer.state_dict())
    tensors = {**prefixed(model.state_dict(), "model"), **prefixed(optim_tensors, "optim"), **rng_tensors}
    if ema is not None:
        tensors.update(prefixed(ema.state_dict(), "ema"))
    try:
        save_training_state(ckpt_dir, tensors, {**state, "optimizer": optim_rest, "scheduler": scheduler.state_dict(),
                                                "scaler": amp.scaler.state_dict(), "rng": rng_info})
    except OSError as exc:
        raise GrefelError(f"could not write the epoch {state['epoch']} checkpoint in {ckpt_dir} "
                          f"({exc.strerror or exc}); the previous checkpoint is intact") from None
