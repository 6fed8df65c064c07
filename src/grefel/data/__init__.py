"""FER datasets: FERPlus, fer2013.csv, CSV and image folders, loaded into one `FERDataset`.

Names are imported lazily (PEP 562): `grefel.data.source` (what configs and
commands need at start-up) then costs no torch or cv2 import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataSource": "source", "SPLITS": "source", "LABEL_MODES": "source", "FORMATS": "source",
    "load_dataset": "load",
    "FERDataset": "dataset", "Sample": "dataset", "collate_samples": "dataset",
    "AugmentConfig": "transforms", "train_transform": "transforms", "eval_transform": "transforms",
    "class_balanced_weights": "weights", "class_weights": "weights",
    "convert_to_csv": "convert",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'grefel.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"grefel.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
