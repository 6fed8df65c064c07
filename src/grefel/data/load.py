"""`load_dataset`: one split of any supported format, decoded once (then cached), as a FERDataset."""

from __future__ import annotations

from pathlib import Path

from grefel.data import csvfile, fer2013, ferplus, folder
from grefel.data.dataset import FERDataset
from grefel.data.images import to_color
from grefel.data.raw import build_targets
from grefel.data.source import LABEL_MODES, SPLITS, DataSource
from grefel.errors import DataError


def load_dataset(source: DataSource, split: str, label_mode: str = "majority") -> FERDataset:
    """Load one split as a FERDataset (decoded once, then from the cache)."""
    source.validate()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if label_mode not in LABEL_MODES:
        raise DataError(f"unknown label mode {label_mode!r}; expected one of {', '.join(LABEL_MODES)}")
    color = source.resolved_color()
    if source.format == "folder":
        raw = folder.load_raw(source, split, color)
    else:
        raw = {"ferplus": ferplus, "fer2013": fer2013, "csv": csvfile}[source.format].load_raw(source, split)
    keep, targets, dropped = build_targets(raw, label_mode, source.skip_bad)
    if len(keep) == 0:
        raise DataError(f"{raw.origin}: split {split!r} has no samples after filtering "
                        f"(label mode {label_mode}, dropped {dropped or 'none'})")
    images = to_color(raw.images[keep], color, stack=True)  # (K, H, W) or (K, H, W, 3)
    return FERDataset(images, targets, [raw.ids[k] for k in keep], raw.class_names, label_mode, dropped,
                      votes=None if raw.votes is None else raw.votes[keep])


def available_splits(source: DataSource) -> list[str]:
    """The splits `source` holds, by the files and folders present (nothing is decoded). A single CSV,
    fer2013.csv (one file with a Usage column) and a list file answer every split."""
    root = Path(source.root) if source.root else None
    if source.format == "ferplus" and root is not None:
        return [s for s in SPLITS if (root / ferplus.SPLIT_FOLDERS[s] / "label.csv").is_file()]
    if source.format == "csv" and not source.csv and root is not None:
        return [s for s in SPLITS if (root / csvfile.SPLIT_FILES[s]).is_file()]
    if source.format == "folder" and not source.list_file and root is not None and root.is_dir():
        names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
        split_dirs = [s for s in SPLITS if names & set(folder.SPLIT_DIRS[s])]
        return split_dirs or list(SPLITS)      # no split folders: the root itself serves any split
    return list(SPLITS)


def describe_split(source: DataSource, split: str) -> tuple[str, str]:
    """How a report names what it scored, at length and as a plot title: the FERPlus folder, the CSV
    file, the image folder or list file; a split is named only where it picks a part of the data."""
    root = Path(source.root) if source.root else None
    if source.format == "ferplus" and root is not None:
        return f"FERPlus {split} split ({root / ferplus.SPLIT_FOLDERS[split]})", f"FERPlus {split}"
    if source.format == "csv":
        path = Path(source.csv) if source.csv else root / csvfile.SPLIT_FILES[split]
        return f"CSV file {path}", path.name
    if source.format == "folder" and source.list_file:
        return f"list file {source.list_file}", Path(source.list_file).name
    if source.format == "folder":
        names = {p.name.lower() for p in root.iterdir() if p.is_dir()} if root and root.is_dir() else set()
        if names & {n for dirs in folder.SPLIT_DIRS.values() for n in dirs}:
            return f"image folder {root} ({split} split)", f"{root.name} {split}"
        return f"image folder {root}", root.name if root else "image folder"
    return f"fer2013.csv {split} rows ({source.fer2013_csv})", f"FER2013 {split}"
