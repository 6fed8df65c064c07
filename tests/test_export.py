"""`grefel export` and the ONNX backend: same numbers as the PyTorch ServingModel."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import FERPLUS_ROOT, PHOTOS_DIR
from grefel.commands import main
from grefel.data.transforms import eval_transform
from grefel.inference.recognizer import Recognizer
from grefel.models.model_file import shipped_checkpoint


def valid_images(n: int) -> list[np.ndarray]:
    with open(FERPLUS_ROOT / "FER2013Valid" / "label.csv", newline="") as handle:
        names = [row[0] for _, row in zip(range(n), csv.reader(handle))]
    return [cv2.imread(str(FERPLUS_ROOT / "FER2013Valid" / name), cv2.IMREAD_GRAYSCALE) for name in names]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One grefel cache for this module's tests, so the shipped model is exported to it once."""
    path = tmp_path_factory.mktemp("grefel-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GREFEL_CACHE_DIR", str(path))
        yield path


def test_export_matches_the_serving_model_at_any_batch(tmp_path, capsys):
    output = tmp_path / "m.onnx"
    assert main(["export", "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    recognizer = Recognizer()
    info = recognizer.info
    transform = eval_transform(info["input"]["size"], info["input"]["channels"])
    x = torch.stack([transform(image) for image in valid_images(64)])           # (64, C, S, S)
    with torch.inference_mode():
        expected = recognizer.serving_model()(x).numpy()                          # (64, classes)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    whole = session.run(None, {"image": x.numpy()})[0]
    # Batch 1 on a quarter of them: enough to show the batch axis is not baked in, at a quarter of the time.
    one_by_one = np.concatenate([session.run(None, {"image": x[i:i + 1].numpy()})[0] for i in range(16)])
    assert whole.shape == expected.shape == (64, len(info["class_names"]))
    assert np.abs(whole - expected).max() < 1e-4 and np.abs(one_by_one - expected[:16]).max() < 1e-4


def test_onnx_backend_predicts_like_torch_and_caches_its_export(tmp_path, capsys, onnx_cache):
    photo = str(PHOTOS_DIR / "astronaut.png")
    results = {}
    for backend in ("torch", "onnx"):
        assert main(["predict", photo, "--backend", backend, "--output", str(tmp_path / f"{backend}.json")]) == 0
        results[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
    capsys.readouterr()
    (torch_face,), (onnx_face,) = results["torch"][0]["faces"], results["onnx"][0]["faces"]
    assert onnx_face["label"] == torch_face["label"]
    for name, p in torch_face["probabilities"].items():
        assert abs(onnx_face["probabilities"][name] - p) < 1e-4
    # Exported once into the cache (never beside the shipped checkpoint), then reused.
    (exported,) = (onnx_cache / "onnx").glob("*.onnx")
    assert not shipped_checkpoint().with_suffix(".onnx").exists()
    stamp = exported.stat().st_mtime_ns
    Recognizer(backend="onnx")
    assert exported.stat().st_mtime_ns == stamp


def test_the_default_backend_is_onnx_on_the_cpu_when_its_extra_is_installed(monkeypatch, capsys):
    from grefel.inference import backends

    assert Recognizer().backend == "onnx" and Recognizer(backend="torch").backend == "torch"
    assert main(["predict", str(PHOTOS_DIR / "astronaut.png"), "--verbose"]) == 0
    assert "backend onnx (ONNX Runtime" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "inference backend: onnx on CPU" in capsys.readouterr().out
    # Without the extra: auto falls back to torch, and asking for onnx is one line and exit 2, not a traceback.
    monkeypatch.setattr(backends, "onnx_runtime_version", lambda: None)
    assert Recognizer().backend == "torch"
    assert main(["predict", str(PHOTOS_DIR / "astronaut.png"), "--backend", "onnx"]) == 2
    assert capsys.readouterr().err.strip() == ("grefel predict: error: backend onnx needs the onnx extra (onnx and "
                                               "onnxruntime): pip install 'grefel[onnx]'")
    assert main(["export", "--output", "never.onnx"]) == 2
    assert "grefel export: error: grefel export needs the onnx extra" in capsys.readouterr().err
    assert not Path("never.onnx").exists()


def test_onnx_cache_follows_a_recalibrated_temperature(tmp_path, onnx_cache):
    """`grefel calibrate` rewrites only the JSON: the ONNX of the old temperature must not be served."""
    stem = tmp_path / "model"
    shutil.copy(shipped_checkpoint(), stem.with_suffix(".safetensors"))
    info = json.loads(shipped_checkpoint().with_suffix(".json").read_text())
    crops = valid_images(8)
    for temperature in (info["temperature"], info["temperature"] * 3):   # the first is the shipped model's export
        stem.with_suffix(".json").write_text(json.dumps({**info, "temperature": temperature}))
        onnx = Recognizer(stem, backend="onnx").classify(crops)
    assert np.abs(onnx - Recognizer(stem).classify(crops)).max() < 1e-4
    assert len(list((onnx_cache / "onnx").glob("*.onnx"))) == 2


def test_onnx_backend_follows_tta_flip(tmp_path, monkeypatch):
    """--no-tta-flip must not be served the cached export of the flipping graph, nor the reverse."""
    monkeypatch.setenv("GREFEL_CACHE_DIR", str(tmp_path))
    crops = valid_images(8)
    for flip in (True, False):
        onnx = Recognizer(backend="onnx", tta_flip=flip).classify(crops)
        assert np.abs(onnx - Recognizer(tta_flip=flip).classify(crops)).max() < 1e-4
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2
