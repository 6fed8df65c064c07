"""Re-fitting a trained model's linear classifier on its frozen features (classifier re-training).

A network trained end to end leaves its last layer fitted to augmented,
dropped-out features. Re-fitting that layer alone on the clean features of the
training images (the eval transform, the mirror averaged in as served) as a
multinomial logistic regression with an L2 penalty is the classifier
re-training of Kang et al. 2020 ("Decoupling Representation and Classifier for
Long-Tailed Recognition"); the README measures what it does to accuracy and
rare-class recall on FERPlus. The features are standardised (the scaling is
folded into the written layer) and the penalty is chosen by k-fold
cross-validation on the training split, never on the split that reports the
model; for an ensemble, by default one penalty for all members, the one whose
members' averaged logits (what the ensemble serves) cross-validate best. The
backbone is untouched; the re-fitted file is served at temperature 1 without
logit adjustment until `grefel calibrate` fits both.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from grefel.data import collate_samples, eval_transform, load_dataset
from grefel.data.dataset import FERDataset
from grefel.data.source import DataSource
from grefel.errors import ConfigError
from grefel.models import build_from_checkpoint
from grefel.models.model_file import checkpoint_paths, resolve_checkpoint, save_model_checkpoint
from grefel.models.serving import served_tta_flip
from grefel.progress import Progress


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, *,
                            start: tuple[torch.Tensor, torch.Tensor] | None = None, tol: float = 1e-5,
                            max_iter: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (K, D) and bias (K,) minimising C * sum of cross-entropies + ||W||^2 / 2 over (N, D) features
    and (N,) labels: scikit-learn's multinomial LogisticRegression(C) objective (bias not penalised).
    L-BFGS in float64 from `start` (default zero) until no gradient entry of the mean objective exceeds
    `tol`; the objective is strictly convex, so the start changes the time taken, not the answer."""
    if not (math.isfinite(c) and c > 0):
        raise ConfigError(f"C = {c:g}: expected a finite number > 0")
    x, y = x.double(), y.long()
    n, d = x.shape
    w0, b0 = start if start is not None else (torch.zeros(num_classes, d), torch.zeros(num_classes))
    w = w0.detach().double().clone().requires_grad_(True)
    b = b0.detach().double().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=tol, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # Divided by C * N so the scale of the loss, and so the gradient tolerance, does not grow with N.
        loss = F.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


# How C is chosen for a model with several heads: one for all, by the mean of their logits; or each its own.
C_CHOICES = ("ensemble", "head")


def check_search(grid: Sequence[float], folds: int, c_by: str = "ensemble") -> None:
    """A one-line ConfigError for a C grid, fold count or choice of C the search cannot use, before any work."""
    if c_by not in C_CHOICES:
        raise ConfigError(f"c_by = {c_by!r}: expected one of {', '.join(C_CHOICES)}")
    if folds < 2:
        raise ConfigError(f"folds = {folds}: expected at least 2")
    if not grid:
        raise ConfigError("the grid of C values is empty")
    bad = next((c for c in grid if not (math.isfinite(c) and c > 0)), None)
    if bad is not None:
        raise ConfigError(f"C = {bad:g} in the grid: expected finite numbers > 0")


@dataclass
class CVScores:
    """Mean held-out accuracy for each C of a grid: of each feature set's own classifier (`heads`), and of
    the mean of their logits (`combined`), which is what an ensemble of those classifiers serves."""
    heads: list[dict[float, float]]
    combined: dict[float, float]


def best_c(scores: dict[float, float]) -> float:
    """The C with the best accuracy; on a tie the smaller one, the stronger penalty."""
    return max(scores, key=lambda c: (scores[c], -c))


