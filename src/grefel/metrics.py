"""Classification and calibration metrics for evaluation reports (numpy; plots are in grefel.plots).

Inputs may be numpy arrays, sequences or torch tensors; outputs are plain
Python floats or numpy arrays, so a report goes straight to JSON. Classes are
column indices 0..C-1 of `probs` (the canonical order unless a caller
restricted it with `restrict_to_classes`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from grefel.errors import DataError

# bfloat16 softmax rows (mixed precision) sum to 1 only within a few 1e-3;
# logits or unnormalised scores, the mistakes worth catching, are far off.
_ROW_SUM_ATOL = 1e-2


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; metrics need no torch of their own
        x = x.detach().cpu()
        # numpy has no bfloat16, and float64 keeps sums and logs accurate.
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _labels(y: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """Validated 1-D int64 class indices."""
    arr = _as_numpy(y)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if num_classes is not None:
        bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
        if bad.size:
            raise DataError(f"{name}: class index {arr[bad[0]]} at position {bad[0]} "
                            f"is outside 0..{num_classes - 1}")
    return arr


def _probs(probs: Any) -> np.ndarray:
    """Validated (N, C) float64 probabilities, rows summing to 1."""
    arr = _as_numpy(probs)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"probs: expected an (N, C) array of class probabilities, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1) | (arr < 0).any(axis=1)
                         | (np.abs(arr.sum(axis=1) - 1.0) > _ROW_SUM_ATOL))
    if bad.size:
        raise DataError(f"probs: row {bad[0]} is not a probability distribution "
                        f"(values must be finite, >= 0 and sum to 1; got sum {arr[bad[0]].sum():.6g}); "
                        f"pass softmax outputs, not logits")
    return arr


def _probs_and_labels(probs: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _probs(probs)
    t = _labels(y_true, "y_true", p.shape[1])
    if len(t) != len(p):
        raise DataError(f"y_true has {len(t)} labels but probs has {len(p)} rows")
    if len(t) == 0:
        raise DataError("no samples: probs and y_true are empty")
    return p, t


def as_confusion_matrix(cm: Any) -> np.ndarray:
    arr = _as_numpy(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise DataError(f"confusion matrix: expected a square (C, C) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise DataError(f"confusion matrix: expected non-negative integer counts, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (the ratio is undefined, not zero)."""
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    if num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    t = _labels(y_true, "y_true", num_classes)
    p = _labels(y_pred, "y_pred", num_classes)
    if len(t) != len(p):
        raise DataError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(y_true: Any, y_pred: Any) -> float:
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise DataError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    if len(t) == 0:
        raise DataError("no samples: y_true and y_pred are empty")
    return float(np.mean(t == p))


def per_class_recall(cm: Any) -> np.ndarray:
    """(C,) recall per true class; NaN for a class with no samples."""
    cm = as_confusion_matrix(cm)
    return _ratio(np.diag(cm).astype(np.float64), cm.sum(axis=1))


def per_class_precision(cm: Any) -> np.ndarray:
    """(C,) precision per predicted class; NaN for a class never predicted."""
    cm = as_confusion_matrix(cm)
    return _ratio(np.diag(cm).astype(np.float64), cm.sum(axis=0))


def mean_class_accuracy(cm: Any) -> float:
    """Balanced accuracy: mean recall over the classes that have samples.

    Computed from the whole-dataset confusion matrix, not averaged over batches.
    """
    recall = per_class_recall(cm)
    if np.isnan(recall).all():
        raise DataError("confusion matrix is empty: no class has samples")
    return float(np.nanmean(recall))


def macro_f1(cm: Any) -> float:
    """Mean F1 over the classes that have samples (rows with support).

    A class absent from y_true is left out of the mean (its F1 is undefined);
    predictions of it still count as misses of their true classes. A class with
    samples that is never predicted scores F1 = 0. This equals scikit-learn's
    `f1_score(average="macro", labels=<classes present in y_true>)`.
    """
    cm = as_confusion_matrix(cm)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        raise DataError("confusion matrix is empty: no class has samples")
    # 2TP / (2TP + FP + FN) = 2TP / (support + predicted); support > 0 keeps it defined.
    f1 = 2 * tp[present] / (support[present] + cm.sum(axis=0)[present])
    return float(f1.mean())


def nll(probs: Any, y_true: Any, eps: float = 1e-12) -> float:
    """Mean -log p(true class); p is clipped at `eps` so one confident miss costs log(1/eps), not inf."""
    p, t = _probs_and_labels(probs, y_true)
    p_true = p[np.arange(len(t)), t]  # (N,)
    return float(-np.mean(np.log(np.clip(p_true, eps, 1.0))))


