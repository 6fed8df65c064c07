"""grefel evaluate / calibrate on a trained tiny checkpoint and real FERPlus crops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FERPLUS_ROOT, REPO_ROOT
from grefel.labels import CANONICAL_CLASSES
from grefel.models.model_card import ANNOTATOR_RECALL_FERPLUS_VALID
from grefel.training import load_config, train
from training_helpers import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("eval-run")
    os.environ.setdefault("GREFEL_CACHE_DIR", str(tmp / "cache"))
    train(load_config(str(tiny_config(tmp, epochs=1, tta_flip=True)), []), tmp / "run")
    return tmp / "run" / "checkpoints" / "best.safetensors"


@pytest.fixture(scope="module")
def seven_class_folder(tmp_path_factory) -> Path:
    """FERPlus valid crops in class folders (RAF-DB-like names), without contempt: 7 classes."""
    root = tmp_path_factory.mktemp("folder")
    rows = (FERPLUS_ROOT / "FER2013Valid" / "label.csv").read_text().splitlines()
    names = {"neutral": "neutral", "happiness": "happy", "surprise": "surprised", "sadness": "sad",
             "anger": "angry", "disgust": "disgusted", "fear": "fearful"}
    count = 0
    for row in rows:
        parts = row.split(",")
        votes = np.array([int(v) for v in parts[-10:]])
        top = int(votes.argmax())
        if top >= 7 or votes[top] * 2 <= votes.sum():
            continue
        folder = root / names[CANONICAL_CLASSES[top]]
        folder.mkdir(exist_ok=True)
        shutil.copy(FERPLUS_ROOT / "FER2013Valid" / parts[0], folder / parts[0])
        count += 1
        if count == 120:
            break
    return root


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grefel", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def test_evaluate_report_json_and_plots(checkpoint, tmp_path):
    out = tmp_path / "report.json"
    proc = run("evaluate", "--checkpoint", str(checkpoint), "--data-root", str(FERPLUS_ROOT), "--split", "valid",
               "--output-json", str(out), "--plots", str(tmp_path / "plots"), "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    assert "mean class accuracy" in proc.stdout and "confusion matrix" in proc.stdout
    report = json.loads(out.read_text())
    for key in ("num_samples", "accuracy", "mean_class_accuracy", "macro_f1", "nll", "ece", "per_class_recall",
                "confusion_matrix", "class_names", "corrected_accuracy", "primary_accuracy"):
        assert key in report, key
    assert report["num_samples"] == 3191 and report["class_names"] == list(CANONICAL_CLASSES)
    assert report["tta_flip"] is True      # scored as the checkpoint serves (it was trained with tta_flip)
    assert np.array(report["confusion_matrix"]).sum() == 3191
    for name in ("confusion_matrix.png", "reliability_diagram.png"):
        assert cv2.imread(str(tmp_path / "plots" / name)) is not None
    # FERPlus has ten annotators per face: the model against them, and one annotator against the others.
    people = report["agreement_with_people"]
    assert people["faces_with_votes"] == 3191 and people["human_ceiling"] == pytest.approx(0.8031, abs=1e-4)
    assert people["top2_accuracy"] >= report["accuracy"] and 0 < people["annotator_agreement"] < 1
    assert "human ceiling" in proc.stdout
    # One annotator's recall per class: contempt, the rarest, is found by about half of them.
    assert list(people["human_recall"]) == list(CANONICAL_CLASSES)
    assert people["human_recall"]["contempt"] == pytest.approx(0.5517, abs=1e-4)
    assert people["human_recall"]["happiness"] == pytest.approx(0.9278, abs=1e-4)
    assert ANNOTATOR_RECALL_FERPLUS_VALID == pytest.approx(people["human_recall"], abs=5e-5)
    assert "one annotator" in proc.stdout


def test_seven_class_dataset_is_scored_on_the_shared_classes(checkpoint, seven_class_folder, tmp_path):
    out = tmp_path / "report.json"
    proc = run("evaluate", "--checkpoint", str(checkpoint), "--format", "folder", "--data-root",
               str(seven_class_folder), "--color", "grey", "--image-size", "48", "--output-json", str(out),
               "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["num_samples"] == 120 and len(report["class_names"]) <= 7 and "contempt" not in report["class_names"]
    assert "shared by the dataset" in report["note"] and "note:" in proc.stdout
    # A folder without split folders is named as it is, not as a split; each extra accuracy says what it is.
    assert proc.stdout.startswith(f"120 samples of the image folder {seven_class_folder}, serving")
    assert "split" not in proc.stdout.splitlines()[0]
    assert "(argmax of the primary head l_p, no logit adjustment)" in proc.stdout
    shipped = run("evaluate", "--format", "folder", "--data-root", str(seven_class_folder), "--color", "grey",
                  "--image-size", "48", "--workers", "0")
    assert shipped.returncode == 0, shipped.stderr
    assert "primary accuracy" not in shipped.stdout and "corrected accuracy" not in shipped.stdout


def test_calibrate_writes_a_temperature_that_lowers_nll(checkpoint, tmp_path):
    target = tmp_path / "calibrated"
    proc = run("calibrate", "--checkpoint", str(checkpoint), "--data-root", str(FERPLUS_ROOT),
               "--output", str(target), "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(target.with_suffix(".json").read_text())
    cal = info["calibration"]
    assert info["temperature"] != 1.0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert cal["tta_flip"] is True         # fitted on the logits the checkpoint serves
    assert json.loads(checkpoint.with_suffix(".json").read_text())["temperature"] == 1.0  # source untouched
    report = tmp_path / "r.json"
    assert run("evaluate", "--checkpoint", str(target.with_suffix(".safetensors")), "--data-root",
               str(FERPLUS_ROOT), "--split", "valid", "--output-json", str(report), "--workers", "0").returncode == 0
    assert json.loads(report.read_text())["nll"] == pytest.approx(cal["nll_after"], rel=1e-6)
    # Calibrated without the flip, the file is served without it (it was served with it before).
    assert run("calibrate", "--checkpoint", str(target.with_suffix(".safetensors")), "--data-root", str(FERPLUS_ROOT),
               "--no-tta-flip", "--workers", "0").returncode == 0
    info = json.loads(target.with_suffix(".json").read_text())
    assert info["tta_flip"] is False and info["calibration"]["tta_flip"] is False


@pytest.mark.parametrize("mutate, message", [
    (lambda info: info.update(class_names=list(reversed(info["class_names"]))), "canonical order"),
    (lambda info: info.update(preset="grefel_giant"), "unknown preset"),
    (lambda info: info.update(temperature=-1), "temperature"),
    (lambda info: info.update(weights_sha256="0" * 64), "sha256"),
])
def test_tampered_checkpoint_is_refused_in_one_line(checkpoint, tmp_path, mutate, message):
    copy = tmp_path / "bad.safetensors"
    shutil.copy(checkpoint, copy)
    info = json.loads(checkpoint.with_suffix(".json").read_text())
    mutate(info)
    copy.with_suffix(".json").write_text(json.dumps(info))
    proc = run("evaluate", "--checkpoint", str(copy), "--data-root", str(FERPLUS_ROOT), "--split", "valid")
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_is_one_line(tmp_path):
    proc = run("evaluate", "--checkpoint", str(tmp_path / "none.safetensors"), "--data-root", str(FERPLUS_ROOT))
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_default_split_is_the_one_the_data_has_and_dropped_rows_are_counted(checkpoint, tmp_path):
    """A CSV folder with only val.csv: evaluate scores valid, says so, names the file, and counts the bad row
    --skip-bad skipped (text and JSON)."""
    folder = tmp_path / "csv"
    proc = run("data", "convert", "--format", "ferplus", "--data-root", str(FERPLUS_ROOT), "--split", "valid",
               "--output", str(folder / "val.csv"), "--limit", "64")
    assert proc.returncode == 0, proc.stderr
    with (folder / "val.csv").open("a") as handle:
        handle.write("3," + " ".join(["1"] * 100) + "\n")            # 100 pixels, not 48x48
    base = ["evaluate", "--checkpoint", str(checkpoint), "--format", "csv", "--data-root", str(folder),
            "--workers", "0"]
    refused = run(*base)
    assert refused.returncode == 2 and "--skip-bad" in refused.stderr and "Traceback" not in refused.stderr
    out = tmp_path / "report.json"
    proc = run(*base, "--skip-bad", "--output-json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "no test split; scoring the valid split" in proc.stderr and "libpng" not in proc.stderr
    report = json.loads(out.read_text())
    assert report["split"] == "valid" and report["num_samples"] == 64
    assert sum(report["dropped"].values()) == 1 and report["dataset"] == f"CSV file {folder / 'val.csv'}"
    assert f"64 samples of the CSV file {folder / 'val.csv'}" in proc.stdout and "dropped samples" in proc.stdout


def test_missing_ferplus_split_names_the_splits_there(checkpoint):
    proc = run("evaluate", "--checkpoint", str(checkpoint), "--data-root", str(FERPLUS_ROOT), "--split", "test")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no test split (FER2013Test/label.csv not found)" in proc.stderr and "--split valid" in proc.stderr


def test_logit_adjustment_is_stored_served_and_scored(checkpoint, tmp_path):
    """calibrate --logit-adjustment TAU: the served probabilities become softmax((z - TAU log prior) / T) in
    every backend's ServingModel and in evaluate's report; TAU 0 takes it out again."""
    import torch

    from grefel.models import build_from_checkpoint
    from grefel.models.serving import ServingModel

    copy = tmp_path / "adjusted"
    proc = run("calibrate", "--checkpoint", str(checkpoint), "--data-root", str(FERPLUS_ROOT), "--workers", "0",
               "--logit-adjustment", "0.5", "--output", str(copy))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(copy.with_suffix(".json").read_text())
    counts = info["logit_adjustment"]["train_class_counts"]
    assert info["logit_adjustment"]["tau"] == 0.5 and counts == info["training"]["data"]["train_class_counts"]
    serving = ServingModel.from_checkpoint(copy)
    model, _ = build_from_checkpoint(copy)
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        z = (model(x).logits + model(x.flip(-1)).logits) / 2                  # the checkpoint serves with flip
        prior = (torch.tensor(counts, dtype=torch.float64) + 1) / (sum(counts) + len(counts))   # +1 smoothing
        expected = torch.softmax((z.double() - 0.5 * prior.log()) / info["temperature"], -1)
        torch.testing.assert_close(serving(x).double(), expected, atol=1e-5, rtol=1e-4)
    report_path = tmp_path / "r.json"
    proc = run("evaluate", "--checkpoint", str(copy), "--data-root", str(FERPLUS_ROOT), "--split", "valid",
               "--workers", "0", "--output-json", str(report_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert report["logit_adjustment"] == 0.5 and "logit adjustment tau = 0.5" in proc.stdout
    # calibrate records what the adjusted file serves on its split; evaluate scores the same
    for key in ("accuracy", "mean_class_accuracy", "macro_f1"):
        assert report[key] == pytest.approx(info["calibration"][key], abs=1e-9), key
    assert info["calibration"]["logit_adjustment"] == 0.5
    proc = run("calibrate", "--checkpoint", str(copy), "--data-root", str(FERPLUS_ROOT), "--workers", "0",
               "--logit-adjustment", "0")
    assert proc.returncode == 0 and "logit_adjustment" not in json.loads(copy.with_suffix(".json").read_text())
    info["logit_adjustment"]["tau"] = 7
    copy.with_suffix(".json").write_text(json.dumps(info))
    proc = run("evaluate", "--checkpoint", str(copy), "--data-root", str(FERPLUS_ROOT), "--split", "valid")
    assert proc.returncode == 2 and "logit_adjustment.tau 7: expected a number in [0, 2]" in proc.stderr


def test_logit_adjustment_divides_out_the_prior_the_classifier_was_fitted_on(tmp_path):
    from grefel.data import DataSource
    from grefel.evaluation import fitted_class_counts

    names = {"class_names": ["neutral", "happiness", "surprise"]}
    run = {"data": {"train_class_counts": [50, 30, 20, 0, 0, 0, 0, 0]}}
    refit = {**run, "refit": {"class_counts": [40, 25, 10]}}
    (tmp_path / "train.csv").write_text("emotion,pixels\n" + "".join(f"{k},{' '.join(['7'] * 2304)}\n"
                                                                    for k in (0, 0, 1, 2, 2, 2)))
    source = DataSource(format="csv", root=str(tmp_path))
    assert fitted_class_counts({**names, "training": refit}, source) == [40, 25, 10]   # the re-fitted head's
    assert fitted_class_counts({**names, "training": run}, source) == [50, 30, 20]     # the training run's
    assert fitted_class_counts(names, source) == [2, 1, 3]     # an old file: the training split's majority labels