def cross_validate_c(xs: Sequence[torch.Tensor], y: torch.Tensor, num_classes: int, grid: Sequence[float],
                     folds: int = 5, seed: int = 0) -> CVScores:
    """Cross-validated accuracy, over `folds` folds stratified by class, of a logistic regression on each
    (N, D_i) feature set of `xs` and of the mean of their logits, for every C of `grid`."""
    check_search(grid, folds)
    generator = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    for k in range(num_classes):                  # deal each class's samples round the folds, shuffled
        members = np.flatnonzero(y.numpy() == k)
        fold_of[generator.permutation(members)] = np.arange(len(members)) % folds
    fold_of = torch.from_numpy(fold_of)
    grid = sorted(grid)
    correct = [dict.fromkeys(grid, 0) for _ in xs]
    combined = dict.fromkeys(grid, 0)
    for fold in range(folds):
        held = fold_of == fold
        logit_sum = {c: 0.0 for c in grid}
        for x, head_correct in zip(xs, correct):
            fit = None
            for c in grid:                        # strongest penalty first, each fit starting from the last
                fit = fit_logistic_regression(x[~held], y[~held], num_classes, c, start=fit)
                w, b = fit
                logits = x[held].double() @ w.T + b                      # (N_held, K)
                head_correct[c] += int((logits.argmax(1) == y[held]).sum())
                logit_sum[c] = logit_sum[c] + logits
        for c in grid:
            combined[c] += int((logit_sum[c].argmax(1) == y[held]).sum())
    return CVScores(heads=[{c: n / len(y) for c, n in hc.items()} for hc in correct],
                    combined={c: n / len(y) for c, n in combined.items()})


def linear_heads(model: nn.Module) -> list[nn.Linear]:
    """The model's final linear classifiers, in the order their inputs lie in its output's `embedding`."""
    heads = getattr(model, "linear_heads", None)
    if heads is None:
        raise ConfigError(f"{model.preset}: its classifier is not a linear layer on its embedding; "
                          f"refit takes cnn_baseline and cnn_ensemble models")
    return heads()


