"""`grefel data summary` and `grefel data convert`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grefel.commands.options import add_source_arguments, source_from_args
from grefel.errors import DataError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect and convert FER datasets")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    summary = commands.add_parser("summary", help="print sample and class counts of one split as JSON")
    add_source_arguments(summary)
    summary.set_defaults(func=_summary)

    convert = commands.add_parser("convert", help="write a split (or train+valid) as emotion,pixels CSV")
    add_source_arguments(convert)
    out = convert.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", help="CSV file for --split")
    out.add_argument("--output-dir", help="folder to write train.csv and val.csv (train and valid splits)")
    convert.add_argument("--limit", type=int, help="keep only the first N samples of each split")
    convert.set_defaults(func=_convert)


def _summary(args: argparse.Namespace) -> int:
    from grefel.data import load_dataset
    from grefel.labels import CANONICAL_CLASSES

    dataset = load_dataset(source_from_args(args), args.split, args.label_mode)
    print(json.dumps({
        "num_samples": len(dataset),
        "class_names": list(CANONICAL_CLASSES),
        "class_counts": dataset.class_counts().tolist(),
        "dropped": dataset.dropped,
    }))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from grefel.data import convert_to_csv, load_dataset

    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit {args.limit}: expected a positive number of samples")
    source = source_from_args(args)
    if args.output:
        jobs = [(args.split, Path(args.output))]
    else:
        jobs = [("train", Path(args.output_dir) / "train.csv"), ("valid", Path(args.output_dir) / "val.csv")]
    written = {}
    for split, path in jobs:
        dataset = load_dataset(source, split, args.label_mode)
        if args.limit is not None:
            dataset = dataset.subset(range(min(args.limit, len(dataset))))
        convert_to_csv(dataset, str(path))
        written[str(path)] = len(dataset)
    print(json.dumps({"written": written}))
    return 0
