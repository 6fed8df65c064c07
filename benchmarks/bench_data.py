"""Data-layer speed figures, printed as JSON (a script, not a timed test).

- FERPlus train split: first load (decode into an empty cache) and second load (from the cache);
- augmented training batches through a DataLoader (2 workers, batch 64, collate_samples),
  train_transform with in_chans 3 at sizes 64 and 112, in images/s.

Usage: python benchmarks/bench_data.py [--data-root ../shared/datasets/ferplus] [--batches 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from grefel.data import AugmentConfig, DataSource, collate_samples, load_dataset, train_transform

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ferplus"


def images_per_second(dataset, size: int, batches: int, workers: int) -> float:
    dataset.transform = train_transform(size, 3, AugmentConfig())
    loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                        collate_fn=collate_samples, drop_last=True)
    it = iter(loader)
    for _ in range(4):  # workers start and warm up
        next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += next(it)["image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT))
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures: dict[str, float | int] = {}
    with tempfile.TemporaryDirectory(prefix="grefel-bench-cache-") as cache:
        source = DataSource(format="ferplus", root=args.data_root, cache_dir=cache)
        for key in ("train_first_load_s", "train_second_load_s"):
            start = time.perf_counter()
            dataset = load_dataset(source, "train", "majority")
            figures[key] = round(time.perf_counter() - start, 3)
        figures["train_samples"] = len(dataset)
    for size in (64, 112):
        figures[f"train_images_per_s_{size}"] = round(images_per_second(dataset, size, args.batches, args.workers))
    figures["loader_workers"] = args.workers
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
