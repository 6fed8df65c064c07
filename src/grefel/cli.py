"""The `grefel` command line: one parser, one sub-command per module.

Each command module exposes `add_parser(subparsers)`, which registers its
arguments and sets `func(args) -> int`. Modules keep heavy imports inside
their `func` so `grefel --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from grefel.errors import GrefelError

COMMAND_MODULES = (
    "grefel.data.cli",
    "grefel.models.cli",
    "grefel.training",
    "grefel.evaluation",
    "grefel.export",
    "grefel.inference.cli",
    "grefel.serve.cli",
    "grefel.model_store",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grefel",
        description="GReFEL facial expression recognition: data, models, training, evaluation, inference.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GrefelError as exc:
        print(f"grefel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grefel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
