"""Face detection and alignment on the shared photos and real FERPlus crops."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from conftest import FERPLUS_ROOT, PHOTOS_DIR
from grefel.errors import ConfigError, DataError, WeightsError
from grefel.inference.faces import ALIGN_TEMPLATE, FaceDetector, align_face, detect_and_align


def read_rgb(name: str) -> np.ndarray:
    image = cv2.imread(str(PHOTOS_DIR / name), cv2.IMREAD_COLOR)
    if image is None:
        pytest.fail(f"shared photo {PHOTOS_DIR / name} not found; tests need ../shared beside the repo")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return read_rgb("astronaut.png")


def test_astronaut_has_one_plausible_face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x, y, w, h = face.box
    assert face.score > 0.8
    assert 60 < w < 160 and 60 < h < 180 and 0 <= x and x + w <= 512 and 0 <= y and y + h <= 512
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2)
    # The subject's right is the image's left.
    assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    assert ((face.landmarks >= [x, y]) & (face.landmarks <= [x + w, y + h])).all()


def test_cat_has_no_face(detector):
    assert detector.detect(read_rgb("chelsea.png")) == []


def test_grey_and_rgb_inputs_and_outputs(detector, astronaut):
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    (face_rgb,), (face_grey,) = detector.detect(astronaut), detector.detect(grey)
    assert np.allclose(face_rgb.box, face_grey.box, atol=4)
    crop_rgb = align_face(astronaut, face_rgb.landmarks, size=64, color="rgb")
    crop_grey = align_face(astronaut, face_rgb.landmarks, size=64)
    assert crop_rgb.shape == (64, 64, 3) and crop_grey.shape == (64, 64)
    assert crop_rgb.dtype == crop_grey.dtype == np.uint8
    # Grey before or after the warp is the same picture up to rounding.
    assert np.abs(crop_grey.astype(int) - align_face(grey, face_rgb.landmarks, size=64)).max() <= 1
    from_grey = align_face(grey, face_rgb.landmarks, size=64, color="rgb")
    assert from_grey.shape == (64, 64, 3) and (from_grey == from_grey[..., :1]).all()
    (face, crop), = detect_and_align(astronaut, detector, size=48, color="grey")
    assert crop.shape == (48, 48) and face.score == face_rgb.score


def test_min_face_size_drops_small_faces(astronaut):
    side = min(FaceDetector().detect(astronaut)[0].box[2:])
    assert len(FaceDetector(min_face_size=int(side) - 1).detect(astronaut)) == 1
    assert FaceDetector(min_face_size=int(side) + 1).detect(astronaut) == []


def test_image_larger_than_max_side_maps_back_to_original_pixels(detector, astronaut):
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    (face,) = FaceDetector(max_side=640).detect(big)
    # The same detection done by hand at 640 px, mapped back pixel centre to pixel centre (x 1.6).
    (small,) = detector.detect(cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA))
    assert np.abs(face.landmarks - ((small.landmarks + 0.5) * 1.6 - 0.5)).max() < 1e-3
    assert np.allclose(face.box[2:], 1.6 * np.array(small.box[2:]), rtol=1e-4)
    (original,) = detector.detect(astronaut)
    assert np.abs(face.landmarks - (2 * original.landmarks + 0.5)).max() < 0.1 * original.box[2] * 2


def test_template_points_align_to_identity(astronaut):
    size = 200
    crop = align_face(astronaut, ALIGN_TEMPLATE * size - 0.5, size=size, color="rgb")
    assert np.abs(crop.astype(int) - astronaut[:size, :size]).max() <= 1


def test_aligned_face_landmarks_land_on_template(detector, astronaut):
    (face,) = detector.detect(astronaut)
    size = 160
    crop = align_face(astronaut, face.landmarks, size=size, color="rgb")
    # YuNet wants some context around a face, as in a photo.
    pad = size // 2
    canvas = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    (again,) = detector.detect(canvas)
    # Five points never fit a similarity exactly (here up to 0.023 off), and YuNet re-detects with noise.
    assert np.abs((again.landmarks - pad + 0.5) / size - ALIGN_TEMPLATE).max() < 0.06


def test_large_faces_are_shrunk_smoothly_and_in_the_same_place(detector, astronaut):
    face_points = detector.detect(astronaut)[0].landmarks
    reference = align_face(astronaut, face_points, size=96)
    # 4x larger photo: the warp now shrinks ~8x, which goes through the pyramid path.
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    assert pearson(align_face(big, 4 * face_points + 1.5, size=96), reference) > 0.98
    # A 1-pixel checkerboard point-sampled at 1/16 would stay black and white; averaged it is grey.
    board = (np.indices((800, 800)).sum(0) % 2 * 255).astype(np.uint8)
    for shift in (0, -400):   # whole face inside, and half of it off the image
        crop = align_face(board, ALIGN_TEMPLATE * 800 + shift, size=48)
        assert crop.std() < 10 and abs(float(crop.mean()) - 127.5) < 10


def ferplus_valid_faces(count: int) -> list[np.ndarray]:
    """`count` crops spread over FERPlus valid, skipping any an annotator called "not a face"."""
    label_csv = FERPLUS_ROOT / "FER2013Valid" / "label.csv"
    if not label_csv.is_file():
        pytest.fail(f"shared FERPlus not found at {FERPLUS_ROOT}; tests need ../shared beside the repo")
    with open(label_csv, newline="") as handle:
        names = [row[0] for row in csv.reader(handle) if row[-1] == "0"]
    step = len(names) // count
    return [cv2.imread(str(FERPLUS_ROOT / "FER2013Valid" / name), cv2.IMREAD_GRAYSCALE)
            for name in names[::step][:count]]


def test_round_trip_on_ferplus_crops(detector):
    """Paste upscaled FERPlus crops into a photo-like canvas, detect and align them back to 48x48.

    FERPlus crops are not aligned (heads roll, scale varies), so an aligned crop
    cannot equal its source pixel for pixel. What must hold: aligning the canvas
    gives the crop that aligning the source with the same face geometry gives
    (detector and warp coordinates agree), and on average YuNet finds the five
    points where ALIGN_TEMPLATE puts them (aligned crops are framed like FERPlus).
    """
    sources = ferplus_valid_faces(20)
    agreement, points = [], []
    for k, source in enumerate(sources):
        angle, ox, oy = (0, -10, 10)[k % 3], 40 + 7 * (k % 10), 60 + 5 * (k % 7)
        canvas = np.full((400, 400), 128, np.uint8)
        canvas[oy:oy + 192, ox:ox + 192] = cv2.resize(source, (192, 192), interpolation=cv2.INTER_CUBIC)
        rotation = cv2.getRotationMatrix2D((ox + 95.5, oy + 95.5), angle, 1.0)
        canvas = cv2.warpAffine(canvas, rotation, (400, 400), borderValue=128)
        faces = detector.detect(canvas)
        if not faces:
            continue
        landmarks = faces[0].landmarks
        # Undo rotation and paste; the 4x resize put source pixel q's centre at 4q + 1.5.
        unrotated = (landmarks - rotation[:, 2]) @ np.linalg.inv(rotation[:, :2]).T   # (5, 2)
        in_source = (unrotated - [ox, oy] - 1.5) / 4                                    # (5, 2)
        # Compare only where both read the face: outside the source, the canvas shows its grey
        # background while aligning the source repeats the source's edge.
        frame = np.pad(np.full_like(source, 255), 1)
        inside = align_face(frame, in_source + 1) == 255
        aligned, expected = align_face(canvas, landmarks), align_face(source, in_source)
        agreement.append(pearson(aligned[inside], expected[inside]))
        points.append((in_source + 0.5) / 48)
    assert len(points) >= 15
    # Measured: 20 of 20 found, agreement median 0.997 (min 0.988), points within 0.018 of the template.
    assert np.median(agreement) > 0.98 and min(agreement) > 0.95
    assert np.abs(np.median(points, axis=0) - ALIGN_TEMPLATE).max() < 0.04


def test_bad_inputs_are_clear_errors(astronaut, tmp_path):
    points = ALIGN_TEMPLATE * 100
    with pytest.raises(DataError, match="uint8"):
        align_face(astronaut.astype(np.float32), points)
    with pytest.raises(DataError, match="uint8"):
        FaceDetector().detect(astronaut[..., :2])
    with pytest.raises(DataError, match=r"\(5, 2\)"):
        align_face(astronaut, points[:4])
    with pytest.raises(DataError, match="coincide"):
        align_face(astronaut, np.zeros((5, 2)))
    with pytest.raises(ConfigError, match="color"):
        align_face(astronaut, points, color="bgr")
    with pytest.raises(ConfigError, match="size"):
        align_face(astronaut, points, size=0)
    with pytest.raises(ConfigError, match="score_threshold"):
        FaceDetector(score_threshold=1.5)
    with pytest.raises(WeightsError, match="not found"):
        FaceDetector(model_path=tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(WeightsError, match="broken.onnx"):
        FaceDetector(model_path=tmp_path / "broken.onnx")
