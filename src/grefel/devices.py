"""The one way a device name becomes a torch.device: auto, cpu or cuda.

Commands import DEVICE_CHOICES to build their parsers, so torch (about 1.5 s
to import here) is imported when a device is resolved, not with this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grefel.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> "torch.device":
    """auto: cuda when a CUDA device is available, else cpu; cuda without one is a ConfigError."""
    import torch

    if name not in DEVICE_CHOICES:
        raise ConfigError(f"device {name!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
