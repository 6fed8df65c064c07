"""`grefel model ...`: inspect the registered presets."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model presets")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    summary = sub.add_parser("summary", help="parameters, input size and GFLOPs of a preset, as JSON")
    summary.add_argument("--preset", required=True, help="a registered preset, e.g. grefel_small")
    summary.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a preset field, e.g. --set num_anchors=5")
    summary.set_defaults(func=run_summary)
    listing = sub.add_parser("list", help="the registered presets")
    listing.set_defaults(func=run_list)


def count_gflops(model, input_size: int, in_chans: int) -> float:
    """Forward FLOPs of one image in eval mode, counted by torch's FlopCounterMode (multiply-add = 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, in_chans, input_size, input_size))
    return counter.get_total_flops() / 1e9


def run_summary(args: argparse.Namespace) -> int:
    from grefel.config import parse_override
    from grefel.errors import ConfigError
    from grefel.models import create_model

    overrides = {}
    for text in args.set:
        path, value = parse_override(text)
        if len(path) != 1:
            raise ConfigError(f"--set {text!r}: model fields are not nested")
        overrides[path[0]] = value
    model = create_model(args.preset, **overrides)
    cfg = model.config
    summary = {
        "preset": args.preset,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params_feature_extractor": model.feature_extractor_parameters(),
        "input_size": [cfg.in_chans, cfg.input_size, cfg.input_size],
    }
    gflops = count_gflops(model, cfg.input_size, cfg.in_chans)
    # POSTER++ quotes multiply-accumulates (8.4 "GFLOPs" = 8.4 GMACs); we give both.
    summary.update(gflops=round(gflops, 3), gmacs=round(gflops / 2, 3))
    print(json.dumps(summary))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from grefel.models import list_models, model_spec

    for name in list_models():
        print(f"{name:16s} {model_spec(name).description}")
    return 0
