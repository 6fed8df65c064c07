"""Derive grefel.alignment.ALIGN_TEMPLATE from FERPlus crops.

Aligned inference crops must look like the training crops, so the template is
where the five YuNet points sit in FERPlus faces, not a guess: the frozen
68-point landmark network is run over a seeded sample of train and valid crops
that no annotator flagged as "not a face", the 68 points are reduced to the
five YuNet points, and the per-coordinate median is taken (robust to the
landmark net's misses on profiles and occluded faces).

    python scripts/derive_alignment_template.py --data-root ../shared/datasets/ferplus \
        --weights ../shared/weights/mobilefacenet_landmark68.safetensors

Coordinates are in [0, 1] crop units, 0 and 1 being the crop's outer edges; the
landmark net uses the same convention, so its outputs are taken as they are.

Each crop is also run mirrored and the two answers averaged: measured against
its own answer on the mirrored crop, the net reads 0.016-0.019 crop widths too
far right on FERPlus crops (the script prints this bias), while YuNet, whose
points the template is applied to, is within 0.002 (nose tip 0.007; 287 valid
faces upscaled 4x into a grey canvas).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from grefel.errors import DataError
from grefel.fileio import load_state_dict
from grefel.models.mobilefacenet import MobileFaceNet

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("FER2013Train", "FER2013Valid")
POINT_NAMES = ("right eye", "left eye", "nose tip", "right mouth corner", "left mouth corner")


def ibug68_to_yunet5(points: torch.Tensor) -> torch.Tensor:
    """(B, 68, 2) iBUG points -> (B, 5, 2) in YuNet order.

    iBUG 36-41 and 48 are the subject's right eye and mouth corner, which are on
    the image's left, exactly like YuNet's first and fourth points.
    """
    return torch.stack([
        points[:, 36:42].mean(1),   # (B, 2) subject's right eye, image left
        points[:, 42:48].mean(1),   # (B, 2) subject's left eye, image right
        points[:, 30],              # (B, 2) nose tip
        points[:, 48],              # (B, 2) subject's right mouth corner, image left
        points[:, 54],              # (B, 2) subject's left mouth corner, image right
    ], dim=1)                       # (B, 5, 2)


def face_images(data_root: Path, split: str) -> list[Path]:
    """Crops of one split that no annotator voted "not a face" (last label.csv column)."""
    label_csv = data_root / split / "label.csv"
    if not label_csv.is_file():
        raise DataError(f"{label_csv}: not found; expected a FERPlus folder with {split}/label.csv")
    paths = []
    with open(label_csv, newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 12:
                raise DataError(f"{label_csv}: row {row_number}: expected 12 fields "
                                f"(image, box, 10 vote counts), got {len(row)}")
            if int(row[-1]) == 0:
                paths.append(data_root / split / row[0])
    return paths


def load_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None or image.shape != (48, 48):
        raise DataError(f"{path}: expected a readable 48x48 grey image")
    return image


@torch.no_grad()
def five_points(model: MobileFaceNet, paths: list[Path], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5, 2) points of each crop, and of its mirror image mapped back onto the crop."""
    direct, mirrored = [], []
    for start in range(0, len(paths), batch_size):
        grey = np.stack([load_grey(p) for p in paths[start:start + batch_size]])      # (B, 48, 48)
        x = torch.from_numpy(grey).float().div(255).unsqueeze(1)                        # (B, 1, 48, 48)
        x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)    # (B, 1, 112, 112)
        x = x.repeat(1, 3, 1, 1)                                                        # (B, 3, 112, 112)
        direct.append(ibug68_to_yunet5(model(x)))                                       # (B, 5, 2)
        # The mirrored face's right eye is this face's left eye, and mirroring maps x to 1 - x.
        back = ibug68_to_yunet5(model(x.flip(-1)))[:, [1, 0, 2, 4, 3]]                 # (B, 5, 2)
        back[..., 0] = 1 - back[..., 0]
        mirrored.append(back)
    return torch.cat(direct).numpy(), torch.cat(mirrored).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT.parent / "shared/datasets/ferplus")
    parser.add_argument("--weights", type=Path,
                        default=REPO_ROOT.parent / "shared/weights/mobilefacenet_landmark68.safetensors")
    parser.add_argument("--per-split", type=int, default=2000, help="faces sampled from each split")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = MobileFaceNet()
    model.load_state_dict(load_state_dict(args.weights), strict=True)
    model.eval()

    rng = np.random.default_rng(args.seed)
    paths = []
    for split in SPLITS:
        candidates = face_images(args.data_root, split)
        picks = rng.choice(len(candidates), size=min(args.per_split, len(candidates)), replace=False)
        paths += [candidates[i] for i in sorted(picks)]
    direct, mirrored = five_points(model, paths, args.batch_size)                       # (N, 5, 2) each
    points = (direct + mirrored) / 2                                                    # (N, 5, 2)

    median = np.median(points, axis=0)                                                  # (5, 2)
    q25, q75 = np.percentile(points, [25, 75], axis=0)                                  # (5, 2) each
    print(f"faces: {len(points)} ({args.per_split} per split requested, seed {args.seed})")
    for name, m, lo, hi in zip(POINT_NAMES, median, q25, q75):
        print(f"{name:>20}: x {m[0]:.4f} (IQR {lo[0]:.4f}-{hi[0]:.4f})  "
              f"y {m[1]:.4f} (IQR {lo[1]:.4f}-{hi[1]:.4f})")
    bias = np.median(direct - mirrored, axis=0)[:, 0] / 2                               # (5,)
    print("landmark net x bias, half the median direct - mirrored x:",
          " ".join(f"{b:+.4f}" for b in bias))
    print("median without mirror averaging:",
          " ".join(f"({x:.4f}, {y:.4f})" for x, y in np.median(direct, axis=0)))
    print("ALIGN_TEMPLATE rows:")
    for m in median:
        print(f"    [{m[0]:.4f}, {m[1]:.4f}],")


if __name__ == "__main__":
    main()
