"""The classic training-script CSV: columns `emotion` (0-7, canonical order) and `pixels` (48x48 grey).

One file per split: train.csv / val.csv / test.csv in `root`, or one file given directly.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from grefel.data.cache import Fingerprint, cached_raw
from grefel.data.images import FER_SIZE, parse_pixels
from grefel.data.raw import BadRow, RawData, csv_rows, existing_dir, existing_file, parse_label_index
from grefel.data.source import DataSource
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES, NUM_CLASSES

SPLIT_FILES = {"train": "train.csv", "valid": "val.csv", "test": "test.csv"}
REQUIRED_COLUMNS = ("emotion", "pixels")
CANONICAL_INDICES = list(range(NUM_CLASSES))


def load_raw(source: DataSource, split: str) -> RawData:
    if source.csv:
        path = existing_file(source.csv, "CSV file (--csv)")
    else:
        folder = existing_dir(source.root, "CSV folder (--data-root with train.csv / val.csv / test.csv) "
                                           "or CSV file (--csv)")
        path = existing_file(folder / SPLIT_FILES[split], f"{split} split file {SPLIT_FILES[split]}")
    fingerprint = Fingerprint("csv")
    fingerprint.add_file(path)
    return cached_raw(source.cache_dir, source.use_cache, f"csv-{path.stem}", str(path.resolve()),
                      fingerprint, lambda: _read(path))


def _read(path: Path) -> RawData:
    try:
        return _read_rows(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_rows(path: Path) -> RawData:
    images: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    bad: list[BadRow] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; "
                            f"expected a header with {', '.join(REQUIRED_COLUMNS)}")
        reader.fieldnames = header
        for row in csv_rows(reader, path):
            line = reader.line_num
            where = f"{path} line {line}"
            reason = "bad_emotion"
            try:
                label = parse_label_index(row["emotion"], where, "emotion", CANONICAL_INDICES, "canonical")
                reason = "bad_pixels"
                image = parse_pixels(row["pixels"] or "", where)
            except DataError as exc:
                bad.append(BadRow(line, reason, str(exc)))
                continue
            images.append(image)
            labels.append(label)
            ids.append(f"{path.name}:{line}")
    return RawData(
        origin=str(path),
        images=np.stack(images) if images else np.zeros((0, FER_SIZE, FER_SIZE), np.uint8),
        ids=ids,
        class_names=CANONICAL_CLASSES,
        labels=np.array(labels, dtype=np.int64),
        bad=bad,
    )

