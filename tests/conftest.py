"""Shared fixtures. Tests read the real datasets and weights from ../shared beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GREFEL_SHARED", REPO_ROOT.parent / "shared"))
FERPLUS_ROOT = SHARED / "datasets" / "ferplus"
WEIGHTS_DIR = SHARED / "weights"
PHOTOS_DIR = SHARED / "photos"
LANDMARK_WEIGHTS = WEIGHTS_DIR / "mobilefacenet_landmark68.safetensors"

# Two cores: keep tests from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def ferplus_root() -> Path:
    if not (FERPLUS_ROOT / "FER2013Valid" / "label.csv").is_file():
        pytest.fail(f"shared FERPlus not found at {FERPLUS_ROOT}; tests need ../shared beside the repo")
    return FERPLUS_ROOT


@pytest.fixture(scope="session")
def landmark_weights() -> Path:
    if not LANDMARK_WEIGHTS.is_file():
        pytest.fail(f"landmark weights not found at {LANDMARK_WEIGHTS}")
    return LANDMARK_WEIGHTS


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One grefel cache for the whole run (the shipped model's ONNX graph is exported to it once), so no
    test reads or writes ~/.cache; `cache_dir` gives a test an empty one of its own."""
    path = tmp_path_factory.mktemp("grefel-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GREFEL_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty grefel cache, so tests never read or write ~/.cache."""
    path = tmp_path / "grefel-cache"
    monkeypatch.setenv("GREFEL_CACHE_DIR", str(path))
    return path
