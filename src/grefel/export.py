"""`grefel export`: a checkpoint to ONNX (dynamic batch), calibrated probabilities out."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def export_checkpoint(checkpoint: str | os.PathLike | None, output: str | os.PathLike, opset: int = 17,
                      tta_flip: bool | None = None) -> Path:
    """Export the ServingModel of `checkpoint` (the shipped model when None) to `output`; `tta_flip`
    None keeps the checkpoint's test-time flip setting."""
    from grefel.checkpoint import resolve_checkpoint
    from grefel.models.serving import ServingModel, export_onnx

    serving = ServingModel.from_checkpoint(resolve_checkpoint(checkpoint), tta_flip)
    size, channels = serving.info["input"]["size"], serving.info["input"]["channels"]
    export_onnx(serving, output, (2, channels, size, size), opset=opset)
    return Path(output)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to ONNX",
                                   description="Write the checkpoint (the shipped model by default) as ONNX: input "
                                               "`image` (N, C, S, S) in [0, 1], output `probabilities` (N, classes), "
                                               "calibrated, dynamic batch.")
    parser.add_argument("--checkpoint", help="X.safetensors (with X.json); default: the shipped model")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each face with its mirror inside the graph (default: the checkpoint's setting)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = export_checkpoint(args.checkpoint, args.output, args.opset, args.tta_flip)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
