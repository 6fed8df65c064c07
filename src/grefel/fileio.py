"""Atomic writes and the one safe way to load weights.

Everything grefel writes (checkpoints, metrics, predictions, caches) goes
through a temp file in the destination folder and an `os.replace`, so a crash
or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors_bytes
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save as _safetensors_bytes

from grefel.errors import WeightsError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically. Shared storage is copied apart."""
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}
    atomic_write_bytes(path, _safetensors_bytes(tensors, metadata=metadata))


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat tensor dict from safetensors or a plain `.pth`/`.pt`/`.pth.tar` state_dict.

    Pickles go through `torch.load(weights_only=True)`, which refuses to build
    arbitrary objects, so a file carrying code is rejected before anything runs.
    A POSTER-style `{"state_dict": {...}}` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        try:
            return _load_safetensors(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unsafe or corrupt pickles
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: refused to load: not a plain state_dict loadable with weights_only=True ({first_line})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise WeightsError(f"{path}: expected a state_dict mapping names to tensors, got {type(obj).__name__}")
    return obj


# ---- safetensors + JSON pairs (model checkpoints and training states) ----------------------------

def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pair(stem: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """`stem`.safetensors and `stem`.json, each atomic; the JSON records the weights' sha256."""
    data = _safetensors_bytes({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    atomic_write_bytes(stem.with_suffix(".safetensors"), data)
    atomic_write_json(stem.with_suffix(".json"), {**info, "weights_sha256": sha256_hex(data)})


def read_pair(stem: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read both files once; a weights file that does not match the recorded sha256 is refused."""
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
    if info.get("weights_sha256") not in (None, sha256_hex(data)):
        raise WeightsError(f"{weights}: content does not match the sha256 recorded in {meta.name} "
                           "(truncated or from another save)")
    try:
        tensors = _load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as exc:
        raise WeightsError(f"{weights}: not a readable safetensors file ({exc})") from None
    return tensors, info


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