@torch.no_grad()
def frozen_embeddings(model: nn.Module, dataset: FERDataset, tta_flip: bool, batch_size: int = 128,
                      device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """(N, E) float64 embeddings of the dataset's images in order, in eval mode; with `tta_flip` the mean of
    each image's and its mirror's, which a linear head turns into the mean of their logits, as served."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    parts = []
    with Progress(len(dataset), "embedding", unit="images", period=30.0) as progress:
        for batch in loader:
            x = batch["image"].to(device)
            e = model(x).embedding.double()                                  # (B, E)
            if tta_flip:
                e = (e + model(x.flip(-1)).embedding.double()) / 2
            parts.append(e.cpu())
            progress.update(len(x))
    return torch.cat(parts)


def rounded(accuracy: dict[float, float]) -> dict[str, float]:
    """Accuracies by C as the JSON records them."""
    return {f"{c:g}": round(a, 6) for c, a in accuracy.items()}


@dataclass
class HeadFit:
    c: float
    cv_accuracy: dict[float, float]
    train_accuracy: float


def refit_heads(model: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor, grid: Sequence[float],
                folds: int, seed: int = 0, c_by: str = "ensemble",
                log: Callable[[str], None] = print) -> tuple[list[HeadFit], CVScores]:
    """Replace each linear head of `model` by a logistic regression fitted on its slice of `embeddings`.
    C is cross-validated: with `c_by` "ensemble" one C for every head, the best for the mean of their
    logits (what the model serves); with "head" each head's own best. Returns the fits and the CV scores."""
    check_search(grid, folds, c_by)
    heads, inputs, start = linear_heads(model), [], 0
    for head in heads:
        x = embeddings[:, start:start + head.in_features]                   # (N, D) this head's input
        start += head.in_features
        # Standardised, so that C means the same whatever the scale of the embedding (a fresh network's
        # is ~1e-3); a feature constant over the split keeps scale 1.
        mean, scale = x.mean(0), x.std(0)
        scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
        inputs.append((x, mean, scale))
    if start != embeddings.shape[1]:
        raise ConfigError(f"{model.preset}: its heads take {start} features, its embedding has {embeddings.shape[1]}")
    num_classes = heads[0].out_features
    standardised = [(x - mean) / scale for x, mean, scale in inputs]     # each (N, D_i)
    scores = cross_validate_c(standardised, labels, num_classes, grid, folds, seed)
    shared = best_c(scores.combined)
    named = [(f"head {i}", accuracy) for i, accuracy in enumerate(scores.heads)]
    if len(heads) > 1:
        named.append((f"mean logits of the {len(heads)} heads", scores.combined))
    for name, accuracy in named:
        log(f"{name}: cross-validated accuracy " + ", ".join(f"C {k:g}: {v:.4f}" for k, v in accuracy.items()))
    chosen = [shared if c_by == "ensemble" else best_c(accuracy) for accuracy in scores.heads]
    if len(grid) > 1 and any(c in (min(grid), max(grid)) for c in chosen):
        log("a chosen C is at the edge of the grid; a wider --c-grid may do better")
    fits = []
    for i, (head, (x, mean, scale), z, c) in enumerate(zip(heads, inputs, standardised, chosen)):
        w, b = fit_logistic_regression(z, labels, num_classes, c)
        w = w / scale                                                        # the same logits, of x itself
        b = b - w @ mean
        with torch.no_grad():
            head.weight.copy_(w.to(head.weight.dtype))
            head.bias.copy_(b.to(head.bias.dtype))
        train_accuracy = float(((x @ w.T + b).argmax(1) == labels).double().mean())
        log(f"head {i}: fitted at C = {c:g}; training accuracy {train_accuracy:.4f}")
        fits.append(HeadFit(c, scores.heads[i], train_accuracy))
    return fits, scores


def refit_classifier(checkpoint: str | os.PathLike | None, source: DataSource, output: str | os.PathLike, *,
                     grid: Sequence[float], folds: int = 5, seed: int = 0, c_by: str = "ensemble",
                     batch_size: int = 128, command: str | None = None, log: Callable[[str], None] = print) -> Path:
    """A copy of a model file (the shipped model when None) at `output` with its linear classifier(s) re-fitted
    on the training split's majority labels (see the module docstring); returns the stem written."""
    check_search(grid, folds, c_by)
    path = resolve_checkpoint(checkpoint)
    model, info = build_from_checkpoint(path)
    heads = linear_heads(model)
    dataset = load_dataset(source, "train", "majority")
    dataset.require_classes(len(info["class_names"]))
    dataset.transform = eval_transform(info["input"]["size"], info["input"]["channels"])
    flip = served_tta_flip(info)
    log(f"{path}: {len(heads)} linear head(s); embedding {len(dataset)} training images"
        + (" and their mirrors" if flip else ""))
    labels = torch.from_numpy(dataset.labels.astype(np.int64))
    fits, scores = refit_heads(model, frozen_embeddings(model, dataset, flip, batch_size), labels, grid, folds, seed,
                               c_by, log)
    training = dict(info.get("training", {}))
    training["refit"] = {
        "from": str(path), "from_weights_sha256": info.get("weights_sha256"),
        "method": "multinomial logistic regression on standardised frozen embeddings (L2, bias unpenalised), C by "
                  f"{folds}-fold cross-validation on the training split"
                  + (", one C for all heads, the best for their mean logits" if c_by == "ensemble" and len(fits) > 1
                     else ""),
        "split": "train", "label_mode": "majority", "samples": len(dataset), "tta_flip": flip, "seed": seed,
        # The prior the new heads learned, which `grefel calibrate --logit-adjustment` divides out.
        "class_counts": dataset.class_counts()[:len(info["class_names"])].tolist(),
        "c_by": c_by,
        "heads": [{"C": f.c, "cv_accuracy": rounded(f.cv_accuracy), "train_accuracy": round(f.train_accuracy, 6)}
                  for f in fits]}
    if len(fits) > 1:
        training["refit"]["ensemble_cv_accuracy"] = rounded(scores.combined)
    if command:
        training["refit"]["command"] = command
    # The trained head's figures, temperature and logit adjustment do not describe the new one.
    refitted = {k: v for k, v in info.items()
                if k not in ("metrics", "calibration", "logit_adjustment", "weights_sha256", "format")}
    refitted.update(temperature=1.0, training=training)
    stem = checkpoint_paths(output)
    save_model_checkpoint(stem, model, refitted)
    return stem

