"""`grefel export`: a model file to ONNX (dynamic batch), calibrated probabilities out."""

from __future__ import annotations

import argparse


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
    from grefel.inference.backends import require_onnx_extra
    from grefel.models.model_file import resolve_checkpoint
    from grefel.models.serving import ServingModel

    require_onnx_extra("grefel export")
    path = ServingModel.from_checkpoint(resolve_checkpoint(args.checkpoint), args.tta_flip).export_onnx(
        args.output, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
