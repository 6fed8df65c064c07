"""Image folders: ROOT/<class>/*.{png,jpg,...} (ImageFolder), or a list file of `path,label` lines.

If ROOT holds split folders (train/, valid/ or val/, test/) the split picks one;
otherwise ROOT is the whole dataset and the split is only a name. Class folder
names and list-file names go through grefel.labels synonyms.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from grefel.data.cache import Fingerprint, cached_raw
from grefel.data.headers import EXTENSIONS
from grefel.data.images import load_images
from grefel.data.raw import BadRow, RawData, csv_rows, existing_dir, existing_file, parse_label_index, stack_images
from grefel.data.source import DataSource
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES, canonical_index, to_canonical

SPLIT_DIRS = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
DEFAULT_IMAGE_SIZE = 100  # RAF-DB aligned faces

Entry = tuple[int, Path, int, str, str]  # (file line or position, image path, canonical label, id, where)


def load_raw(source: DataSource, split: str, color: str) -> RawData:
    size = source.image_size or DEFAULT_IMAGE_SIZE
    fingerprint = Fingerprint("folder", size, color)
    if source.list_file:
        list_path = existing_file(source.list_file, "list file (--list-file)")
        base = existing_dir(source.root, "image root (--data-root)") if source.root else list_path.parent
        content = list_path.read_bytes()
        entries, bad = _parse_list(content, list_path, base, source.label_order)
        fingerprint.add_bytes(content)
        fingerprint.add(source.label_order, str(base.resolve()))
        origin, identity = list_path, f"{list_path.resolve()}|{base.resolve()}"
    else:
        root = existing_dir(source.root, "image folder root (--data-root)")
        entries, bad = _scan(root, split), []
        origin, identity = root, f"{root.resolve()}|{split}"
    fingerprint.add_stats(e[1] for e in entries)
    return cached_raw(source.cache_dir, source.use_cache, f"folder-{Path(origin).stem}", identity, fingerprint,
                      lambda: _decode(str(origin), entries, bad, size, color))


def _scan(root: Path, split: str) -> list[Entry]:
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    split_dirs = [name for names in SPLIT_DIRS.values() for name in names if name in subdirs]
    base = root
    if split_dirs:
        base = next((subdirs[n] for n in SPLIT_DIRS[split] if n in subdirs), None)
        if base is None:
            raise DataError(f"{root}: has split folders ({', '.join(split_dirs)}) but none for split {split!r}; "
                            f"expected {' or '.join(n + '/' for n in SPLIT_DIRS[split])}")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{base}: no class folders; expected {base}/<class>/*.png (class names such as happy, sad)")
    entries: list[Entry] = []
    for folder in class_dirs:
        label = canonical_index(folder.name, where=f"class folder {folder}")
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file())
        entries += [(len(entries) + k + 1, f, label, f.relative_to(root).as_posix(), str(f))
                    for k, f in enumerate(files)]
    return entries


def _parse_list(content: bytes, list_path: Path, base: Path, label_order: str) -> tuple[list[Entry], list[BadRow]]:
    mapping = to_canonical(label_order)
    entries: list[Entry] = []
    bad: list[BadRow] = []
    try:
        reader = csv.reader(io.StringIO(content.decode("utf-8"), newline=""))
    except UnicodeDecodeError as exc:
        raise DataError(f"{list_path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    for fields in csv_rows(reader, list_path):
        line = reader.line_num
        if not fields or (not entries and not bad and [f.strip().lower() for f in fields] == ["path", "label"]):
            continue  # blank line or the optional header
        where = f"{list_path} line {line}"
        reason = "bad_row"
        try:
            if len(fields) != 2 or not fields[0].strip():
                raise DataError(f"{where}: expected 2 fields `path,label`, got {len(fields)}: "
                                f"{','.join(fields)[:80]!r}")
            name, text = fields[0].strip(), fields[1].strip()
            reason = "bad_label"
            if text.lstrip("+-").isdigit():
                label = parse_label_index(text, where, "label", mapping, label_order)
            else:
                label = canonical_index(text, where=f"{where}: field label")
        except DataError as exc:
            bad.append(BadRow(line, reason, str(exc)))
            continue
        entries.append((line, base / name, label, name, f"{base / name} ({list_path.name} line {line})"))
    return entries, bad


def _decode(origin: str, entries: list[Entry], bad: list[BadRow], size: int, color: str) -> RawData:
    bad = list(bad)
    decoded = load_images([e[1] for e in entries], color, size=size)
    shape = (size, size) if color == "grey" else (size, size, 3)
    images, good = stack_images(decoded, [e[0] for e in entries], [e[4] for e in entries], bad, shape)
    labels = np.array([entries[p][2] for p in good], dtype=np.int64)
    present = set(labels.tolist())
    return RawData(
        origin=origin,
        images=images,
        ids=[entries[p][3] for p in good],
        class_names=tuple(c for i, c in enumerate(CANONICAL_CLASSES) if i in present),
        labels=labels,
        bad=sorted(bad, key=lambda b: b.line),
    )
