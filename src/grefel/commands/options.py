"""Flags several commands share: where the data comes from, and the device."""

from __future__ import annotations

import argparse

from grefel.data.source import FORMATS, LABEL_MODES, SPLITS, DataSource
from grefel.devices import DEVICE_CHOICES
from grefel.labels import LABEL_ORDERS


def add_device_argument(parser: argparse.ArgumentParser, help_extra: str = "") -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="auto (a GPU when there is one), cpu or cuda" + help_extra)


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
    if split_default == "auto":
        g.add_argument("--split", help=f"{', '.join(SPLITS)} (default: test where the data has it, else valid)")
    elif split_default is not None:
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
