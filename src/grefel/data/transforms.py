"""Train / eval image transforms: uint8 (H, W[, 3]) -> float32 (in_chans, size, size) in [0, 1].

No mean/std normalisation here: the model normalises internally, so inference
only has to scale to [0, 1].

Albumentations' per-sample overhead (Compose + Affine + RandomBrightnessContrast
+ Resize + Erasing measured ~1.3 ms per 48x48 image on this 2-core machine) is
too slow for the >= 3,000 images/s target. The training pipeline keeps their
parameterisation (Affine shift/scale/rotate; RandomBrightnessContrast alpha =
1 +- c, beta = +-b * 255; torchvision RandomErasing area 2-33 %, aspect 0.3-3.3,
fill 0) but fuses flip, shift, scale, rotation, crop and resize into one
cv2.warpAffine (reflected border, so upsampling and shifts leave no black
frame), brightness/contrast into one saturating cv2.addWeighted, and erasing
into a slice assignment. Random numbers come from numpy's global generator,
which torch's DataLoader seeds per worker.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from grefel.data.dataset import image_to_tensor
from grefel.data.images import resize_square, to_color
from grefel.errors import ConfigError

ERASE_AREA = (0.02, 0.33)
ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    shift: float = 0.1          # fraction of size
    scale: float = 0.1          # +- fraction
    rotate: float = 10.0        # degrees
    brightness: float = 0.2
    contrast: float = 0.2
    erasing: float = 0.25       # probability of one random erased rectangle
    random_resized_crop: float = 0.0  # > 0: RandomResizedCrop, this min area (POSTER-style); replaces shift/scale
    backend: str = "fused"      # fused: one cv2 warp per image (fast); albumentations: the same
                                # augmentations as an Albumentations pipeline (measured slower, see module doc)

    def __post_init__(self) -> None:
        if self.backend not in ("fused", "albumentations"):
            raise ConfigError(f"augment.backend = {self.backend!r}: expected fused or albumentations")
        for name in ("hflip", "erasing", "random_resized_crop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} = {getattr(self, name)!r}: expected a value in [0, 1]")
        for name in ("shift", "scale", "brightness", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"augment.{name} = {getattr(self, name)!r}: expected a value in [0, 1)")
        if not 0.0 <= self.rotate <= 180.0:
            raise ConfigError(f"augment.rotate = {self.rotate!r}: expected degrees in [0, 180]")


def _check(size: int, in_chans: int) -> None:
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans = {in_chans!r}: expected 1 or 3")
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"image size = {size!r}: expected an integer of at least 8")


def _prepare(image: np.ndarray, size: int, in_chans: int) -> np.ndarray:
    """Match channels (cheaper to work on 1 channel) and shrink with INTER_AREA, as eval does."""
    if in_chans == 1:
        image = to_color(image, "grey")
    if image.shape[0] > size or image.shape[1] > size:
        image = resize_square(image, size)
    return image


@dataclass
class EvalTransform:
    size: int
    in_chans: int

    def __post_init__(self) -> None:
        _check(self.size, self.in_chans)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return image_to_tensor(resize_square(_prepare(image, self.size, self.in_chans), self.size), self.in_chans)


def normalized_inverse(matrix: np.ndarray, src_hw: tuple[int, int], size: int) -> np.ndarray:
    """The inverse of a source->output pixel affine, in normalised coordinates.

    Returns theta (2, 3) mapping output coordinates in [-1, 1] to source coordinates in
    [-1, 1] (pixel centres at (2p + 1) / n - 1, i.e. align_corners=False): what
    `F.affine_grid` takes to resample anything aligned with the un-augmented image,
    such as cached feature maps, exactly as the image was warped.
    """
    h, w = src_hw
    inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    from_out = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
    to_src = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    return (to_src @ inv @ from_out)[:2].astype(np.float32)


@dataclass
class TrainTransform:
    size: int
    in_chans: int
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    with_geometry: bool = False   # also return the warp as normalised theta (see normalized_inverse)

    def __post_init__(self) -> None:
        _check(self.size, self.in_chans)

    def __call__(self, image: np.ndarray) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
        image = _prepare(image, self.size, self.in_chans)
        matrix = self._matrix(*image.shape[:2])
        out = cv2.warpAffine(image, matrix, (self.size, self.size),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        aug = self.aug
        if aug.brightness or aug.contrast:
            c, b = np.random.uniform(-1.0, 1.0, 2)
            # saturate(alpha * x + beta) in one call; convertScaleAbs would mirror negatives instead of clipping
            out = cv2.addWeighted(out, 1.0 + c * aug.contrast, out, 0.0, b * aug.brightness * 255.0)
        if aug.erasing and np.random.random() < aug.erasing:
            self._erase(out)
        tensor = image_to_tensor(out, self.in_chans)  # (in_chans, S, S)
        if self.with_geometry:
            return tensor, normalized_inverse(matrix, image.shape[:2], self.size)
        return tensor

    def _matrix(self, h: int, w: int) -> np.ndarray:
        """One affine map source -> output: centre, flip, scale to size, rotate, shift."""
        aug, size = self.aug, self.size
        u = np.random.random(6)
        if aug.random_resized_crop > 0:
            area = aug.random_resized_crop + (1.0 - aug.random_resized_crop) * u[0]
            ratio = math.exp(CROP_LOG_RATIO[0] + (CROP_LOG_RATIO[1] - CROP_LOG_RATIO[0]) * u[1])
            cw, ch = min(w, w * math.sqrt(area * ratio)), min(h, h * math.sqrt(area / ratio))
            # crop centre in pixel-index coordinates (pixel centres at integers, as cv2.resize)
            cx, cy = (w - cw) * u[2] + cw / 2 - 0.5, (h - ch) * u[3] + ch / 2 - 0.5
            sx, sy, tx, ty = size / cw, size / ch, 0.0, 0.0
        else:
            s = 1.0 + aug.scale * (2 * u[0] - 1)
            cx, cy = (w - 1) / 2, (h - 1) / 2
            sx, sy = s * size / w, s * size / h
            tx, ty = aug.shift * size * (2 * u[2] - 1), aug.shift * size * (2 * u[3] - 1)
        fx = -sx if u[4] < aug.hflip else sx
        theta = math.radians(aug.rotate * (2 * u[5] - 1))
        cos, sin = math.cos(theta), math.sin(theta)
        # linear part = rotation @ diag(fx, sy); offset maps the source centre to the (shifted) output centre
        a, b, c, d = cos * fx, -sin * sy, sin * fx, cos * sy
        ox, oy = (size - 1) / 2 + tx, (size - 1) / 2 + ty
        return np.array([[a, b, ox - a * cx - b * cy], [c, d, oy - c * cx - d * cy]])  # (2, 3)

    def _erase(self, out: np.ndarray) -> None:
        size = self.size
        a, r, y, x = np.random.random(4)
        area = size * size * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * a)
        ratio = math.exp(ERASE_LOG_RATIO[0] + (ERASE_LOG_RATIO[1] - ERASE_LOG_RATIO[0]) * r)
        eh = min(size, max(1, round(math.sqrt(area * ratio))))
        ew = min(size, max(1, round(math.sqrt(area / ratio))))
        top, left = int(y * (size - eh + 1)), int(x * (size - ew + 1))
        out[top:top + eh, left:left + ew] = 0


class AlbumentationsTrainTransform:
    """The training augmentations as an Albumentations pipeline (augment.backend = albumentations).

    Same parameters as TrainTransform: Affine (shift, scale, rotation, reflected border)
    or RandomResizedCrop, HorizontalFlip, RandomBrightnessContrast, Erasing, Resize.
    Albumentations keeps its own generator; it is seeded from NumPy's global generator
    in each process (which DataLoader seeds per worker), so runs stay reproducible.
    """

    def __init__(self, size: int, in_chans: int, aug: AugmentConfig):
        import albumentations as A

        _check(size, in_chans)
        self.size, self.in_chans, self.aug = size, in_chans, aug
        if aug.random_resized_crop > 0:
            geometry = [A.RandomResizedCrop((size, size), scale=(aug.random_resized_crop, 1.0), p=1.0)]
        else:
            geometry = [A.Affine(scale=(1 - aug.scale, 1 + aug.scale), translate_percent=(-aug.shift, aug.shift),
                                 rotate=(-aug.rotate, aug.rotate), border_mode=cv2.BORDER_REFLECT_101, p=1.0),
                        A.Resize(size, size)]
        self.pipeline = A.Compose(geometry + [
            A.HorizontalFlip(p=aug.hflip),
            A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast, p=1.0),
            A.Erasing(scale=ERASE_AREA, ratio=(0.3, 3.3), fill=0, p=aug.erasing),
        ])
        self._seeded_pid: int | None = None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self._seeded_pid != os.getpid():
            self.pipeline.set_random_seed(int(np.random.randint(2**31)))
            self._seeded_pid = os.getpid()
        image = _prepare(image, self.size, self.in_chans)
        return image_to_tensor(self.pipeline(image=image)["image"], self.in_chans)


def train_transform(size: int, in_chans: int, aug: AugmentConfig,
                    with_geometry: bool = False) -> TrainTransform | AlbumentationsTrainTransform:
    if aug.backend == "albumentations":
        if with_geometry:
            raise ConfigError("augment.backend = albumentations does not report the warp that frozen_cache "
                              "needs; use the fused backend or frozen_cache: false")
        return AlbumentationsTrainTransform(size, in_chans, aug)
    return TrainTransform(size, in_chans, aug, with_geometry)


def eval_transform(size: int, in_chans: int) -> EvalTransform:
    """Resize (INTER_AREA shrinking, bilinear enlarging) and scale to [0, 1]; grey repeated to 3 channels."""
    return EvalTransform(size, in_chans)
