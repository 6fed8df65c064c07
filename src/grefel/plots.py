"""Plots of evaluation and training: reliability diagram, confusion matrix, training curves (PNG).

Each figure is a bare matplotlib Figure on its own Agg canvas: pyplot is never
imported, so a caller's backend and open figures are untouched. Files are
written atomically.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from grefel.errors import DataError
from grefel.fileio import atomic_open
from grefel.metrics import as_confusion_matrix, ece_from_bins, reliability_bins


def _figure(figsize: tuple[float, float]) -> Any:
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png")


def plot_reliability_diagram(probs: Any, y_true: Any, path: str | os.PathLike,
                             title: str | None = None, n_bins: int = 15) -> None:
    """Write a reliability diagram (accuracy per confidence bin against the diagonal) as a PNG."""
    bins = reliability_bins(probs, y_true, n_bins)
    filled = bins["count"] > 0
    left = bins["edges"][:-1][filled]
    width = np.diff(bins["edges"])[filled]
    acc, conf = bins["accuracy"][filled], bins["confidence"][filled]

    fig = _figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.bar(left, acc, width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(left, conf - acc, width, bottom=acc, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy",
           title=title or "Reliability diagram")
    # Bins usually sit on or under the diagonal, which leaves the upper left empty.
    ax.legend(loc="upper left", title=f"ECE {ece_from_bins(bins):.4f}, N = {int(bins['count'].sum())}")
    fig.tight_layout()
    _save_png(fig, path)


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], path: str | os.PathLike,
                          normalize: bool = True, title: str | None = None) -> None:
    """Write a confusion-matrix heat map as a PNG; `normalize` shows each true-class row as fractions."""
    cm = as_confusion_matrix(cm)
    num = cm.shape[0]
    if len(class_names) != num:
        raise DataError(f"class_names has {len(class_names)} names but the confusion matrix is {num}x{num}")
    if normalize:
        support = cm.sum(axis=1, keepdims=True)  # (C, 1)
        values = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)  # (C, C)
        vmax, fmt = 1.0, ".2f"
    else:
        values, vmax, fmt = cm, max(1, int(cm.max())), "d"

    fig = _figure((1.5 + 0.7 * num, 1.0 + 0.7 * num))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for i in range(num):
        for j in range(num):
            ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] > vmax / 2 else "black")
    ax.set_xticks(range(num), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(num), labels=list(class_names))
    ax.set(xlabel="predicted", ylabel="true",
           title=title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    fig.tight_layout()
    _save_png(fig, path)



def plot_training_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch (train and validation) from metrics.csv rows, as a PNG."""
    epochs = [int(r["epoch"]) for r in rows]
    fig = _figure((10.0, 4.0))
    for i, (title, keys) in enumerate((("loss", ("train_loss", "val_loss")),
                                       ("accuracy", ("train_acc", "val_acc", "val_mean_class_acc")))):
        ax = fig.add_subplot(1, 2, i + 1)
        for key in keys:
            ax.plot(epochs, [float(r[key]) for r in rows], marker="o", markersize=3, label=key)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_png(fig, path)


def plot_timeline(series: dict[int, tuple[Sequence[float], np.ndarray]], classes: Sequence[str],
                  path: str | os.PathLike, title: str | None = None, duration: float | None = None) -> None:
    """One panel per track: its probabilities of each class over time, stacked (they sum to 1), one colour
    per class throughout. `series`: track id -> (times in seconds, (T, classes) probabilities)."""
    if not series:
        raise DataError("timeline: no face was tracked, so there is nothing to draw")
    colours = [f"C{i}" for i in range(len(classes))]
    height = 1.0 + 1.2 * len(series)
    fig = _figure((10, height))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (track, (times, probs)) in zip(axes, series.items()):
        times, probs = np.asarray(times, float), np.asarray(probs, float)
        step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
        # Each value holds until the next frame; where the track was away (a gap of over 2.5 frames) the
        # panel is left blank from one frame after its last sighting.
        gaps = np.flatnonzero(np.diff(times) > 2.5 * step) if step > 0 else np.array([], int)
        times = np.insert(times, gaps + 1, times[gaps] + step)
        probs = np.insert(probs, gaps + 1, 0.0, axis=0)
        times, probs = np.append(times, times[-1] + step), np.vstack([probs, probs[-1:]])
        ax.stackplot(times, probs.T, colors=colours, linewidth=0, step="post")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, duration or (times[-1] if len(times) else 1))
        ax.set_ylabel(f"#{track}", rotation=0, ha="right", va="center", fontsize=11)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("time (s)")
    handles = [Patch(color=c, label=n) for c, n in zip(colours, classes)]
    fig.legend(handles=handles, loc="upper center", ncol=len(classes), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=0.995, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    _save_png(fig, path)
