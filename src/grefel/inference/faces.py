"""Face detection (YuNet) and five-point similarity alignment.

`align_face` is also what builds training crops from in-the-wild datasets, so
training and inference crops come out of one code path: it takes any image and
any five points (YuNet's, or ones reduced from a dataset's own landmarks) and
makes no inference-only assumption.

Left and right are the subject's throughout, as in YuNet: the right eye is the
one on the image's left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from grefel.alignment import ALIGN_TEMPLATE
from grefel.errors import ConfigError, DataError, WeightsError

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "yunet_face_detection.onnx"
COLORS = ("grey", "rgb")



@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make field-wise == ambiguous
class Face:
    """One detected face in the pixels of the image given to `detect`.

    `landmarks` (read-only) are x, y of the right eye, left eye, nose tip, right
    mouth corner and left mouth corner, sides being the subject's: the right eye
    and right mouth corner are the ones on the image's left. Coordinates put
    pixel centres on integers, as OpenCV does.
    """

    box: tuple[float, float, float, float]   # x, y, w, h in image pixels
    score: float
    landmarks: np.ndarray                     # (5, 2) float32


def _check_image(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.size > 0
            and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))):
        got = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise DataError(f"image: expected a uint8 (H, W, 3) RGB or (H, W) grey array, got {got}")
    return image


class FaceDetector:
    """YuNet through cv2.FaceDetectorYN; the model file ships in the package (grefel/weights/).

    Not thread-safe: the cv2 object keeps its input size and buffers between
    calls, so use one detector per thread. Changing the input size per image is
    free (setInputSize only records it), so one instance serves any image size.
    """

    def __init__(self, model_path: str | Path | None = None, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, min_face_size: int = 0, max_side: int = 1280):
        for name, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: expected a value in [0, 1], got {value}")
        if min_face_size < 0:
            raise ConfigError(f"min_face_size: expected pixels >= 0, got {min_face_size}")
        if max_side < 32:
            raise ConfigError(f"detect size: expected at least 32 pixels (longest side), got {max_side}")
        path = Path(model_path) if model_path is not None else DEFAULT_MODEL
        if not path.is_file():
            raise WeightsError(f"{path}: face detector model not found")
        self.min_face_size = min_face_size
        self.max_side = max_side
        # OpenCV 5 warns on every create that its new DNN engine ignores targets; that is noise here.
        log_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            # top_k bounds candidates before NMS; 5000 is YuNet's own default and never binds on photos.
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold,
                                                  nms_threshold, 5000)
        except cv2.error as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise WeightsError(
                f"{path}: not a YuNet ONNX model cv2.FaceDetectorYN can load ({reason})") from None
        finally:
            cv2.utils.logging.setLogLevel(log_level)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in a uint8 (H, W, 3) RGB or (H, W) grey image, highest score first."""
        image = _check_image(image_rgb)
        height, width = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
        scale = self.max_side / max(height, width)
        if scale < 1.0:
            # YuNet finds faces of about 10-300 px: shrinking big photos keeps faces in range, time bounded.
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        sx, sy = bgr.shape[1] / width, bgr.shape[0] / height
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)                        # (N, 15): x, y, w, h, 5 x (x, y), score
        if rows is None:
            return []
        # Back to original pixels; resize maps pixel centres, hence the half-pixel terms.
        xs = (rows[:, [0, 4, 6, 8, 10, 12]] + 0.5) / sx - 0.5  # (N, 6) box x, then the 5 point x
        ys = (rows[:, [1, 5, 7, 9, 11, 13]] + 0.5) / sy - 0.5  # (N, 6)
        faces = []
        for x, y, (w, h), score in zip(xs, ys, rows[:, 2:4] / (sx, sy), rows[:, 14]):
            if min(w, h) < self.min_face_size:
                continue
            landmarks = np.stack([x[1:], y[1:]], axis=1).astype(np.float32)  # (5, 2)
            landmarks.setflags(write=False)
            faces.append(Face((float(x[0]), float(y[0]), float(w), float(h)), float(score), landmarks))
        return sorted(faces, key=lambda face: face.score, reverse=True)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity taking src points to dst points (Umeyama 1991).

    Closed form over all five points: RANSAC-style fits could drop one of only
    five, and a reflection is never allowed (it would mirror the face).
    """
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean                      # (5, 2) each
    src_var = (src_c ** 2).sum() / len(src)
    if src_var < 1e-6:
        raise DataError("landmarks: the five points coincide; cannot align a face from them")
    u, d, vt = np.linalg.svd(dst_c.T @ src_c / len(src))               # 2x2 cross-covariance
    sign = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / src_var
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def _shrink_smoothly(image: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Halve the face region (Gaussian pyramid) until the warp shrinks by at most 2x.

    warpAffine with INTER_LINEAR point-samples, so a 400 px face warped to 48
    would alias into noise unlike the smoothly downscaled training crops.
    """
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale >= 0.5:
        return image, matrix
    # Only the source region the crop reads from (plus the pyramid kernel's reach) is shrunk;
    # clipping it to the image keeps BORDER_REPLICATE reading the same edge pixels.
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[-1, -1], [size, -1], [-1, size], [size, size]], float) @ inverse[:, :2].T \
        + inverse[:, 2]                                                  # (4, 2) source x, y
    margin = 4 / scale + 2
    height, width = image.shape[:2]
    x0 = int(np.clip(np.floor(corners[:, 0].min() - margin), 0, width - 1))
    y0 = int(np.clip(np.floor(corners[:, 1].min() - margin), 0, height - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max() + margin), x0 + 1, width))
    y1 = int(np.clip(np.ceil(corners[:, 1].max() + margin), y0 + 1, height))
    image = image[y0:y1, x0:x1]
    matrix = np.hstack([matrix[:, :2], (matrix[:, :2] @ [x0, y0] + matrix[:, 2])[:, None]])
    while scale < 0.5:
        image = cv2.pyrDown(image)       # output pixel i is centred on input pixel 2i
        matrix = np.hstack([matrix[:, :2] * 2, matrix[:, 2:]])
        scale *= 2
    return image, matrix


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = 48,
               color: str = "grey") -> np.ndarray:
    """Warp a face so its five points land on ALIGN_TEMPLATE * size.

    `landmarks` is (5, 2) x, y in Face.landmarks order. Returns uint8 (size,
    size) grey or (size, size, 3) RGB; pixels outside the image repeat its edge.
    """
    image = _check_image(image_rgb)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size: expected a positive integer crop side, got {size!r}")
    if color not in COLORS:
        raise ConfigError(f"color: expected one of {', '.join(COLORS)}, got {color!r}")
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise DataError(f"landmarks: expected five finite (x, y) points, shape (5, 2), got {points.shape}")
    # Template units put 0 and `size` on the crop's outer edges; warpAffine puts pixel centres on integers.
    matrix = _similarity(points, ALIGN_TEMPLATE.astype(np.float64) * size - 0.5)
    image, matrix = _shrink_smoothly(image, matrix, size)
    if color == "grey" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif color == "rgb" and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def detect_and_align(image_rgb: np.ndarray, detector: FaceDetector, size: int = 48,
                     color: str = "grey") -> list[tuple[Face, np.ndarray]]:
    """Every detected face with its aligned crop, highest score first."""
    return [(face, align_face(image_rgb, face.landmarks, size, color)) for face in detector.detect(image_rgb)]
