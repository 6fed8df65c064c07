"""Weights are data, never code: pickles carrying code are refused on every path that loads weights,
and a checkpoint's JSON contract is validated before anything is built from it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import grefel
from grefel.commands import main as grefel_main
from grefel.config import to_dict
from grefel.errors import GrefelError
from grefel.fileio import load_state_dict
from grefel.labels import CANONICAL_CLASSES
from grefel.models import build_from_checkpoint, create_model
from grefel.models.model_file import read_model_checkpoint, save_model_checkpoint
from grefel.models.pretrained import load_landmark_weights
from reliability.conftest import assert_one_line
from training_helpers import TINY_MODEL, tiny_config

# torch warns that it reads a protocol-4 pickle (raw.bin) with its weights-only unpickler; the refusal is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
TINY_VIT = dict(input_size=32, landmark_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, cross_heads=2,
                num_anchors=3)


class Payload:
    """Unpickling this runs open(path, "w"), which creates `path`: code in a weight file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def pickles(folder: Path, marker: Path) -> list[Path]:
    """Weight files in every pickle flavour grefel accepts, each carrying the payload."""
    folder.mkdir()
    state = {"conv.weight": torch.zeros(2, 2), "evil": Payload(marker)}
    files = {"plain.pth": state, "poster.pth.tar": {"state_dict": state, "epoch": 3}, "bare.pt": Payload(marker)}
    for name, obj in files.items():
        torch.save(obj, folder / name)
    torch.save(state, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    (folder / "raw.bin").write_bytes(pickle.dumps(state))
    (folder / "pickle.safetensors").write_bytes(pickle.dumps(state))
    return sorted(folder.iterdir())


@pytest.fixture
def evil(tmp_path) -> tuple[list[Path], Path]:
    """(pickle files, the marker their payload would create). A twin set proves the payload is live."""
    twin_marker = tmp_path / "twin-ran"
    for twin in pickles(tmp_path / "twins", twin_marker):
        if twin.suffix in (".pth", ".tar", ".pt"):
            twin_marker.unlink(missing_ok=True)
            torch.load(twin, weights_only=False)  # the unsafe load runs the payload
            assert twin_marker.exists(), f"{twin.name}: the payload does not run when unpickled"
    marker = tmp_path / "payload-ran"
    return pickles(tmp_path / "evil", marker), marker


def refused(marker: Path, call, *args, naming: str = "", **kwargs) -> None:
    """`call` raises a one-line GrefelError (naming `naming`) and the payload did not run."""
    with pytest.raises(GrefelError) as raised:
        call(*args, **kwargs)
    assert_one_line(raised.value)
    assert naming in str(raised.value), f"the error does not name {naming}: {raised.value}"
    assert not marker.exists(), "the payload ran"


def test_load_state_dict_refuses_pickled_code(evil):
    files, marker = evil
    for path in files:
        refused(marker, load_state_dict, path)


def test_landmark_weight_paths_refuse_pickled_code(evil):
    files, marker = evil
    model = create_model("grefel_small", pretrained=False, **TINY_MODEL)
    for path in files:
        refused(marker, load_landmark_weights, model, path)
        refused(marker, create_model, "grefel_small", pretrained={"landmarks": path}, **TINY_MODEL)


def cli_refuses(marker: Path, capsys, argv: list[str]) -> str:
    assert grefel_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not marker.exists(), "the payload ran"
    return err


@pytest.mark.parametrize("key, overrides", [
    ("ir50_weights", []),
    ("vit_weights", ["--set", "model=grefel_vit", "--set", f"model_args={json.dumps(TINY_VIT)}"]),
    ("init_from", []),
])
def test_train_weight_options_refuse_pickled_code(evil, tmp_path, capsys, key, overrides):
    files, marker = evil
    config = str(tiny_config(tmp_path))
    for path in files:
        err = cli_refuses(marker, capsys, ["train", "--config", config, "--output-dir", str(tmp_path / "out"),
                                           *overrides, "--set", f"{key}={path}"])
        assert path.stem.split(".")[0] in err
    assert not (tmp_path / "out" / "checkpoints").exists()


# ---------------------------------------------------------------- checkpoint contracts

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    stem = tmp_path_factory.mktemp("contract") / "best"
    model = create_model("grefel_small", pretrained=False, **TINY_MODEL)
    cfg = model.config
    save_model_checkpoint(stem, model, {
        "preset": "grefel_small", "model": to_dict(cfg), "class_names": list(CANONICAL_CLASSES),
        "input": {"size": cfg.input_size, "channels": cfg.in_chans, "value_range": [0.0, 1.0]},
        "preprocessing": {"color": "rgb", "crop_size": 48}, "serve": "primary", "temperature": 1.0})
    return stem


def defect(info: dict, name: str) -> None:
    swapped = list(CANONICAL_CLASSES)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    edits = {
        "unknown preset": lambda: info.update(preset="grefel_tiny"),
        "class order": lambda: info.update(class_names=swapped),
        "fer2013 class order": lambda: info.update(class_names=["anger", "disgust", "fear", "happiness", "sadness",
                                                                "surprise", "neutral", "contempt"]),
        "temperature 0": lambda: info.update(temperature=0),
        "temperature nan": lambda: info.update(temperature=float("nan")),
        "temperature text": lambda: info.update(temperature="1.0"),
        "temperature 1e400": lambda: info.update(temperature=10**400),
        "wrong weights_sha256": lambda: info.update(weights_sha256="0" * 64),
        "no input contract": lambda: info.pop("input"),
        "no preprocessing": lambda: info.pop("preprocessing"),
        "model arg named like a parameter": lambda: info["model"].update(name="grefel_small"),
        "impossible model size": lambda: info["model"].update(branch_size=40),
    }
    edits[name]()


DEFECTS = ["unknown preset", "class order", "fer2013 class order", "temperature 0", "temperature nan",
           "temperature text", "temperature 1e400", "wrong weights_sha256", "no input contract", "no preprocessing",
           "model arg named like a parameter", "impossible model size"]


@pytest.mark.parametrize("name", DEFECTS)
def test_checkpoint_contract_is_checked_before_use(good_checkpoint, tmp_path, capsys, name):
    """Every consumer refuses the checkpoint in one line naming it, before building or reading data."""
    stem = tmp_path / "best"
    shutil.copy(good_checkpoint.with_suffix(".safetensors"), stem.with_suffix(".safetensors"))
    info = json.loads(good_checkpoint.with_suffix(".json").read_text())
    defect(info, name)
    stem.with_suffix(".json").write_text(json.dumps(info))
    for load in (build_from_checkpoint, grefel.load_model, lambda p: grefel.Recognizer(p, detect=False)):
        refused(tmp_path / "never", load, stem.with_suffix(".safetensors"), naming=str(stem))
    onnx = tmp_path / "model.onnx"
    commands = [["evaluate", "--checkpoint", str(stem), "--data-root", "/nonexistent", "--split", "valid"],
                ["export", "--checkpoint", str(stem), "--output", str(onnx)]]
    if name != "impossible model size":  # init_from takes the weights only; the run builds its own model
        commands.append(["train", "--config", str(tiny_config(tmp_path)), "--output-dir", str(tmp_path / "out"),
                         "--set", f"init_from={stem}"])
    for argv in commands:
        assert str(stem) in cli_refuses(tmp_path / "never", capsys, argv), argv[0]
    assert not onnx.exists() and not (tmp_path / "out" / "checkpoints").exists()
    if name != "impossible model size":  # reading checks the contract; only building finds an impossible size
        refused(tmp_path / "never", read_model_checkpoint, stem, naming=str(stem))
