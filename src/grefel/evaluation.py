"""`grefel evaluate` and `grefel calibrate`: score a checkpoint on a dataset split, fit its temperature."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from grefel.data.source import add_source_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("evaluate", help="accuracy, per-class and calibration metrics of a checkpoint",
                               description="Evaluate a checkpoint (the shipped FERPlus model by default) on a split.")
    _common(ev, split_default="test")
    ev.add_argument("--output-json", help="write the full report as JSON")
    ev.add_argument("--plots", help="directory for the confusion matrix and reliability diagram PNGs")
    ev.add_argument("--serve", choices=["primary", "corrected"], help="override the checkpoint's served prediction")
    ev.set_defaults(func=run_evaluate)

    cal = subparsers.add_parser("calibrate", help="fit the temperature of a checkpoint on validation data",
                                description="Fit temperature scaling (Guo et al. 2017) on a validation split and "
                                            "store it in the checkpoint's JSON.")
    _common(cal, split_default="valid")
    cal.add_argument("--output", help="write a calibrated copy here (X.safetensors + X.json) instead of in place")
    cal.set_defaults(func=run_calibrate)


def _common(parser: argparse.ArgumentParser, split_default: str) -> None:
    parser.add_argument("--checkpoint", help="X.safetensors (with X.json beside it); default: the shipped model")
    add_source_arguments(parser, split_default=split_default)
    # 32: at 64 and above the landmark branch's 112 px activations outgrow glibc's reusable heap blocks, and
    # every batch pays for fresh zeroed pages (at 256, system time was 56% of the CPU time of a valid-split evaluation).
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image with its mirror (default: as the checkpoint serves)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _predict(args: argparse.Namespace):
    """Load checkpoint and dataset, return (model info, dataset, predictions, shared class indices)."""
    import torch
    from torch.utils.data import DataLoader

    from grefel.checkpoint import build_from_checkpoint, resolve_checkpoint
    from grefel.data import collate_samples, eval_transform, load_dataset, source_from_args
    from grefel.engine import Amp, predict
    from grefel.errors import DataError
    from grefel.labels import CANONICAL_CLASSES
    from grefel.models.serving import fold_batchnorm, served_tta_flip

    path = resolve_checkpoint(args.checkpoint)
    model, info = build_from_checkpoint(path)
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model = fold_batchnorm(model).to(device).to(memory_format=torch.channels_last)
    ds = load_dataset(source_from_args(args), args.split, args.label_mode)
    num_classes = len(info["class_names"])
    shared = [CANONICAL_CLASSES.index(name) for name in ds.class_names if CANONICAL_CLASSES.index(name) < num_classes]
    if ds.labels.max() >= num_classes:
        raise DataError(f"the dataset has class {CANONICAL_CLASSES[int(ds.labels.max())]} that the model "
                        f"({num_classes} classes) cannot predict")
    ds.transform = eval_transform(info["input"]["size"], info["input"]["channels"])
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_samples)
    if args.tta_flip is None:   # score what predict and serve return
        args.tta_flip = served_tta_flip(info)
    preds = predict(model, loader, device=device, amp=Amp("off", device.type), tta_flip=args.tta_flip)
    return path, info, ds, preds, shared


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from grefel.engine import Predictions, metrics_report
    from grefel.fileio import atomic_write_json
    from grefel.labels import CANONICAL_CLASSES
    from grefel.metrics import plot_confusion_matrix, plot_reliability_diagram, vote_agreement

    path, info, ds, preds, shared = _predict(args)
    serve = args.serve or info["serve"]
    num_classes = len(info["class_names"])
    note = None
    if len(shared) < num_classes:
        # e.g. CK+ or FER2013 without contempt: score on the classes both share, renormalised.
        remap = {c: i for i, c in enumerate(shared)}
        preds = Predictions(preds.index, np.array([remap[int(y)] for y in preds.label]), preds.logits[:, shared],
                            _renormalise(preds.primary[:, shared]), _renormalise(preds.corrected[:, shared]))
        note = (f"evaluated on the {len(shared)} classes shared by the dataset and the {num_classes}-class model "
                f"({', '.join(CANONICAL_CLASSES[c] for c in shared)}); probabilities renormalised over them")
    names = [CANONICAL_CLASSES[c] for c in shared]
    report = metrics_report(preds, names, serve, float(info["temperature"]))
    report.update(checkpoint=str(path), split=args.split, label_mode=args.label_mode, tta_flip=args.tta_flip,
                  evaluated_classes=names)
    if ds.votes is not None and note is None:
        import torch
        probs = torch.softmax(torch.from_numpy(preds.served_logits(serve)).double() / report["temperature"], -1)
        report["agreement_with_people"] = vote_agreement(probs.numpy(), ds.votes[preds.index])
    if note:
        report["note"] = note
    print(format_report(report))
    if args.output_json:
        atomic_write_json(args.output_json, report)
    if args.plots:
        import torch
        probs = torch.softmax(torch.from_numpy(preds.served_logits(serve)).double() / report["temperature"], -1).numpy()
        plot_confusion_matrix(np.array(report["confusion_matrix"]), names, Path(args.plots) / "confusion_matrix.png",
                              title=f"{args.split} ({report['num_samples']} samples)")
        plot_reliability_diagram(probs, preds.label, Path(args.plots) / "reliability_diagram.png",
                                 title=f"{args.split}, T = {report['temperature']:.3g}")
    return 0


def _renormalise(p):
    return p / p.sum(1, keepdims=True).clip(1e-12)


def format_report(report: dict[str, Any]) -> str:
    names = report["class_names"]
    lines = [
        f"{report['num_samples']} samples, {report['split']} split, serving the {report['serve']} prediction"
        f" (T = {report['temperature']:.3g})",
        f"  accuracy             {report['accuracy']:.4f}",
        f"  mean class accuracy  {report['mean_class_accuracy']:.4f}",
        f"  macro F1             {report['macro_f1']:.4f}",
        f"  NLL                  {report['nll']:.4f}",
        f"  ECE (15 bins)        {report['ece']:.4f}",
        f"  primary accuracy     {report['primary_accuracy']:.4f}",
        f"  corrected accuracy   {report['corrected_accuracy']:.4f}",
        "",
        f"  {'class':<10} {'recall':>7} {'precision':>9} {'support':>8}",
    ]
    cm = report["confusion_matrix"]
    for i, name in enumerate(names):
        rec, prec = report["per_class_recall"][name], report["per_class_precision"][name]
        fmt = lambda v: "   -   " if v is None else f"{v:7.4f}"  # noqa: E731
        lines.append(f"  {name:<10} {fmt(rec)} {fmt(prec):>9} {sum(cm[i]):>8}")
    lines += ["", "  confusion matrix (rows true, columns predicted):",
              "  " + " " * 10 + "".join(f"{n[:6]:>7}" for n in names)]
    lines += [f"  {n:<10}" + "".join(f"{v:>7}" for v in row) for n, row in zip(names, cm)]
    if "agreement_with_people" in report:
        a = report["agreement_with_people"]
        lines += ["", f"  against the {a['faces_with_votes']} faces' annotator votes:",
                  f"  KL(votes || model)   {a['kl_from_votes']:.4f} nats",
                  f"  top-2 accuracy       {a['top2_accuracy']:.4f}",
                  f"  annotator agreement  {a['annotator_agreement']:.4f}  (share of annotators who chose the "
                  f"model's class)",
                  f"  human ceiling        {a['human_ceiling']:.4f}  (one annotator against the plurality of the "
                  f"others on the face)"]
    if report.get("note"):
        lines += ["", f"  note: {report['note']}"]
    return "\n".join(lines)


def run_calibrate(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from grefel.calibration import fit_temperature
    from grefel.checkpoint import checkpoint_paths
    from grefel.fileio import atomic_write_json
    from grefel.metrics import expected_calibration_error, nll

    path, info, ds, preds, shared = _predict(args)
    serve = info["serve"]
    logits = torch.from_numpy(preds.served_logits(serve)).double()
    labels = torch.from_numpy(preds.label)
    temperature = fit_temperature(logits, labels)
    before = torch.softmax(logits, -1).numpy()
    after = torch.softmax(logits / temperature, -1).numpy()
    result = {"temperature": temperature, "split": args.split, "num_samples": len(labels), "serve": serve,
              "tta_flip": args.tta_flip,
              "nll_before": nll(before, labels), "nll_after": nll(after, labels),
              "ece_before": expected_calibration_error(before, labels),
              "ece_after": expected_calibration_error(after, labels)}
    stem = checkpoint_paths(path)
    target = checkpoint_paths(args.output) if args.output else stem
    if target != stem:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stem.with_suffix(".safetensors"), target.with_suffix(".safetensors"))
    info = {**info, "temperature": temperature,
            "calibration": {k: v for k, v in result.items() if k != "temperature"}}
    atomic_write_json(target.with_suffix(".json"), info)
    print(json.dumps(result, indent=2))
    print(f"temperature {temperature:.4f} written to {target.with_suffix('.json')}")
    return 0
