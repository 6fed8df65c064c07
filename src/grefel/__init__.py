"""grefel: GReFEL facial expression recognition in PyTorch.

    >>> import grefel
    >>> rec = grefel.Recognizer()              # the shipped FERPlus model, offline
    >>> rec.predict("photo.jpg").faces[0].label
    >>> model = grefel.load_model()            # an nn.Module: (N, C, S, S) in [0, 1] -> probabilities

Heavy modules (torch, cv2) load on first use, so `grefel --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grefel.labels import CANONICAL_CLASSES

if TYPE_CHECKING:
    from grefel.inference.recognizer import Recognizer
    from grefel.models.serving import ServingModel

__version__ = "0.1.0"
__all__ = ["CANONICAL_CLASSES", "Recognizer", "load_model", "__version__"]


def load_model(checkpoint: str | None = None, device: str = "cpu") -> "ServingModel":
    """A checkpoint (the shipped FERPlus model by default) as an eval-mode module returning
    calibrated probabilities; `.info` holds its JSON (classes, input size, metrics)."""
    from grefel.models.model_file import resolve_checkpoint
    from grefel.models.serving import ServingModel

    return ServingModel.from_checkpoint(resolve_checkpoint(checkpoint)).to(device)


def __getattr__(name: str) -> Any:
    if name == "Recognizer":
        from grefel.inference.recognizer import Recognizer
        return Recognizer
    raise AttributeError(f"module 'grefel' has no attribute {name!r}")