def reliability_bins(probs: Any, y_true: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label confidence histogram over equal-width bins (lo, hi] on (0, 1].

    Returns "edges" (n_bins + 1,), and per bin "confidence" (mean top
    probability), "accuracy" (fraction whose argmax is correct), both NaN for
    an empty bin, and "count" (int64). Argmax ties go to the lowest index.
    """
    if n_bins < 1:
        raise DataError(f"n_bins must be >= 1, got {n_bins}")
    p, t = _probs_and_labels(probs, y_true)
    conf = p.max(axis=1)  # (N,)
    correct = (p.argmax(axis=1) == t).astype(np.float64)  # (N,)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins: a sample's bin is the number of inner edges strictly below its confidence.
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # (N,)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    return {
        "edges": edges,
        "confidence": _ratio(np.bincount(idx, weights=conf, minlength=n_bins), count),
        "accuracy": _ratio(np.bincount(idx, weights=correct, minlength=n_bins), count),
        "count": count,
    }


def ece_from_bins(bins: dict[str, np.ndarray]) -> float:
    count = bins["count"]
    filled = count > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(count[filled] * gap) / count.sum())


def expected_calibration_error(probs: Any, y_true: Any, n_bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width bin, weighted by the bin's share of samples."""
    return ece_from_bins(reliability_bins(probs, y_true, n_bins))


def _json_floats(values: np.ndarray) -> list[float | None]:
    # JSON has no NaN; an undefined per-class value is written as null.
    return [None if math.isnan(v) else float(v) for v in values]


def classification_report(probs: Any, y_true: Any, class_names: Sequence[str],
                          prefix: str = "") -> dict[str, Any]:
    """All evaluation metrics in one JSON-ready dict; every key carries `prefix` (e.g. "val/").

    Predictions are the argmax of `probs`. Undefined per-class values (no
    samples, never predicted) are None.
    """
    p, t = _probs_and_labels(probs, y_true)
    names = list(class_names)
    if len(names) != p.shape[1]:
        raise DataError(f"class_names has {len(names)} names but probs has {p.shape[1]} columns")
    if len(set(names)) != len(names):
        raise DataError(f"class_names has duplicates: {names}")
    pred = p.argmax(axis=1)  # (N,)
    cm = confusion_matrix(t, pred, len(names))
    report = {
        "accuracy": accuracy(t, pred),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "nll": nll(p, t),
        "ece": expected_calibration_error(p, t),
        "per_class_recall": dict(zip(names, _json_floats(per_class_recall(cm)))),
        "per_class_precision": dict(zip(names, _json_floats(per_class_precision(cm)))),
        "confusion_matrix": cm.tolist(),
        "num_samples": len(t),
        "class_names": names,
    }
    return {prefix + key: value for key, value in report.items()}


def vote_agreement(probs: Any, votes: Any) -> dict[str, Any]:
    """How a model's probabilities compare with people, from FERPlus's per-face annotator counts.

    `votes` is (N, >= C) raw counts, the first C columns the model's classes in the same order (FERPlus
    adds unknown and not-a-face after the 8 emotions). Returns
    - `kl_from_votes`: mean KL(vote distribution over the C emotions || model), in nats;
    - `top2_accuracy`: the plurality emotion is among the model's two most probable classes;
    - `annotator_agreement`: the mean share of a face's annotators who chose the model's top class
      (the chance that one random annotator agrees with the model);
    - `human_ceiling`: the same share for the annotators themselves: each vote matched against the
      plurality of the other votes on its face (a tie among k classes counts 1/k), averaged over all
      votes. A model that agrees with the majority this often is as consistent as one annotator.
    - `human_recall`: per class k (a list in class order, None where no vote has it as reference), the
      same share among the votes whose others' plurality is k: one annotator's recall of class k, to
      set beside the model's per-class recall.
    Faces without emotion votes are skipped.
    """
    p = _probs(probs)
    counts = _as_numpy(votes).astype(np.float64)
    n, c = p.shape
    if counts.ndim != 2 or len(counts) != n or counts.shape[1] < c:
        raise DataError(f"votes: expected ({n}, >= {c}) counts, got {counts.shape}")
    emotions = counts[:, :c]
    keep = emotions.sum(1) > 0
    p, counts, emotions = p[keep], counts[keep], emotions[keep]
    target = emotions / emotions.sum(1, keepdims=True)                               # (N, C)
    q = np.clip(p, 1e-12, None)
    kl = np.where(target > 0, target * np.log(np.clip(target, 1e-12, None) / q), 0.0).sum(1)
    top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
    plurality = emotions.argmax(1)
    agreement = emotions[np.arange(len(p)), p.argmax(1)] / counts.sum(1)
    hits, total = 0.0, counts.sum()
    class_hits, class_total = np.zeros(c), np.zeros(c)
    for j in range(counts.shape[1]):                                               # leave one vote of column j out
        others = counts - np.eye(counts.shape[1])[j]                               # (N, V)
        is_best = others == others.max(1, keepdims=True)                           # (N, V) the others' plurality
        share = counts[:, j] / is_best.sum(1)                                      # (N,) a tie splits the credit
        matched = (share * is_best[:, j]).sum()                                    # column j's votes that match
        hits += matched
        class_total += (share[:, None] * is_best[:, :c]).sum(0)                    # votes whose reference is class k
        if j < c:
            class_hits[j] += matched
    human_recall = [float(h / t) if t > 0 else None for h, t in zip(class_hits, class_total)]
    return {"kl_from_votes": float(kl.mean()), "top2_accuracy": float((top2 == plurality[:, None]).any(1).mean()),
            "annotator_agreement": float(agreement.mean()), "human_ceiling": float(hits / total),
            "human_recall": human_recall, "faces_with_votes": int(keep.sum())}


def restrict_to_classes(probs: Any, class_indices: Sequence[int]) -> np.ndarray:
    """Keep the listed columns, in the listed order, and renormalise each row to sum to 1.

    For scoring an 8-class model on a 7-class dataset: column k of the result
    is class `class_indices[k]`, so the dataset's labels must index that list.
    Restricting logits before the softmax gives the same result and never
    runs out of probability mass.
    """
    p = _probs(probs)
    idx = _labels(class_indices, "class_indices", p.shape[1])
    if idx.size == 0 or len(np.unique(idx)) != idx.size:
        raise DataError(f"class_indices: expected a non-empty list of distinct classes, got {idx.tolist()}")
    kept = p[:, idx]  # (N, K)
    mass = kept.sum(axis=1, keepdims=True)  # (N, 1)
    empty = np.flatnonzero(mass[:, 0] <= 0)
    if empty.size:
        raise DataError(f"probs: row {empty[0]} has no probability on classes {idx.tolist()}; "
                        f"restrict the logits before the softmax instead")
    return kept / mass
