"""A tiny, fast training config on real FERPlus images, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import FERPLUS_ROOT

TINY_MODEL = dict(input_size=48, branch_size=32, landmark_size=32, ir_stem=8, ir_widths=[8, 16, 32],
                  ir_units=[1, 1, 1], cross_heads=[1, 2, 2], embed_dim=32, num_heads=2, num_anchors=3)


def tiny_config(tmp_path: Path, **overrides) -> Path:
    """A YAML preset training the tiny model on 256 FERPlus train images, scoring on 128 valid images."""
    cfg = {
        "model": "grefel_small",
        "model_args": dict(TINY_MODEL),
        "data": {"source": {"format": "ferplus", "root": str(FERPLUS_ROOT)}, "limit_train": 256, "limit_val": 128},
        "epochs": 2, "batch_size": 32, "eval_batch_size": 64, "num_workers": 0,
        "wandb": "off", "log_every": 4,
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
