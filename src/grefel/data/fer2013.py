"""The original fer2013.csv (emotion, pixels, Usage), optionally relabelled by FERPlus's fer2013new.csv.

fer2013new.csv has one row per fer2013.csv row, in the same order: row i of
both files is the same image. Rows there with an empty `Image name` are not
faces. Without it the labels are the original 7 classes.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Iterator

import numpy as np

from grefel.data.cache import Fingerprint, cached_raw
from grefel.data.ferplus import parse_votes
from grefel.data.images import FER_SIZE, parse_pixels
from grefel.data.raw import BadRow, RawData, csv_rows, existing_file, parse_label_index
from grefel.data.source import DataSource
from grefel.data.votes import NUM_VOTE_COLUMNS
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES, FER2013_ORDER, FERPLUS_VOTE_COLUMNS, to_canonical

USAGE_SPLITS = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FERPLUS_COLUMNS = ("Usage", "Image name") + FERPLUS_VOTE_COLUMNS


def load_raw(source: DataSource, split: str) -> RawData:
    csv_path = existing_file(source.fer2013_csv, "fer2013.csv (--fer2013-csv)")
    if source.ferplus_csv:
        new_path: Path | None = existing_file(source.ferplus_csv, "fer2013new.csv (--ferplus-csv)")
    else:
        beside = csv_path.with_name("fer2013new.csv")
        new_path = beside if beside.is_file() else None
    fingerprint = Fingerprint("fer2013", split)
    fingerprint.add_file(csv_path)
    if new_path:
        fingerprint.add_file(new_path)
    identity = f"{csv_path.resolve()}|{new_path.resolve() if new_path else ''}|{split}"
    return cached_raw(source.cache_dir, source.use_cache, f"fer2013-{split}", identity, fingerprint,
                      lambda: _read(csv_path, new_path, split))


def _data_rows(reader, path: Path) -> Iterator[tuple[int, list[str]]]:
    for fields in csv_rows(reader, path):
        if fields:
            yield reader.line_num, fields


def _columns(path: Path, reader, required: tuple[str, ...]) -> dict[str, int]:
    header = [h.strip() for h in next(csv_rows(reader, path), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; "
                        f"expected a header with {', '.join(required)}")
    return {c: header.index(c) for c in required}


def _read(csv_path: Path, new_path: Path | None, split: str) -> RawData:
    try:
        return _read_rows(csv_path, new_path, split)
    except UnicodeDecodeError as exc:
        names = f"{csv_path} or {new_path}" if new_path else str(csv_path)
        raise DataError(f"{names}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_rows(csv_path: Path, new_path: Path | None, split: str) -> RawData:
    fer_to_canonical = to_canonical("fer2013")
    images: list[np.ndarray] = []
    ids: list[str] = []
    labels: list[int] = []
    votes: list[list[float]] = []
    bad: list[BadRow] = []
    not_face = 0
    with contextlib.ExitStack() as stack:
        reader = csv.reader(stack.enter_context(open(csv_path, newline="", encoding="utf-8")))
        col = _columns(csv_path, reader, FER2013_COLUMNS)
        new_rows: Iterator[tuple[int, list[str]]] | None = None
        if new_path:
            new_reader = csv.reader(stack.enter_context(open(new_path, newline="", encoding="utf-8")))
            new_col = _columns(new_path, new_reader, FERPLUS_COLUMNS)
            new_rows = _data_rows(new_reader, new_path)
        for line, fields in _data_rows(reader, csv_path):
            where = f"{csv_path} line {line}"
            usage = _field(fields, col["Usage"])
            if new_rows is not None:
                new_line, new_fields = next(new_rows, (None, None))
                if new_line is None:
                    raise _length_error(csv_path, line, new_path)
                new_usage = _field(new_fields, new_col["Usage"])
                if new_usage != usage:
                    raise DataError(f"{where} has Usage {usage!r} but {new_path} line {new_line} has "
                                    f"{new_usage!r}; the two files must list the same images in the same order")
            reason = "bad_usage"
            try:
                if usage not in USAGE_SPLITS:
                    raise DataError(f"{where}: field Usage is {usage!r}, expected one of {', '.join(USAGE_SPLITS)}")
                if USAGE_SPLITS[usage] != split:
                    continue
                if new_rows is not None:
                    reason = "bad_votes"
                    if len(new_fields) <= max(new_col.values()):  # a cut row, not a "not a face" row
                        raise DataError(f"{new_path} line {new_line}: expected {len(FERPLUS_COLUMNS)} fields "
                                        f"(Usage, Image name, 10 vote counts), got {len(new_fields)}")
                    if not _field(new_fields, new_col["Image name"]):
                        not_face += 1
                        continue
                    row_votes = parse_votes([_field(new_fields, new_col[c]) for c in FERPLUS_VOTE_COLUMNS],
                                            f"{new_path} line {new_line}")
                else:
                    reason = "bad_emotion"
                    label = parse_label_index(_field(fields, col["emotion"]), where, "emotion",
                                              fer_to_canonical, "fer2013")
                reason = "bad_pixels"
                image = parse_pixels(_field(fields, col["pixels"]), where)
            except DataError as exc:
                bad.append(BadRow(line, reason, str(exc)))
                continue
            images.append(image)
            ids.append(f"{csv_path.name}:{line}")
            if new_rows is not None:
                votes.append(row_votes)
            else:
                labels.append(label)
        if new_rows is not None and (extra := next(new_rows, None)) is not None:
            raise _length_error(new_path, extra[0], csv_path)
    return RawData(
        origin=str(csv_path),
        images=np.stack(images) if images else np.zeros((0, FER_SIZE, FER_SIZE), np.uint8),
        ids=ids,
        class_names=CANONICAL_CLASSES if new_path else tuple(c for c in CANONICAL_CLASSES if c in FER2013_ORDER),
        votes=np.array(votes, dtype=np.float64).reshape(-1, NUM_VOTE_COLUMNS) if new_path else None,
        labels=None if new_path else np.array(labels, dtype=np.int64),
        bad=bad,
        dropped={"not_a_face": not_face} if not_face else {},
    )


def _field(fields: list[str], index: int) -> str:
    # A short row reads as empty fields, which then fail their own checks with a clear message.
    return fields[index].strip() if index < len(fields) else ""


def _length_error(longer: Path, line: int, shorter: Path) -> DataError:
    return DataError(f"{longer} line {line}: no matching row in {shorter}; fer2013new.csv must have "
                     f"exactly one row per fer2013.csv row")

