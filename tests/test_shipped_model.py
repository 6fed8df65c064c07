"""The FERPlus model that ships inside the package: it loads offline, speaks the canonical labels,
and recognises real FERPlus faces it was selected on far better than chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import grefel
from grefel.data import DataSource, load_dataset
from grefel.data.transforms import eval_transform
from grefel.labels import CANONICAL_CLASSES
from grefel.models import list_models
from grefel.models.model_file import shipped_checkpoint

SHIPPED_LIMIT_BYTES = 25 * 1024 * 1024


def test_shipped_checkpoint_is_small_and_self_describing():
    weights = shipped_checkpoint()
    info = json.loads(weights.with_suffix(".json").read_text())
    assert weights.stat().st_size <= SHIPPED_LIMIT_BYTES
    assert tuple(info["class_names"]) == CANONICAL_CLASSES
    assert info["temperature"] > 0 and info["preset"] in list_models()
    for key in ("input", "preprocessing", "training", "calibration"):
        assert key in info, f"shipped JSON lacks {key!r}"
    # A trained model records its validation metrics; an ensemble, which no run trained, records its members'.
    members = info.get("ensemble") or [info]
    assert all(member.get("training", {}).get("command") for member in members), "how each network was trained"
    assert "metrics" in info or len(members) >= 2
    assert info["training"]["data"], "the shipped JSON must say what it was trained on"


def test_shipped_model_recognises_ferplus_valid_faces(ferplus_root, cache_dir):
    model = grefel.load_model()
    assert tuple(model.info["class_names"]) == CANONICAL_CLASSES
    valid = load_dataset(DataSource(root=str(ferplus_root)), "valid", "majority")
    # Every 8th valid face: 399 images covering every class, fixed so the check is repeatable.
    picked = valid.subset(range(0, len(valid), 8))
    transform = eval_transform(model.info["input"]["size"], model.info["input"]["channels"])
    x = torch.stack([transform(image) for image in picked.images])   # (N, C, S, S)
    with torch.inference_mode():
        probabilities = model(x)                                      # (N, classes)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(x)), atol=1e-4)
    predicted = probabilities.argmax(dim=1).numpy()
    accuracy = float((predicted == picked.labels).mean())
    majority_rate = float(np.bincount(picked.labels).max() / len(picked))   # always answering "neutral"
    # Chance is 1/8 and the majority class about 37%; a working FERPlus model is far above both.
    assert accuracy >= 0.75, f"shipped model: {accuracy:.3f} on {len(picked)} valid faces"
    assert accuracy > majority_rate + 0.3
    # It must use more than two classes on a set that holds all eight.
    assert len(set(predicted.tolist())) >= 6


@pytest.mark.slow
def test_evaluate_reproduces_the_shipped_validation_metrics(ferplus_root, cache_dir, tmp_path):
    """The whole valid split through `grefel evaluate` gives the figures the shipped JSON (and README) quote."""
    from grefel.commands import main

    out = tmp_path / "valid.json"
    assert main(["evaluate", "--data-root", str(ferplus_root), "--split", "valid", "--output-json", str(out)]) == 0
    report = json.loads(out.read_text())
    info = json.loads(shipped_checkpoint().with_suffix(".json").read_text())
    served = info["calibration"]
    assert report["num_samples"] == served["num_samples"] == 3191
    if "metrics" in info:   # a trained model, not an ensemble of trained ones
        # The model as trained: training scored validation unfolded (and a GReFEL model on its cached fp16
        # maps), evaluate folds batch norms (and recomputes frozen maps in fp32): borderline faces may flip.
        trained = info["metrics"]["valid"]
        assert trained["num_samples"] == 3191
        for key in ("primary_accuracy", "corrected_accuracy"):
            assert report[key] == pytest.approx(trained[key], abs=2.5e-3), key
    # The model as served (logit adjustment and temperature, as `grefel calibrate` recorded them), which the
    # README quotes: the same pipeline, so only float noise may differ.
    assert report["logit_adjustment"] == served.get("logit_adjustment", 0.0)
    for key in ("accuracy", "mean_class_accuracy", "macro_f1"):
        assert report[key] == pytest.approx(served[key], abs=1e-6), key
