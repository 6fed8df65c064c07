"""The `grefel` command line: one parser, one sub-command per module of this package.

The commands layer: each module registers its flags (`add_parser(subparsers)`)
and turns them into plain-argument calls of the library (`func(args) -> int`).
Library modules take no argparse namespaces. A command imports the library
when it runs, not when the parser is built: torch alone takes about 1.5 s to
import on these cores, which `grefel --help` and a mistyped flag need not pay.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from grefel import __version__
from grefel.errors import BadRowsError, GrefelError
from grefel.inference.backends import default_backend_line

COMMAND_MODULES = ("data", "model", "train", "evaluate", "export", "predict", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grefel",
        description="GReFEL facial expression recognition: data, models, training, evaluation, inference.",
        formatter_class=argparse.RawDescriptionHelpFormatter,   # --version's line stays one line
    )
    parser.add_argument("--version", action="version", version=f"grefel {__version__}; {default_backend_line()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"grefel.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GrefelError as exc:
        message = exc.for_option("--skip-bad") if isinstance(exc, BadRowsError) else exc
        print(f"grefel {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grefel {args.command}: interrupted", file=sys.stderr)
        return 130
