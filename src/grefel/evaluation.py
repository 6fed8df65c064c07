"""Scoring a model file on a dataset split (`evaluate_checkpoint`) and fitting its temperature (`calibrate_checkpoint`).

Both score what the checkpoint serves: its served prediction, with the
test-time flip it was evaluated with unless told otherwise, its batch norms
folded as in inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from grefel.calibration import fit_temperature
from grefel.data import collate_samples, eval_transform, load_dataset
from grefel.data.dataset import FERDataset
from grefel.data.load import describe_split
from grefel.data.source import DataSource
from grefel.devices import resolve_device
from grefel.engine.loops import Amp, Predictions, anchors_of, metrics_report, predict
from grefel.labels import CANONICAL_CLASSES
from grefel.metrics import classification_report, expected_calibration_error, nll, vote_agreement
from grefel.models.model_file import logit_shift, resolve_checkpoint, update_checkpoint_info
from grefel.models.serving import ServingModel, served_tta_flip
from grefel.plots import plot_confusion_matrix, plot_reliability_diagram
from grefel.progress import Progress


@dataclass
class Scored:
    checkpoint: Path
    info: dict[str, Any]
    dataset: FERDataset
    preds: Predictions
    shared: list[int]          # canonical indices of the classes both the dataset and the model have
    tta_flip: bool
    split: str
    label_mode: str
    scored_what: str           # how the report names what was scored (folder or file)
    title: str                 # the same, short, for plot titles
    reliability_head: bool     # the model has GReFEL's anchors: its primary and corrected predictions differ


def score_checkpoint(checkpoint: str | Path | None, source: DataSource, split: str, label_mode: str = "majority", *,
                     batch_size: int = 32, workers: int = 2, tta_flip: bool | None = None,
                     device: str = "auto") -> Scored:
    """Predictions of a model file (the shipped model when None) on every sample of a split."""
    path = resolve_checkpoint(checkpoint)
    serving = ServingModel.from_checkpoint(path)           # read once; batch norms folded as in inference
    dev = resolve_device(device)
    model = serving.model.to(dev).to(memory_format=torch.channels_last)
    info = serving.info
    ds = load_dataset(source, split, label_mode)
    num_classes = len(info["class_names"])
    shared = [CANONICAL_CLASSES.index(name) for name in ds.class_names if CANONICAL_CLASSES.index(name) < num_classes]
    ds.require_classes(num_classes)
    ds.transform = eval_transform(info["input"]["size"], info["input"]["channels"])
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples)
    flip = served_tta_flip(info, tta_flip)                 # score what predict and serve return
    with Progress(len(loader), f"scoring {split}", unit="batches", period=10.0) as progress:
        preds = predict(model, loader, device=dev, amp=Amp("off", dev.type), tta_flip=flip,
                        on_batch=lambda: progress.update())
    return Scored(path, info, ds, preds, shared, flip, split, label_mode, *describe_split(source, split),
                  reliability_head=anchors_of(model) is not None)


def _renormalise(p: np.ndarray) -> np.ndarray:
    return p / p.sum(1, keepdims=True).clip(1e-12)


def evaluate_checkpoint(scored: Scored, serve: str | None = None, plots: str | Path | None = None) -> dict[str, Any]:
    """The report of `grefel evaluate`: metrics of the served prediction, primary and corrected accuracy,
    agreement with FERPlus's annotators, and the confusion matrix and reliability diagram under `plots`."""
    info, preds, ds, shared = scored.info, scored.preds, scored.dataset, scored.shared
    serve = serve or info["serve"]
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
    shift = logit_shift(info)
    shift = None if shift is None else [shift[c] for c in shared]
    report = metrics_report(preds, names, serve, float(info["temperature"]), shift)
    report.update(checkpoint=str(scored.checkpoint), split=scored.split, dataset=scored.scored_what,
                  label_mode=scored.label_mode, dropped=dict(ds.dropped),
                  tta_flip=scored.tta_flip, evaluated_classes=names,
                  logit_adjustment=(info.get("logit_adjustment") or {}).get("tau", 0.0),
                  reliability_head=scored.reliability_head)
    if note:
        report["note"] = note
    probs = torch.softmax(torch.from_numpy(preds.served_logits(serve, shift)).double() / report["temperature"],
                          -1).numpy()
    if ds.votes is not None and note is None:
        people = vote_agreement(probs, ds.votes[preds.index])
        report["agreement_with_people"] = {**people, "human_recall": dict(zip(names, people["human_recall"]))}
    if plots:
        plot_confusion_matrix(np.array(report["confusion_matrix"]), names, Path(plots) / "confusion_matrix.png",
                              title=f"{scored.title} ({report['num_samples']} samples)")
        plot_reliability_diagram(probs, preds.label, Path(plots) / "reliability_diagram.png",
                                 title=f"{scored.title}, T = {report['temperature']:.3g}")
    return report


