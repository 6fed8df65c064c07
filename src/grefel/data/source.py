"""Where a dataset comes from (`DataSource`, also the `data:` config section) and `load_dataset`.

This module stays light (no torch, no cv2 at import) because every CLI
command imports it to register its flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grefel.errors import DataError
from grefel.labels import LABEL_ORDERS

if TYPE_CHECKING:
    from grefel.data.dataset import FERDataset

FORMATS = ("ferplus", "fer2013", "csv", "folder")
SPLITS = ("train", "valid", "test")
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
COLORS = ("grey", "rgb")


@dataclass(frozen=True)
class DataSource:
    format: str = "ferplus"
    root: str | None = None          # ferplus: ROOT with FER2013{Train,Valid,Test}/; folder: image root;
                                     # csv: folder with train.csv / val.csv / test.csv
    csv: str | None = None           # csv format: one CSV file (then the split is only a name)
    fer2013_csv: str | None = None
    ferplus_csv: str | None = None   # fer2013new.csv; default: looked for beside fer2013_csv
    list_file: str | None = None     # folder format: `path,label` lines, paths relative to `root` or the list file
    label_order: str = "canonical"   # how integer labels in a list file are read (key of LABEL_ORDERS)
    image_size: int | None = None    # folder format: decode size (square); default 100
    color: str | None = None         # "grey" | "rgb"; default grey, rgb for folder
    skip_bad: bool = False
    cache_dir: str | None = None     # default $GREFEL_CACHE_DIR, else ~/.cache/grefel
    use_cache: bool = True

    def resolved_color(self) -> str:
        return self.color or ("rgb" if self.format == "folder" else "grey")

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown data format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.color is not None and self.color not in COLORS:
            raise DataError(f"unknown color {self.color!r}; expected one of {', '.join(COLORS)}")
        if self.label_order not in LABEL_ORDERS:
            raise DataError(f"unknown label order {self.label_order!r}; expected one of {', '.join(LABEL_ORDERS)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise DataError(f"image size {self.image_size!r}: expected an integer of at least 8 pixels")


def load_dataset(source: DataSource, split: str, label_mode: str = "majority") -> FERDataset:
    """Load one split as a FERDataset (decoded once, then from the cache)."""
    from grefel.data import csvfile, fer2013, ferplus, folder
    from grefel.data.dataset import FERDataset
    from grefel.data.images import to_color
    from grefel.data.raw import build_targets

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


def add_source_arguments(parser: argparse.ArgumentParser, *, split_default: str | None = "valid") -> None:
    """Register the data-source flags; `source_from_args` reads them back.

    Choices are checked by `load_dataset` (one-line DataError), not argparse,
    so a bad value fails the same way from the CLI and from a config.
    """
    g = parser.add_argument_group("data source")
    g.add_argument("--format", default="ferplus", help=f"dataset format: {', '.join(FORMATS)} (default ferplus)")
    g.add_argument("--data-root", help="ferplus: ROOT with FER2013Train/...; folder: image root; "
                                       "csv: folder with train.csv/val.csv/test.csv")
    g.add_argument("--csv", help="csv format: one CSV file with emotion,pixels columns")
    g.add_argument("--fer2013-csv", help="fer2013 format: the original fer2013.csv")
    g.add_argument("--ferplus-csv", help="fer2013 format: fer2013new.csv (default: beside --fer2013-csv)")
    g.add_argument("--list-file", help="folder format: file of `path,label` lines")
    g.add_argument("--label-order", default="canonical",
                   help=f"integer labels in --list-file: {', '.join(LABEL_ORDERS)} (default canonical)")
    g.add_argument("--image-size", type=int, help="folder format: decode size in pixels (default 100)")
    g.add_argument("--color", help="grey or rgb (default grey; rgb for folder)")
    if split_default is not None:
        g.add_argument("--split", default=split_default, help=f"{', '.join(SPLITS)} (default {split_default})")
    g.add_argument("--label-mode", default="majority",
                   help=f"FERPlus label mode: {', '.join(LABEL_MODES)} (default majority)")
    g.add_argument("--skip-bad", action="store_true", help="skip bad rows (counted in `dropped`) instead of failing")
    g.add_argument("--cache-dir", help="decoded-data cache (default $GREFEL_CACHE_DIR or ~/.cache/grefel)")
    g.add_argument("--no-cache", action="store_true", help="decode from the source files, read no cache")


def source_from_args(args: argparse.Namespace) -> DataSource:
    return DataSource(
        format=args.format, root=args.data_root, csv=args.csv, fer2013_csv=args.fer2013_csv,
        ferplus_csv=args.ferplus_csv, list_file=args.list_file, label_order=args.label_order,
        image_size=args.image_size, color=args.color, skip_bad=args.skip_bad,
        cache_dir=args.cache_dir, use_cache=not args.no_cache,
    )
