"""Rare classes on FERPlus valid: what post-hoc logit adjustment and averaging checkpoints do to them.

For each checkpoint (and, with several, their average), scores the valid split
as served (test-time flip, the checkpoint's own temperature) and reports
accuracy, mean class accuracy and the recall of disgust, fear and contempt,
with the served logits adjusted by -tau * log(training prior) (Menon et al.
2021, "Long-tail learning via logit adjustment") for each tau, as `grefel
calibrate --logit-adjustment TAU` serves them and with the prior it would store
(grefel.evaluation.fitted_class_counts: a re-fitted head's majority labels, else
the training run's labels). Checkpoints already adjusted are scored from their
raw logits; several are averaged as calibrated log-probabilities,
and the reliability head's corrected prediction where the model has one.

With --bias-class, it also adds each of --biases to that one class's adjusted
logit (at --bias-tau): how much accuracy a class's recall costs when only that
class is pushed, i.e. how separable the class is for the model.

    python benchmarks/rare_classes.py --checkpoint runs/a/checkpoints/best.safetensors \
        --checkpoint runs/b/checkpoints/best.safetensors --output-json rare.json
    python benchmarks/rare_classes.py --checkpoint runs/a/checkpoints/best.safetensors \
        --taus 0.2 --bias-class contempt --bias-tau 0.2 --biases 0.5 1 1.5 2 2.5 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from grefel.data import DataSource
from grefel.evaluation import fitted_class_counts, score_checkpoint
from grefel.fileio import atomic_write_json
from grefel.labels import CANONICAL_CLASSES
from grefel.metrics import accuracy, confusion_matrix, mean_class_accuracy, per_class_recall
from grefel.models.model_file import log_prior

RARE = ("disgust", "fear", "contempt")


def summary(log_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred = log_probs.argmax(1)
    cm = confusion_matrix(labels, pred, log_probs.shape[1])
    recall = per_class_recall(cm)
    out = {"accuracy": accuracy(labels, pred), "mean_class_accuracy": mean_class_accuracy(cm)}
    out.update({f"recall_{c}": float(recall[CANONICAL_CLASSES.index(c)]) for c in RARE})
    return out


def adjusted_rows(logits: np.ndarray, labels: np.ndarray, prior_logs: np.ndarray,
                  args: argparse.Namespace) -> dict[str, dict]:
    """A summary per tau of --taus, then per bias of --biases added to --bias-class's logit at --bias-tau."""
    rows = {f"tau {t:g}": summary(logits - t * prior_logs, labels) for t in args.taus}
    if args.bias_class:
        column = CANONICAL_CLASSES.index(args.bias_class)
        for bias in args.biases:
            pushed = logits - args.bias_tau * prior_logs
            pushed[:, column] += bias
            rows[f"tau {args.bias_tau:g} {args.bias_class} +{bias:g}"] = summary(pushed, labels)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="a model file; repeat to score several, each and their average")
    parser.add_argument("--data-root", default="../shared/datasets/ferplus")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--bias-class", choices=CANONICAL_CLASSES, help="push this class alone (see --biases)")
    parser.add_argument("--biases", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
                        help="added to --bias-class's logit after the adjustment of --bias-tau")
    parser.add_argument("--bias-tau", type=float, default=0.0)
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()

    source = DataSource(format="ferplus", root=args.data_root)
    served, corrected, log_priors, labels = [], [], [], None
    results: dict[str, dict] = {}
    priors: dict[str, list[int]] = {}
    for path in args.checkpoint:
        scored = score_checkpoint(path, source, "valid", "majority")
        info, preds = scored.info, scored.preds
        raw, labels = preds.served_logits(info["serve"]), preds.label   # before the file's adjustment or temperature
        # tau acts on these raw logits with the prior `grefel calibrate --logit-adjustment TAU` would store
        priors[path] = fitted_class_counts(info, source)
        log_priors.append(np.array(log_prior(priors[path])))            # the prior grefel.models.model_file.logit_shift uses
        results[path] = adjusted_rows(raw, labels, log_priors[-1], args)
        # models are averaged as calibrated log-probabilities
        served.append(torch.log_softmax(torch.from_numpy(raw).double() / float(info["temperature"]), -1).numpy())
        corrected.append(np.log(np.clip(preds.corrected, 1e-8, None)))
        if info["preset"] not in ("cnn_baseline", "cnn_ensemble", "face_baseline"):
            results[path]["reliability-corrected"] = summary(corrected[-1], labels)
    if len(served) > 1:   # the average of log-probabilities carries the average of the members' log priors
        results["average of all"] = adjusted_rows(np.mean(served, 0), labels, np.mean(log_priors, 0), args)
    for name, rows in results.items():
        print(name)
        for row, r in rows.items():
            print(f"  {row:26s} acc {r['accuracy'] * 100:6.2f}  MCA {r['mean_class_accuracy'] * 100:6.2f}  " +
                  "  ".join(f"{c} {r[f'recall_{c}'] * 100:5.1f}" for c in RARE))
    if args.output_json:
        atomic_write_json(args.output_json, {"command": " ".join(sys.argv), "train_class_counts": priors,
                                             "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