def fitted_class_counts(info: dict[str, Any], source: DataSource) -> list[int]:
    """Per class, how many training labels the file's classifier was fitted on, whose prior a logit adjustment
    divides out: a re-fitted head's majority labels (`grefel model refit`), else the training run's labels,
    else (a file from before runs recorded them) the majority labels of `source`'s training split."""
    classes = len(info["class_names"])
    training = info.get("training", {})
    counts = training.get("refit", {}).get("class_counts") or training.get("data", {}).get("train_class_counts")
    if counts is None:
        counts = load_dataset(source, "train", "majority").class_counts().tolist()
    return [int(c) for c in counts[:classes]]


def calibrate_checkpoint(scored: Scored, output: str | Path | None = None,
                         logit_adjustment: tuple[float, list[int]] | None = None) -> tuple[dict[str, Any], Path]:
    """Fit temperature scaling on the scored split and write it into the checkpoint's JSON (or a calibrated
    copy at `output`); returns the fit's figures and the JSON written. `logit_adjustment` (tau, training
    class counts) is stored first and the temperature fitted on the adjusted logits; tau 0 removes it."""
    serve = scored.info["serve"]
    info = {k: v for k, v in scored.info.items() if k != "logit_adjustment"}
    if logit_adjustment is not None and logit_adjustment[0] > 0:
        tau, counts = logit_adjustment
        info["logit_adjustment"] = {"tau": float(tau), "train_class_counts": [int(c) for c in counts]}
    elif logit_adjustment is None and "logit_adjustment" in scored.info:
        info["logit_adjustment"] = scored.info["logit_adjustment"]
    logits = torch.from_numpy(scored.preds.served_logits(serve, logit_shift(info))).double()
    labels = torch.from_numpy(scored.preds.label)
    temperature = fit_temperature(logits, labels)
    before = torch.softmax(logits, -1).numpy()
    after = torch.softmax(logits / temperature, -1).numpy()
    # What the calibrated file now serves on this split (a logit adjustment moves these; the temperature does not)
    served = classification_report(after, scored.preds.label, scored.info["class_names"])
    result = {"temperature": temperature, "split": scored.split, "num_samples": len(labels), "serve": serve,
              "tta_flip": scored.tta_flip, "logit_adjustment": (info.get("logit_adjustment") or {}).get("tau", 0.0),
              "accuracy": served["accuracy"], "mean_class_accuracy": served["mean_class_accuracy"],
              "macro_f1": served["macro_f1"], "recall": served["per_class_recall"],
              "nll_before": nll(before, labels), "nll_after": nll(after, labels),
              "ece_before": expected_calibration_error(before, labels),
              "ece_after": expected_calibration_error(after, labels)}
    # The file serves what was calibrated: `--no-tta-flip` (or `--tta-flip`) also sets how it is served.
    info = {**info, "temperature": temperature, "tta_flip": scored.tta_flip,
            "calibration": {k: v for k, v in result.items() if k != "temperature"}}
    return result, update_checkpoint_info(scored.checkpoint, info, output)


def format_report(report: dict[str, Any]) -> str:
    names = report["class_names"]
    lines = [
        f"{report['num_samples']} samples of the {report['dataset']}, serving the {report['serve']} prediction"
        f" (T = {report['temperature']:.3g}"
        + (f", logit adjustment tau = {report['logit_adjustment']:g}" if report.get("logit_adjustment") else "") + ")",
        f"  accuracy             {report['accuracy']:.4f}",
        f"  mean class accuracy  {report['mean_class_accuracy']:.4f}",
        f"  macro F1             {report['macro_f1']:.4f}",
        f"  NLL                  {report['nll']:.4f}",
        f"  ECE (15 bins)        {report['ece']:.4f}",
    ]
    # The heads' own accuracies, before the logit adjustment and over every class the model has: shown where
    # they differ from the served one, and said what they are.
    if report.get("reliability_head"):
        lines += [f"  primary accuracy     {report['primary_accuracy']:.4f}  (argmax of the primary head l_p, "
                  f"no logit adjustment)",
                  f"  corrected accuracy   {report['corrected_accuracy']:.4f}  (argmax of the anchor-corrected "
                  f"distribution, no logit adjustment)"]
    elif report["primary_accuracy"] != report["accuracy"]:
        lines.append(f"  accuracy as trained  {report['primary_accuracy']:.4f}  (without the logit adjustment)")
    if report.get("dropped"):
        lines.append("  dropped samples      " + ", ".join(f"{k} {v}" for k, v in sorted(report["dropped"].items())))
    # One annotator's recall of each class beside the model's (FERPlus votes), where the data has votes.
    human = report.get("agreement_with_people", {}).get("human_recall")
    lines += [
        "",
        f"  {'class':<10} {'recall':>7} {'precision':>9} {'support':>8}" + (f" {'one annotator':>14}" if human else ""),
    ]
    cm = report["confusion_matrix"]
    fmt = lambda v: "   -   " if v is None else f"{v:7.4f}"  # noqa: E731
    for i, name in enumerate(names):
        rec, prec = report["per_class_recall"][name], report["per_class_precision"][name]
        lines.append(f"  {name:<10} {fmt(rec)} {fmt(prec):>9} {sum(cm[i]):>8}"
                     + (f" {fmt(human.get(name)):>14}" if human else ""))
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


