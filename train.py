"""The classic GReFEL training CLI, on grefel's engine.

    python train.py --train_csv train.csv --val_csv val.csv [--output_dir outputs] [--batch_size 32]
                    [--num_workers 4] [--epochs 50] [--lr 1e-4] [--weight_decay 1e-2]
                    [--num_classes 8] [--num_anchors 10] [--model grefel_vit]

The CSVs have `pixels` (48x48 space-separated grey values) and `emotion`
(0-7, FERPlus order: neutral, happiness, surprise, sadness, anger, disgust,
fear, contempt) columns; `grefel data convert` writes them from FERPlus.
Weights & Biases logs online when installed and logged in, else offline.
Everything else (YAML presets, resume, torchrun) is `grefel train`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_csv", required=True, help="training CSV (pixels, emotion)")
    parser.add_argument("--val_csv", required=True, help="validation CSV (pixels, emotion); selects the best model")
    parser.add_argument("--output_dir", default="outputs", help="run directory (default outputs)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=4, help="data loader workers (default 4, at most the "
                                                                       "cores there are)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=1e-2)
    parser.add_argument("--num_classes", type=int, default=8)
    parser.add_argument("--num_anchors", type=int, default=10)
    parser.add_argument("--model", default="grefel_vit",
                        help="model preset (default grefel_vit, the ViT-Base model of the classic GReFEL scripts, "
                             "95.5 M parameters, sized for GPUs; on a CPU choose cnn_baseline or grefel_small; "
                             "`grefel model presets`)")
    parser.add_argument("--skip_bad", "--skip-bad", action="store_true",
                        help="skip bad CSV rows (counted in the run's data summary) instead of failing")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output_dir")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from grefel.cpu_memory import use_training_allocator
    use_training_allocator()                   # before torch loads
    from grefel.commands.train import interrupted_message
    from grefel.errors import BadRowsError, GrefelError
    from grefel.models import model_config
    from grefel.training import load_config, train

    try:
        # Seed flags a preset has no field for (cnn_baseline has no anchors) are left out, not refused.
        fields = vars(model_config(args.model))
    except GrefelError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    model_args = {k: v for k, v in (("num_classes", args.num_classes), ("num_anchors", args.num_anchors))
                  if k in fields}
    extra = {
        "model": args.model,
        "model_args": model_args,
        "data.source.format": "csv", "data.train_csv": args.train_csv, "data.val_csv": args.val_csv,
        "data.source.skip_bad": args.skip_bad,
        "batch_size": args.batch_size, "num_workers": min(args.num_workers, len(os.sched_getaffinity(0))),
        "epochs": args.epochs,
        "optim.lr": args.lr, "optim.weight_decay": args.weight_decay, "wandb": "auto",
    }
    command = shlex.join(["python", "train.py"] + (argv if argv is not None else sys.argv[1:]))
    try:
        cfg = load_config(None, [], extra)
        train(cfg, Path(args.output_dir), resume=args.resume, overwrite=args.overwrite, command=command)
    except GrefelError as exc:
        print(f"train.py: error: {exc.for_option('--skip_bad') if isinstance(exc, BadRowsError) else exc}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"train.py: {interrupted_message(Path(args.output_dir), command)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
