"""The in-memory FER dataset every format loads into, and its batch collation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from grefel.data.votes import MULTI_TARGET_EPSILON, NUM_VOTE_COLUMNS
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES, NUM_CLASSES


@dataclass
class Sample:
    image: np.ndarray | torch.Tensor
    label: int
    target: np.ndarray  # float32 (8,): what the loss trains on, per label mode
    id: str
    index: int
    geometry: np.ndarray | None = None  # (2, 3) theta of the training warp, when the transform reports it


def image_to_tensor(image: np.ndarray, channels: int | None = None) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> float32 (C, H, W) in [0, 1]; grey is repeated to `channels`.

    Done in numpy: a handful of torch calls per image costs more than the arithmetic here.
    """
    x = image.astype(np.float32) / np.float32(255.0)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # (C, H, W)
    if channels is not None and x.shape[0] != channels:
        x = np.repeat(x, channels, axis=0)
    return torch.from_numpy(np.ascontiguousarray(x))


class FERDataset(Dataset):
    """Decoded images with canonical 8-class targets.

    `targets` holds each sample's target distribution (one-hot for majority and
    single-label formats, the vote distribution for the FERPlus soft modes);
    `__getitem__` turns it into the training target of the label mode.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, ids: Sequence[str],
                 class_names: Sequence[str], label_mode: str = "majority",
                 dropped: dict[str, int] | None = None,
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None, seed: int = 0,
                 votes: np.ndarray | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W[, 3]), got {images.dtype} {images.shape}")
        if targets.shape != (len(images), NUM_CLASSES) or len(ids) != len(images):
            raise ValueError(f"{len(images)} images but targets {targets.shape} and {len(ids)} ids")
        self.images = images
        self.targets = targets.astype(np.float32, copy=False)
        self.labels = self.targets.argmax(axis=1).astype(np.int64)  # first index on ties
        self.ids = list(ids)
        self.class_names = tuple(class_names)
        self.label_mode = label_mode
        self.dropped = dict(dropped or {})
        if votes is not None and votes.shape != (len(images), NUM_VOTE_COLUMNS):
            raise ValueError(f"{len(images)} images but votes {votes.shape}")
        self.votes = votes  # FERPlus: (N, 10) raw annotator counts (8 emotions, unknown, NF); else None
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def require_classes(self, num_classes: int) -> None:
        """A one-line DataError when a label lies beyond the first `num_classes` canonical classes, those a
        model of that many classes can predict."""
        if len(self) and self.labels.max() >= num_classes:
            raise DataError(f"the dataset has class {CANONICAL_CLASSES[int(self.labels.max())]} that the model "
                            f"({num_classes} classes) cannot predict")

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i %= len(self)
        image, geometry = self.images[i], None
        if self.transform is not None:
            image = self.transform(image)
            if isinstance(image, tuple):
                image, geometry = image
        return Sample(image=image, label=int(self.labels[i]), target=self.training_target(i),
                      id=self.ids[i], index=i, geometry=geometry)

    def training_target(self, i: int) -> np.ndarray:
        """The mode's target for sample i: one-hot, distribution, sampled one-hot or multi-hot."""
        target = self.targets[i]
        if self.label_mode == "probability":
            # Seeded by (seed, epoch, index) so every DataLoader worker, and a resumed run, draws the same.
            rng = np.random.default_rng((self.seed, self.epoch, i))
            cdf = np.cumsum(target, dtype=np.float64)
            pick = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), NUM_CLASSES - 1)
            out = np.zeros(NUM_CLASSES, np.float32)
            out[pick] = 1.0
            return out
        if self.label_mode == "multi_target":
            positive = (target > 0).astype(np.float32)
            return (1 - MULTI_TARGET_EPSILON) * positive + MULTI_TARGET_EPSILON
        return target.copy()

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES).astype(np.int64)

    def subset(self, indices) -> FERDataset:
        """Same type over the given positions (or boolean mask); arrays are copies, transform shared."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        sub = FERDataset(self.images[idx], self.targets[idx], [self.ids[j] for j in idx],
                         self.class_names, self.label_mode, self.dropped, self.transform, self.seed,
                         None if self.votes is None else self.votes[idx])
        sub.epoch = self.epoch
        return sub

    def set_epoch(self, epoch: int) -> None:
        """Reseed probability-mode sampling. DataLoader workers copy the dataset when an
        iterator starts, so call this before iterating (and avoid persistent_workers)."""
        self.epoch = int(epoch)


def collate_samples(batch: list[Sample]) -> dict[str, Any]:
    images = [s.image if isinstance(s.image, torch.Tensor) else image_to_tensor(s.image) for s in batch]
    out = {
        # default_collate stacks straight into shared memory inside a DataLoader worker (one copy fewer)
        "image": default_collate(images),  # (B, C, S, S)
        "label": torch.tensor([s.label for s in batch], dtype=torch.int64),  # (B,)
        "target": torch.from_numpy(np.stack([s.target for s in batch]).astype(np.float32)),  # (B, 8)
        "index": torch.tensor([s.index for s in batch], dtype=torch.int64),  # (B,)
        "id": [s.id for s in batch],
    }
    if all(s.geometry is not None for s in batch):
        out["geometry"] = torch.from_numpy(np.stack([s.geometry for s in batch]))  # (B, 2, 3)
    return out
