"""Distillation targets: what trained models (teachers) say of each training image, mixed into its target.

target = (1 - weight) * label + weight * teacher, the teacher being the
average of the teachers' probabilities as trained (their own temperature,
without the logit adjustment a file may be served with: that is a serving
choice, made again for the student when it is calibrated, and kept in the
targets it would count twice). An ensemble of models can so be folded into one
model that costs one model to run. Two modes (`distill_mode`):

- "static": the teachers (with their own test-time flip) see the un-augmented
  training images once; the result is kept in the run folder
  (`teacher_targets.npz`, keyed by the teachers' weights and temperatures), so
  `--resume` does not recompute it.
- "consistent": the teachers see the very augmented view the student is
  trained on, at every step (function matching, Beyer et al. 2022, "Knowledge
  distillation: a good teacher is patient and consistent"): the student is
  taught on the views it sees, not on a cropped or shifted image's target for
  an image it never saw. It costs the teachers' forward passes at every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from grefel.data import collate_samples, eval_transform
from grefel.data.dataset import FERDataset
from grefel.errors import ConfigError
from grefel.fileio import atomic_open
from grefel.labels import NUM_CLASSES
from grefel.models.model_file import read_checkpoint_info, resolve_checkpoint
from grefel.models.serving import ServingModel
from grefel.progress import Progress

DISTILL_MODES = ("static", "consistent")


def check_distillable(weight: float, label_mode: str) -> None:
    """Teachers' probabilities blend into distribution targets only, by a weight in (0, 1]."""
    if not 0.0 < weight <= 1.0:
        raise ConfigError(f"distill_weight = {weight}: expected a number in (0, 1]")
    if label_mode == "multi_target":
        raise ConfigError("distill_from: multi_target labels are not distributions; use crossentropy or majority")


def teacher_keys(checkpoints: tuple[str, ...]) -> list[str]:
    """What identifies the teachers' predictions: each model file's weights hash and served settings."""
    keys = []
    for path in checkpoints:
        info = read_checkpoint_info(resolve_checkpoint(path))
        keys.append(f"{info.get('weights_sha256')}|{info['temperature']}|{info.get('tta_flip')}|as trained")
    return keys


@torch.no_grad()
def teacher_probabilities(checkpoints: tuple[str, ...], dataset: FERDataset, device: torch.device,
                          batch_size: int = 64) -> np.ndarray:
    """(N, 8) mean probabilities of the teachers as trained over the dataset's un-augmented images."""
    total = np.zeros((len(dataset), NUM_CLASSES), np.float64)
    for path in checkpoints:
        serving = ServingModel.from_checkpoint(resolve_checkpoint(path)).to(device)
        serving.shift.zero_()                              # no logit adjustment: see the module docstring
        info = serving.info
        images = FERDataset(dataset.images, dataset.targets, dataset.ids, dataset.class_names,
                            transform=eval_transform(info["input"]["size"], info["input"]["channels"]))
        loader = DataLoader(images, batch_size=batch_size, collate_fn=collate_samples)
        parts = []
        with Progress(len(images), f"teacher {Path(path).name}", unit="images", period=30.0) as progress:
            for batch in loader:
                parts.append(serving(batch["image"].to(device)).double().cpu().numpy())
                progress.update(len(batch["image"]))
        probs = np.concatenate(parts)
        total[:, :probs.shape[1]] += probs
    return total / len(checkpoints)


def distilled_targets(checkpoints: tuple[str, ...], weight: float, dataset: FERDataset, device: torch.device,
                      cache: Path, log=print) -> np.ndarray:
    """The dataset's targets blended with its teachers' probabilities (see the module docstring)."""
    check_distillable(weight, dataset.label_mode)
    keys = teacher_keys(checkpoints)
    teacher = None
    if cache.is_file():
        with np.load(cache) as saved:
            if saved["keys"].tolist() == keys and saved["teacher"].shape == (len(dataset), NUM_CLASSES):
                teacher = saved["teacher"]
    if teacher is None:
        log(f"computing the predictions of {len(checkpoints)} teacher model(s) on {len(dataset)} training images")
        teacher = teacher_probabilities(checkpoints, dataset, device)
        with atomic_open(cache, "wb") as handle:
            np.savez(handle, teacher=teacher, keys=np.array(keys))
    return ((1.0 - weight) * dataset.targets + weight * teacher).astype(np.float32)


class Teacher(torch.nn.Module):
    """The teachers' mean probabilities as trained on a batch, as one view: no test-time flip (the student
    is taught on this view, not its mirror) and no logit adjustment. Frozen, always in eval mode."""

    def __init__(self, checkpoints: tuple[str, ...], input_spec: tuple[int, int], device: torch.device):
        super().__init__()
        self.members = torch.nn.ModuleList()
        for path in checkpoints:
            serving = ServingModel.from_checkpoint(resolve_checkpoint(path), tta_flip=False)
            spec = (serving.info["input"]["channels"], serving.info["input"]["size"])
            if spec != tuple(input_spec):
                raise ConfigError(f"distill_from: {path} takes {spec[0]}-channel {spec[1]} px images, the student "
                                  f"{input_spec[0]}-channel {input_spec[1]} px; consistent distillation needs "
                                  f"the same input")
            serving.shift.zero_()                          # no logit adjustment: see the module docstring
            self.members.append(serving)
        self.requires_grad_(False)
        self.to(device)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)  # (B, classes)

