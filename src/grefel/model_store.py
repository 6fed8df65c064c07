"""`grefel models list`: the shipped model and local checkpoints, with their validation metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_DIRS = ("runs", "outputs")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the shipped model and local checkpoints")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="shipped and local checkpoints with their validation metrics")
    listing.add_argument("dirs", nargs="*", help=f"folders to search for checkpoints (default: {', '.join(DEFAULT_DIRS)} "
                                                 "under the current folder, where present)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)


def describe(path: Path, origin: str) -> dict[str, Any] | None:
    """One row for a checkpoint JSON, or None if the file is not a grefel model checkpoint."""
    from grefel.checkpoint import CHECKPOINT_FORMAT

    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        return None
    weights = path.with_suffix(".safetensors")
    valid = info.get("metrics", {}).get("valid", {})
    return {"origin": origin, "path": str(weights), "preset": info.get("preset"),
            "classes": len(info.get("class_names", [])), "accuracy": valid.get("accuracy"),
            "mean_class_accuracy": valid.get("mean_class_accuracy"), "macro_f1": valid.get("macro_f1"),
            "ece": valid.get("ece"), "temperature": info.get("temperature"),
            "size_mb": round(weights.stat().st_size / 1e6, 1) if weights.is_file() else None,
            "epoch": info.get("training", {}).get("epoch")}


def find_checkpoints(dirs: list[str]) -> list[dict[str, Any]]:
    from grefel.checkpoint import shipped_checkpoint

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
    from grefel.errors import GrefelError

    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise GrefelError(f"{missing[0]}: no such folder")
    rows = find_checkpoints(args.dirs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'origin':8} {'preset':14} {'acc':>7} {'mca':>7} {'F1':>7} {'ECE':>7} {'T':>6} {'MB':>6}  path")
    for r in rows:
        print(f"{r['origin']:8} {r['preset']:14} {fmt(r['accuracy']):>7} {fmt(r['mean_class_accuracy']):>7} "
              f"{fmt(r['macro_f1']):>7} {fmt(r['ece']):>7} {r['temperature']:>6.3g} {r['size_mb'] or 0:>6}  {r['path']}")
    return 0
