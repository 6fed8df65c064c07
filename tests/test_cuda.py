"""The CUDA path: training, resuming, scoring and predicting on `cuda` give what the CPU gives.

CI has no GPU, so these are skipped there; on a machine with one, `pytest tests/test_cuda.py` runs them
(about a minute). They exist because the code that moves tensors, RNG states and optimizer states
between devices is otherwise never executed by the test suite.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from conftest import FERPLUS_ROOT, PHOTOS_DIR
from grefel.data import DataSource, collate_samples, eval_transform, load_dataset
from grefel.engine import Amp, predict
from grefel.inference.recognizer import Recognizer
from grefel.models import build_from_checkpoint
from grefel.training import load_config, train
from training_helpers import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_train_and_resume_on_cuda_then_score_on_both_devices(tmp_path, amp):
    out = tmp_path / "run"
    train(load_config(str(tiny_config(tmp_path, device="cuda", amp=amp)), []), out)
    # Resume moves the saved optimizer, scaler and CUDA RNG states back onto the GPU.
    summary = train(load_config(str(tiny_config(tmp_path, device="cuda", amp=amp, epochs=3)), []), out, resume=True)
    assert summary["epochs"] == 3
    assert len((out / "metrics.csv").read_text().splitlines()) == 4   # header + 3 epochs
    assert json.loads((out / "checkpoints" / "last.json").read_text())["epoch"] == 3

    best = out / "checkpoints" / "best.safetensors"
    model, info = build_from_checkpoint(best)                          # saved as CPU tensors
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in model.state_dict().values())
    ds = load_dataset(DataSource(root=str(FERPLUS_ROOT)), "valid")
    ds.transform = eval_transform(info["input"]["size"], info["input"]["channels"])
    loader = DataLoader(Subset(ds, range(256)), batch_size=64, collate_fn=collate_samples)
    on_cpu, on_gpu = (predict(copy.deepcopy(model).to(d), loader, device=torch.device(d), amp=Amp("off", d),
                              tta_flip=True) for d in ("cpu", "cuda"))
    assert np.abs(on_cpu.corrected - on_gpu.corrected).max() < 1e-3
    assert (on_cpu.logits.argmax(1) == on_gpu.logits.argmax(1)).mean() > 0.99


def test_recognizer_on_cuda_matches_cpu():
    photo = str(PHOTOS_DIR / "astronaut.png")
    (cpu_face,), (gpu_face,) = (Recognizer(device=d).predict(photo).faces for d in ("cpu", "cuda"))
    assert gpu_face.label == cpu_face.label
    assert np.abs(np.array(list(gpu_face.probabilities.values())) -
                  np.array(list(cpu_face.probabilities.values()))).max() < 1e-4
