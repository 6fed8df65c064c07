"""What a format reader produces (and the cache stores): decoded images plus raw labels.

Label modes are applied afterwards, so one decoded copy serves every mode.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from grefel.data.images import ImageProblem
from grefel.data.votes import NUM_VOTE_COLUMNS, votes_to_targets
from grefel.errors import BadRowsError, DataError
from grefel.labels import NUM_CLASSES


@dataclass
class BadRow:
    line: int     # 1-based file line (or file position), orders the rows
    reason: str   # key counted in `dropped` when skipped
    message: str  # one line naming the file, row or field and what was expected


@dataclass
class RawData:
    origin: str                      # the file or folder read, for messages
    images: np.ndarray               # uint8 (N, H, W) grey or (N, H, W, 3) RGB, good rows only
    ids: list[str]
    class_names: tuple[str, ...]
    votes: np.ndarray | None = None  # float64 (N, 10) FERPlus vote counts (float64 as in the reference code)
    labels: np.ndarray | None = None  # int64 (N,) canonical class index
    bad: list[BadRow] = field(default_factory=list)  # in file order
    dropped: dict[str, int] = field(default_factory=dict)  # rows the format itself excludes

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W[, 3]), got {self.images.dtype} {self.images.shape}")
        if (self.votes is None) == (self.labels is None):
            raise ValueError("RawData needs exactly one of votes or labels")
        if len(self.ids) != n or len(self.votes if self.votes is not None else self.labels) != n:
            raise ValueError("RawData arrays disagree in length")
        if self.votes is not None and self.votes.shape[1:] != (NUM_VOTE_COLUMNS,):
            raise ValueError(f"votes must be (N, {NUM_VOTE_COLUMNS})")


def existing_dir(path: str | None, what: str) -> Path:
    if not path:
        raise DataError(f"no {what} given")
    if not Path(path).is_dir():
        raise DataError(f"{path}: {what} does not exist or is not a directory")
    return Path(path)


def existing_file(path: str | os.PathLike | None, what: str) -> Path:
    if not path:
        raise DataError(f"no {what} given")
    if not Path(path).is_file():
        raise DataError(f"{path}: {what} does not exist or is not a file")
    return Path(path)


def csv_rows(reader, path: Path) -> Iterator[list[str]]:
    """The rows of a csv reader; a file it cannot parse (an unclosed quote swallowing the rest of the
    file past the csv field limit) is a DataError instead of a csv.Error."""
    try:
        yield from reader
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not readable as CSV ({exc}); an unclosed quote?") from None


def printable(text: str) -> str:
    """`text` with line breaks and other control characters escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_label_index(text: str | None, where: str, field: str, mapping: list[int], order: str) -> int:
    """An integer label, 0-based in a source label order, -> canonical class index."""
    try:
        value = int(text or "")
    except ValueError:
        value = -1
    if not 0 <= value < len(mapping):
        raise DataError(f"{where}: field {field} is {text!r}, expected an integer 0-{len(mapping) - 1} "
                        f"({order} label order)")
    return mapping[value]


def stack_images(decoded: list[np.ndarray | ImageProblem], lines: list[int], names: list[str],
                 bad: list[BadRow], empty_shape: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
    """Stack decoded images; record a BadRow per failure. Returns (images, positions of the good rows).

    `names[i]` names row i for messages ("FER2013Train/x.png (label.csv line 3)").
    """
    good: list[int] = []
    for pos, item in enumerate(decoded):
        if isinstance(item, ImageProblem):
            bad.append(BadRow(lines[pos], item.reason, f"{printable(names[pos])}: {item}"))
        else:
            good.append(pos)
    images = np.stack([decoded[p] for p in good]) if good else np.zeros((0, *empty_shape), np.uint8)
    return images, good


def build_targets(raw: RawData, label_mode: str, skip_bad: bool) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Apply bad-row policy and the label mode: (kept row indices, (K, 8) targets, dropped counts)."""
    if raw.bad and not skip_bad:
        first = min(raw.bad, key=lambda b: b.line)
        raise BadRowsError(first.message)
    dropped = Counter(raw.dropped)
    dropped.update(b.reason for b in raw.bad)
    if raw.votes is not None:
        keep, targets, rule_drops = votes_to_targets(raw.votes, label_mode)
        dropped.update(rule_drops)
    else:
        if label_mode != "majority":
            raise DataError(f"{raw.origin}: label mode {label_mode!r} needs FERPlus vote counts; "
                            f"this source has one label per image, so use label mode 'majority'")
        keep = np.arange(len(raw.labels), dtype=np.int64)
        targets = np.eye(NUM_CLASSES, dtype=np.float32)[raw.labels]  # (N, 8) one-hot
    return keep, targets, dict(dropped)

