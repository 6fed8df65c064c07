"""Where a training run reports: metrics.csv, training curves, the console, Weights & Biases.

Only rank 0 creates a `RunLogger`; other ranks report nothing.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

from grefel.fileio import atomic_write_text
from grefel.plots import plot_training_curves

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_loss_cls", "train_loss_anchor", "train_loss_center",
                  "train_acc", "val_loss", "val_acc", "val_mean_class_acc", "val_macro_f1", "val_ece",
                  "val_primary_acc", "val_corrected_acc", "images_per_s", "epoch_seconds")


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV atomically: a crash never leaves a half-written row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def wandb_mode(requested: str) -> str:
    """auto -> online when an API key is configured, else offline; off when wandb is not installed."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return "off"
    if requested != "auto":
        return requested
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


class RunLogger:
    def __init__(self, output_dir: Path, config: dict[str, Any], wandb: str, project: str,
                 run_id: str | None = None):
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.csv"
        self.plots = output_dir / "plots"
        self.rows = read_metrics(self.metrics_path)
        self.wandb_run = None
        self.mode = wandb_mode(wandb)
        if self.mode != "off":
            self.wandb_run = self._start_wandb(config, project, run_id)

    def _start_wandb(self, config: dict[str, Any], project: str, run_id: str | None):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            return wandb.init(project=project, config=config, dir=str(self.output_dir), mode=self.mode,
                              id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(init_timeout=60, console="off"))
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
            print(f"wandb disabled: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                  file=sys.stderr)
            self.mode = "off"
            return None

    @property
    def run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def truncate(self, epoch: int) -> None:
        """On resume: drop rows of epochs after the checkpoint (they will be redone)."""
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epoch]
        write_metrics(self.metrics_path, self.rows)

    def log_epoch(self, row: dict[str, Any], report: dict[str, Any], preds_label, preds_served) -> None:
        self.rows.append(row)
        write_metrics(self.metrics_path, self.rows)
        plot_training_curves(self.rows, self.plots / "training_curves.png")
        print(" ".join([f"epoch {row['epoch']}"] + [f"{k} {row[k]:.4g}" for k in METRIC_COLUMNS[1:]
                                                    if isinstance(row.get(k), float)]), flush=True)
        if self.wandb_run is not None:
            import wandb

            payload = {k: v for k, v in row.items() if k != "epoch"}
            payload.update({f"val_recall/{k}": v for k, v in report["per_class_recall"].items() if v is not None})
            payload["val_confusion_matrix"] = wandb.plot.confusion_matrix(
                y_true=preds_label.tolist(), preds=preds_served.tolist(), class_names=report["class_names"])
            self.wandb_run.log(payload, step=int(row["epoch"]))

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()

