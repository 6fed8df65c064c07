"""The maps of a model's frozen parts, computed once per training image and reused every epoch.

The frozen landmark network (and the frozen early stages of a face-pretrained
image branch, grefel.models.face_branch) are pure functions of the
un-augmented image. At 112x112 the landmark network runs at about 90 images/s
on two cores, which would cost five minutes of every FERPlus epoch. Instead
the maps a model's `frozen_maps(x)` returns, of each image and of its mirror,
are computed once (float16, memory-mapped, keyed by the images, the frozen
weights and the model's sizes) and each training step resamples them through
the same affine warp that augmented the image (`F.affine_grid` on the
transform's normalised theta). Conv features are only approximately
equivariant to sub-pixel shifts, scaling and rotation: on FERPlus valid with
the default augmentation, the warped landmark maps reach a mean cosine
similarity of 0.80 / 0.80 / 0.95 (fine to coarse, at the network's 28/14/7
resolution) to the maps of the warped image, against 0.37 / 0.54 / 0.90
unwarped; at grefel_small's 12/6/3 windows, 0.74 / 0.71 / 0.93 against
0.33 / 0.47 / 0.86 (tests/test_frozen_cache.py). Photometric augmentations
(brightness, contrast, erasing) do not reach cached maps. Validation uses
unwarped cached maps, which equal the online ones up to float16 rounding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grefel.data.cache import default_cache_dir
from grefel.data.transforms import eval_transform
from grefel.fileio import atomic_open
from grefel.progress import Progress

# The config fields that change what frozen_maps computes (absent ones read as None).
SIZE_FIELDS = ("input_size", "in_chans", "landmark_size", "branch_size", "landmark_branch", "image_backbone",
               "face_size", "face_frozen_stages")


def _fingerprint(model: nn.Module, images: np.ndarray) -> str:
    cfg = model.config
    h = hashlib.sha256(b"grefel-frozen-cache-v1")
    h.update(np.ascontiguousarray(images).data)
    for i, module in enumerate(model.frozen_modules()):
        for key, value in sorted(module.state_dict().items()):
            h.update(f"{i}.{key}".encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr((images.shape, model.preset) + tuple(getattr(cfg, f, None) for f in SIZE_FIELDS)).encode())
    return h.hexdigest()[:24]


class FrozenMapCache:
    def __init__(self, maps: list[np.ndarray]):
        self.maps = maps  # per map (N, 2, C, W, W) float16; [:, 1] holds the mirrored image's maps

    @classmethod
    def load_or_build(cls, model: nn.Module, images: np.ndarray, cache_dir: str | os.PathLike | None = None,
                      batch_size: int = 128, log=print) -> "FrozenMapCache":
        directory = Path(cache_dir) if cache_dir else default_cache_dir()
        key = _fingerprint(model, images)
        with torch.no_grad():
            probe = torch.zeros(1, model.config.in_chans, *(model.config.input_size,) * 2,
                                device=next(model.parameters()).device)
            count = len(model.frozen_maps(probe))
        paths = [directory / f"frozen-{key}-{i}.npy" for i in range(count)]
        if all(p.is_file() for p in paths):
            try:
                return cls([np.load(p, mmap_mode="r") for p in paths])
            except (OSError, ValueError):
                pass  # corrupt or partial: rebuild below
        log(f"computing the frozen maps of {len(images)} images and their mirrors (once; cached in {directory})")
        return cls(cls._build(model, images, paths, batch_size))

    @staticmethod
    @torch.no_grad()
    def _build(model: nn.Module, images: np.ndarray, paths: list[Path], batch_size: int) -> list[np.ndarray]:
        cfg = model.config
        transform = eval_transform(cfg.input_size, cfg.in_chans)
        device = next(model.parameters()).device
        chunks: list[list[np.ndarray]] = [[] for _ in paths]
        with Progress(len(images), "frozen maps", unit="images", period=30.0) as progress:
            for start in range(0, len(images), batch_size):
                x = torch.stack([transform(im) for im in images[start:start + batch_size]]).to(device)
                n = len(x)
                # The image and its mirror in one pass: one larger batch is cheaper than two on a CPU.
                for i, both in enumerate(model.frozen_maps(torch.cat([x, x.flip(-1)]))):
                    chunks[i].append(torch.stack([both[:n], both[n:]], 1).half().cpu().numpy())  # (b, 2, C, W, W)
                progress.update(n)
        maps = []
        for path, parts in zip(paths, chunks):
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as handle:
                np.save(handle, np.concatenate(parts))
            maps.append(np.load(path, mmap_mode="r"))
        return maps

    def __len__(self) -> int:
        return len(self.maps[0])

    def lookup(self, index: torch.Tensor, theta: torch.Tensor | None = None, mirror: bool = False) -> list[torch.Tensor]:
        """Maps for a batch of dataset indices: of the image (or its mirror), or resampled through
        each sample's training warp when theta is given."""
        idx = index.cpu().numpy()
        if theta is None:
            return [torch.from_numpy(m[idx, int(mirror)].astype(np.float32)) for m in self.maps]
        theta = theta.float().clone()
        mirrored = torch.linalg.det(theta[:, :, :2]) < 0                  # the warp includes a flip
        theta[mirrored, 0, :] *= -1                                        # same warp, in the mirror's frame
        which = mirrored.numpy().astype(np.int64)
        out = []
        for m in self.maps:
            maps = torch.from_numpy(m[idx, which].astype(np.float32))     # (B, C, W, W)
            grid = F.affine_grid(theta, list(maps.shape), align_corners=False)
            out.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="reflection", align_corners=False))
        return out
