"""`grefel evaluate` and `grefel calibrate`: score a model file on a dataset split, fit its temperature."""

from __future__ import annotations

import argparse
import json
import sys

from grefel.commands.options import add_device_argument, add_source_arguments, source_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("evaluate", help="accuracy, per-class and calibration metrics of a checkpoint",
                               description="Evaluate a checkpoint (the shipped FERPlus model by default) on a split.")
    _common(ev, split_default="auto")
    ev.add_argument("--output-json", help="write the full report as JSON")
    ev.add_argument("--plots", help="directory for the confusion matrix and reliability diagram PNGs")
    ev.add_argument("--serve", choices=["primary", "corrected"], help="override the checkpoint's served prediction")
    ev.set_defaults(func=run_evaluate)

    cal = subparsers.add_parser("calibrate", help="fit the temperature of a checkpoint on validation data",
                                description="Fit temperature scaling (Guo et al. 2017) on a validation split and "
                                            "store it in the checkpoint's JSON.")
    _common(cal, split_default="valid")
    cal.add_argument("--output", help="write a calibrated copy here (X.safetensors + X.json) instead of in place")
    cal.add_argument("--logit-adjustment", type=float, metavar="TAU",
                     help="serve logits less TAU x log(training class prior) (0: as trained, 1: as if every class were "
                          "equally frequent; raises rare-class recall at some accuracy), stored with the temperature")
    cal.set_defaults(func=run_calibrate)


def _common(parser: argparse.ArgumentParser, split_default: str) -> None:
    parser.add_argument("--checkpoint", help="X.safetensors (with X.json beside it); default: the shipped model")
    add_source_arguments(parser, split_default=split_default)
    # 32: at 64 and above the landmark branch's 112 px activations outgrow glibc's reusable heap blocks, and
    # every batch pays for fresh zeroed pages (at 256, system time was 56% of the CPU time of a valid-split evaluation).
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image with its mirror (default: as the checkpoint serves); calibrate "
                             "stores it as the file's served setting")
    add_device_argument(parser)


def _score(args: argparse.Namespace):
    from grefel.data.load import available_splits
    from grefel.evaluation import score_checkpoint

    source = source_from_args(args)
    if args.split is None:
        present = available_splits(source)
        args.split = "test" if "test" in present else "valid" if "valid" in present else present[0] if present \
            else "test"   # none found: loading names what is missing
        if args.split != "test":
            print(f"grefel {args.command}: the data has no test split; scoring the {args.split} split",
                  file=sys.stderr)
    return score_checkpoint(args.checkpoint, source, args.split, args.label_mode,
                            batch_size=args.batch_size, workers=args.workers, tta_flip=args.tta_flip,
                            device=args.device)


def run_evaluate(args: argparse.Namespace) -> int:
    from grefel.evaluation import evaluate_checkpoint, format_report
    from grefel.fileio import atomic_write_json

    report = evaluate_checkpoint(_score(args), serve=args.serve, plots=args.plots)
    print(format_report(report))
    if args.output_json:
        atomic_write_json(args.output_json, report)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from grefel.errors import ConfigError
    from grefel.evaluation import calibrate_checkpoint, fitted_class_counts

    scored = _score(args)
    adjustment = None
    if args.logit_adjustment is not None:
        if not 0 <= args.logit_adjustment <= 2:
            raise ConfigError(f"--logit-adjustment {args.logit_adjustment}: expected a number in [0, 2]")
        adjustment = (args.logit_adjustment, fitted_class_counts(scored.info, source_from_args(args)))
    result, written = calibrate_checkpoint(scored, args.output, adjustment)
    print(json.dumps(result, indent=2))
    print(f"temperature {result['temperature']:.4f} written to {written}")
    return 0
