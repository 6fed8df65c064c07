"""`load_dataset`: one split of any supported format, decoded once (then cached), as a FERDataset."""

from __future__ import annotations

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
