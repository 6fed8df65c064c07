"""Write a dataset in the `csv` format (emotion,pixels) used by classic FER training scripts."""

from __future__ import annotations

from grefel.data.dataset import FERDataset
from grefel.data.images import FER_SIZE, resize_square, to_color
from grefel.fileio import atomic_open

_DIGITS = [str(v) for v in range(256)]


def convert_to_csv(dataset: FERDataset, path: str) -> None:
    """Images become 48x48 grey (resized / converted if they are not); emotion = `labels` (canonical)."""
    with atomic_open(path, "w") as handle:
        handle.write("emotion,pixels\n")
        for image, label in zip(dataset.images, dataset.labels.tolist()):
            grey = resize_square(to_color(image, "grey"), FER_SIZE)
            handle.write(f"{label},{' '.join([_DIGITS[v] for v in grey.ravel().tolist()])}\n")
