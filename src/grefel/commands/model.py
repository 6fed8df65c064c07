"""`grefel model ...`: the registered presets, their size, and the trained models at hand.

    grefel model presets                      the registered presets
    grefel model card [CHECKPOINT]            a model file's model card (Markdown)
    grefel model summary --preset NAME        parameters, input size and FLOPs of a preset, as JSON
    grefel model list [DIR...]                the shipped model and the checkpoints under runs/ and outputs/
    grefel model ensemble A B [...] --output X   one model file averaging trained cnn_baseline models
    grefel model refit [CHECKPOINT] --data-root R --output X   its linear classifier re-fitted on frozen features
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from grefel.commands.options import add_source_arguments, source_from_args
from grefel.errors import ConfigError, GrefelError

DEFAULT_DIRS = ("runs", "outputs")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="model presets and trained models")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    presets = sub.add_parser("presets", help="the registered presets")
    presets.set_defaults(func=run_presets)
    summary = sub.add_parser("summary", help="parameters, input size and GFLOPs of a preset, as JSON")
    summary.add_argument("--preset", required=True, help="a registered preset, e.g. grefel_small")
    summary.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a preset field, e.g. --set num_anchors=5")
    summary.set_defaults(func=run_summary)
    listing = sub.add_parser("list", help="the shipped model and local checkpoints with their validation metrics")
    listing.add_argument("dirs", nargs="*", help=f"folders to search for checkpoints (default: {', '.join(DEFAULT_DIRS)} "
                                                 "under the current folder, where present)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)
    card = sub.add_parser("card", help="the model card of a model file (the shipped model by default), as Markdown",
                          description="Print the model card of a model file: architecture and size, training data, "
                                      "its served figures on the validation split, intended uses, limits and "
                                      "licences (docs/model-card.md is the shipped model's).")
    card.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="X.safetensors (default: the shipped model)")
    card.set_defaults(func=run_card)
    ensemble = sub.add_parser("ensemble", help="one model file (cnn_ensemble) averaging the logits of trained "
                                               "cnn_baseline model files; calibrate it next")
    ensemble.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="two or more cnn_baseline model files")
    ensemble.add_argument("--output", required=True, help="where to write it (X.safetensors + X.json)")
    ensemble.set_defaults(func=run_ensemble)
    member = sub.add_parser("member", help="one member of an ensemble model file as a model file of its own "
                                           "(to serve alone, fine-tune with init_from, or compare)")
    member.add_argument("checkpoint", metavar="CHECKPOINT", help="a cnn_ensemble model file (X.safetensors)")
    member.add_argument("--index", type=int, required=True, help="which member, from 1")
    member.add_argument("--output", required=True, help="where to write it (X.safetensors + X.json)")
    member.set_defaults(func=run_member)
    refit = sub.add_parser("refit", help="re-fit a model file's linear classifier(s) on its frozen features of the "
                                         "training split (logistic regression, C cross-validated); calibrate it next",
                           description="Re-fit the linear classifier of a cnn_baseline model file (each member's, for "
                                       "a cnn_ensemble) as an L2 multinomial logistic regression on the frozen "
                                       "embeddings of the training split's images, C chosen by k-fold "
                                       "cross-validation on that split (for an ensemble, by default one C for all "
                                       "members, the best for their averaged logits). Writes a copy; the backbone "
                                       "is unchanged.")
    refit.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="X.safetensors (default: the shipped model)")
    refit.add_argument("--output", required=True, help="where to write the copy (X.safetensors + X.json)")
    refit.add_argument("--c-grid", type=float, nargs="+", metavar="C",
                       default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
                       help="inverse penalty strengths to cross-validate, as scikit-learn's C "
                            "(default: 0.001 0.003 0.01 0.03 0.1 0.3 1)")
    refit.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    refit.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    refit.add_argument("--c-by", choices=("ensemble", "head"), default="ensemble",
                       help="for a cnn_ensemble: one C for every member, the best for their averaged logits as the "
                            "file serves them (ensemble, the default), or each member's own best C (head)")
    add_source_arguments(refit, split_default=None)
    refit.set_defaults(func=run_refit)


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


def run_ensemble(args: argparse.Namespace) -> int:
    import shlex

    from grefel.models import ensemble_from_checkpoints
    from grefel.models.model_file import checkpoint_paths, save_model_checkpoint

    model, info = ensemble_from_checkpoints(args.checkpoints)
    info["training"]["command"] = shlex.join(["grefel", "model", "ensemble", *args.checkpoints, "--output", args.output])
    stem = checkpoint_paths(args.output)
    save_model_checkpoint(stem, model, info)         # atomic writes; the folder is made if missing
    print(f"{stem}.safetensors: {len(args.checkpoints)} members; temperature 1 until you run "
          f"`grefel calibrate --checkpoint {stem}.safetensors --data-root ...`")
    return 0


def run_member(args: argparse.Namespace) -> int:
    from grefel.models import ensemble_member
    from grefel.models.model_file import checkpoint_paths, save_model_checkpoint

    model, info = ensemble_member(args.checkpoint, args.index)
    stem = checkpoint_paths(args.output)
    save_model_checkpoint(stem, model, info)
    print(f"{stem}.safetensors: member {args.index} of {args.checkpoint}; temperature 1 until you run "
          f"`grefel calibrate --checkpoint {stem}.safetensors --data-root ...`")
    return 0


def run_refit(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from grefel.training.refit import refit_classifier

    if args.label_mode != "majority":
        raise ConfigError(f"--label-mode {args.label_mode}: refit fits majority labels")
    # The command line is known only when this runs as the grefel program (or python -m grefel), not when
    # main() is called from another program with its own argv.
    command = shlex.join(["grefel", *sys.argv[1:]]) if sys.argv[1:2] == ["model"] else None
    stem = refit_classifier(args.checkpoint, source_from_args(args), args.output,
                            grid=tuple(args.c_grid), folds=args.folds, seed=args.seed, c_by=args.c_by,
                            command=command)
    print(f"{stem}.safetensors: classifier re-fitted; temperature 1 and no logit adjustment until you run "
          f"`grefel calibrate --checkpoint {stem}.safetensors --data-root ...`")
    return 0


def run_card(args: argparse.Namespace) -> int:
    from grefel.models.model_card import render_model_card

    print(render_model_card(args.checkpoint), end="")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from grefel.models import list_models, model_spec

    for name in list_models():
        print(f"{name:16s} {model_spec(name).description}")
    return 0


def describe(path: Path, origin: str) -> dict[str, Any] | None:
    """One row for a checkpoint JSON, or None if the file is not a grefel model checkpoint."""
    from grefel.models.model_file import CHECKPOINT_FORMAT

    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        return None
    weights = path.with_suffix(".safetensors")
    # A calibrated file serves its calibration's figures (its logit adjustment moves accuracy, its temperature
    # the ECE), not those of the run that trained it; a file no run trained (an ensemble) has only those.
    calibration = info.get("calibration")
    if calibration and "accuracy" in calibration:  # files calibrated before 7c08b4a stored only T, NLL, ECE
        figures, ece, source = calibration, calibration.get("ece_after"), f"calibration ({calibration.get('split')})"
    else:
        figures = info.get("metrics", {}).get("valid", {})
        ece, source = figures.get("ece"), "training" if figures else None
    return {"origin": origin, "path": str(weights), "preset": info.get("preset"),
            "classes": len(info.get("class_names", [])), "accuracy": figures.get("accuracy"),
            "mean_class_accuracy": figures.get("mean_class_accuracy"), "macro_f1": figures.get("macro_f1"),
            "ece": ece, "figures": source, "temperature": info.get("temperature"),
            "size_mb": round(weights.stat().st_size / 1e6, 1) if weights.is_file() else None,
            "epoch": info.get("training", {}).get("epoch"), "warning": info.get("warning")}


def find_checkpoints(dirs: list[str]) -> list[dict[str, Any]]:
    from grefel.models.model_file import shipped_checkpoint

    rows = []
    shipped = shipped_checkpoint().with_suffix(".json")
    if shipped.is_file() and (row := describe(shipped, "shipped")):
        rows.append(row)
    for directory in dirs or [d for d in DEFAULT_DIRS if Path(d).is_dir()]:
        for path in sorted(Path(directory).rglob("*.json")):
            if path.with_suffix(".safetensors").is_file() and (row := describe(path, "local")):
                rows.append(row)
    return rows


def run_list(args: argparse.Namespace) -> int:
    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise GrefelError(f"{missing[0]}: no such folder")
    rows = find_checkpoints(args.dirs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'origin':8} {'preset':14} {'acc':>7} {'mca':>7} {'F1':>7} {'ECE':>7} {'T':>6} {'MB':>6} {'figures':19} path")
    for r in rows:
        print(f"{r['origin']:8} {r['preset']:14} {fmt(r['accuracy']):>7} {fmt(r['mean_class_accuracy']):>7} "
              f"{fmt(r['macro_f1']):>7} {fmt(r['ece']):>7} {r['temperature']:>6.3g} {r['size_mb'] or 0:>6} "
              f"{r['figures'] or '-':19} {r['path']}"
              + ("  [!] no better than guessing" if r["warning"] else ""))
    flagged = [r for r in rows if r["warning"]]
    for r in flagged:
        print(f"[!] {r['path']}: {r['warning']}")
    return 0
