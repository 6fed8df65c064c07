"""Class-frequency weights for imbalanced FER data (sampling and the loss)."""

from __future__ import annotations

import numpy as np
import torch

from grefel.labels import NUM_CLASSES


def _class_totals(labels_or_targets, num_classes: int) -> np.ndarray:
    """Per-class counts from int labels (N,), or soft counts from (N, C) target distributions."""
    values = labels_or_targets.detach().cpu().numpy() if isinstance(labels_or_targets, torch.Tensor) \
        else np.asarray(labels_or_targets)
    if values.ndim == 2:
        if values.shape[1] != num_classes:
            raise ValueError(f"targets have {values.shape[1]} columns, expected {num_classes}")
        return values.astype(np.float64).sum(axis=0)
    labels = values.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes).astype(np.float64)


def class_weights(labels_or_targets, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """w_c = (N / C) / N_c, inverse frequency; an absent class gets 0.

    C counts the classes present, so the mean per-sample weight stays 1 on
    datasets without some class (FER2013 and RAF-DB have no contempt).
    """
    counts = _class_totals(labels_or_targets, num_classes)  # (C,)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / present.sum() / counts[present]
    return torch.from_numpy(weights).float()


def class_balanced_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Per-sample weight 1 / N_c of its class, for torch.utils.data.WeightedRandomSampler."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = _class_totals(labels, num_classes)
    return torch.from_numpy(1.0 / counts[labels])  # (N,) float64
