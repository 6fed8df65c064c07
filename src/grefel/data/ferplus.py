"""FERPlus folder layout: ROOT/FER2013{Train,Valid,Test}/label.csv plus the 48x48 grey PNGs.

label.csv has no header; each row is `name,"(x, y, w, h)",` then the 10 vote
counts of grefel.labels.FERPLUS_VOTE_COLUMNS.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from grefel.data.cache import Fingerprint, cached_raw
from grefel.data.images import FER_SIZE, load_images
from grefel.data.raw import BadRow, RawData, csv_rows, existing_dir, stack_images
from grefel.data.source import DataSource
from grefel.data.votes import NUM_VOTE_COLUMNS
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES, FERPLUS_VOTE_COLUMNS

SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
LABEL_FIELDS = 2 + NUM_VOTE_COLUMNS


def parse_votes(fields: Sequence[str], where: str) -> list[float]:
    """The 10 vote counts of one row; an error names the column and what was expected."""
    votes = []
    for column, text in zip(FERPLUS_VOTE_COLUMNS, fields):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise DataError(f"{where}: vote column {column!r} is {text!r}, expected a non-negative count")
        votes.append(value)
    return votes


def load_raw(source: DataSource, split: str) -> RawData:
    root = existing_dir(source.root, "FERPlus data root (--data-root)")
    folder = root / SPLIT_FOLDERS[split]
    label_path = folder / "label.csv"
    if not label_path.is_file():
        present = [s for s, name in SPLIT_FOLDERS.items() if (root / name / "label.csv").is_file()]
        if present:
            raise DataError(f"{root}: no {split} split ({folder.name}/label.csv not found); this FERPlus root has "
                            f"{', '.join(present)}: pass --split {present[-1]}")
        raise DataError(f"{label_path}: not found; the FERPlus layout is ROOT/{folder.name}/label.csv "
                        f"with the PNGs beside it")
    content = label_path.read_bytes()
    text = _text(content, label_path)
    fingerprint = Fingerprint("ferplus", FER_SIZE)
    fingerprint.add_bytes(content)
    # Only the names are needed to stat the images; the full parse happens on a cache miss.
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": a CR-only file still splits into rows
    fingerprint.add_stats([folder / f[0].strip() for f in csv_rows(reader, label_path) if f and f[0].strip()])
    return cached_raw(source.cache_dir, source.use_cache, f"ferplus-{folder.name}", str(folder.resolve()),
                      fingerprint, lambda: _decode(folder, label_path, text))


def _text(content: bytes, label_path: Path) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label_path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _parse(text: str, label_path: Path) -> tuple[list[tuple[int, str, list[float]]], list[BadRow]]:
    rows: list[tuple[int, str, list[float]]] = []
    bad: list[BadRow] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    for fields in csv_rows(reader, label_path):
        line = reader.line_num
        if not fields:
            continue
        where = f"{label_path} line {line}"
        try:
            if len(fields) != LABEL_FIELDS:
                raise DataError(f"{where}: expected {LABEL_FIELDS} fields (image name, face box, "
                                f"{NUM_VOTE_COLUMNS} vote counts {', '.join(FERPLUS_VOTE_COLUMNS)}), "
                                f"got {len(fields)}")
            if not fields[0].strip():
                raise DataError(f"{where}: empty image name")
            rows.append((line, fields[0].strip(), parse_votes(fields[2:], where)))
        except DataError as exc:
            bad.append(BadRow(line, "bad_row", str(exc)))
    return rows, bad


def _decode(folder: Path, label_path: Path, text: str) -> RawData:
    rows, bad = _parse(text, label_path)
    decoded = load_images([folder / name for _, name, _ in rows], "grey", expect=FER_SIZE)
    images, good = stack_images(decoded, [line for line, _, _ in rows],
                                [f"{folder / name} ({label_path.name} line {line})" for line, name, _ in rows],
                                bad, (FER_SIZE, FER_SIZE))
    return RawData(
        origin=str(label_path),
        images=images,
        ids=[f"{folder.name}/{rows[p][1]}" for p in good],
        class_names=CANONICAL_CLASSES,
        votes=np.array([rows[p][2] for p in good], dtype=np.float64).reshape(-1, NUM_VOTE_COLUMNS),
        bad=sorted(bad, key=lambda b: b.line),
    )
