"""`grefel train`: a YAML preset with `--set` overrides, run by grefel.training (single process or torchrun)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from grefel.cpu_memory import use_training_allocator
from grefel.devices import DEVICE_CHOICES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML preset",
        description="Train from a YAML preset with --set overrides. Under `torchrun --nproc_per_node N -m "
                    "grefel train ...` it runs DistributedDataParallel (NCCL on GPUs, gloo on CPU).")
    add_train_arguments(parser)
    parser.set_defaults(func=run_train_command)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset, e.g. configs/ferplus_small.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=3e-4 --set data.label_mode=crossentropy")
    parser.add_argument("--data-root", help="dataset root (sets data.source.root)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad rows of the data (counted in `dropped`) instead of failing "
                             "(sets data.source.skip_bad)")
    parser.add_argument("--output-dir", required=True, help="run directory (created)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    parser.add_argument("--amp", help="mixed precision: bf16, fp16 or off (default off). bf16 pays on GPUs and on "
                                      "CPUs with bf16 units (Intel AMX: cnn_baseline steps 2.2x faster, "
                                      "benchmarks/bench_models.py --amp); without them it is slower")
    parser.add_argument("--wandb", help="Weights & Biases: online, offline or off (default: online if an API "
                                        "key is configured, else offline; never blocks without network)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, help="auto (a GPU when there is one), cpu or cuda "
                                                                  "(default: the config's, auto)")


def run_train_command(args: argparse.Namespace) -> int:
    use_training_allocator()                   # before torch loads
    extra: dict[str, Any] = {}
    if args.data_root:
        extra["data.source.root"] = args.data_root
    for key in ("amp", "wandb", "device"):
        if getattr(args, key):
            extra[key] = getattr(args, key)
    if args.deterministic:
        extra["deterministic"] = True
    if args.skip_bad:
        extra["data.source.skip_bad"] = True
    from grefel.training import load_config, train

    cfg = load_config(args.config, args.set, extra)
    program = Path(sys.argv[0]).name
    program = "grefel" if program in ("grefel", "__main__.py") else program    # python -m grefel is grefel too
    command = " ".join(shlex.quote(a) for a in [program] + sys.argv[1:])
    try:
        train(cfg, Path(args.output_dir), resume=args.resume, overwrite=args.overwrite, command=command)
    except KeyboardInterrupt:
        print(f"grefel train: {interrupted_message(Path(args.output_dir), command)}", file=sys.stderr)
        return 130
    return 0


def interrupted_message(output_dir: Path, command: str) -> str:
    """What a stopped run tells its user: the command that continues it, when an epoch was saved."""
    if not (output_dir / "checkpoints" / "last.json").exists():
        return "interrupted before the first epoch ended; nothing was saved to resume from"
    again = [a for a in shlex.split(command) if a != "--overwrite"]
    again += [] if "--resume" in again else ["--resume"]
    return f"interrupted; the last finished epoch is saved, continue with:\n  {shlex.join(again)}"
