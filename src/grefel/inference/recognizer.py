"""`Recognizer`: any photo, folder or video to per-face expressions, offline.

Detection (YuNet), alignment onto the template the training crops match,
conversion to the checkpoint's input (size, grey/RGB), then the model's
calibrated probabilities. The same preprocessing serves training crops
(`grefel.inference.faces.align_face`), so what the model sees at inference is
what it saw in training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from grefel.data.cache import default_cache_dir
from grefel.data.headers import EXTENSIONS, MAX_PIXELS, check_photo
from grefel.data.images import decode_image, native_stderr_without_libpng, resize_square
from grefel.data.transforms import eval_transform
from grefel.devices import resolve_device
from grefel.errors import ConfigError, DataError
from grefel.inference.backends import onnx_runtime_version, resolve_backend
from grefel.inference.faces import Face, FaceDetector, align_face
from grefel.inference.tracking import FaceTracker, TrackSmoother
from grefel.inference.video import VideoTracks
from grefel.models.dlib_resnet import DLIB_INPUT_SIZE
from grefel.models.model_file import read_checkpoint_info, resolve_checkpoint
from grefel.models.serving import ServingModel, served_tta_flip

if TYPE_CHECKING:
    import pandas

# grefel reports an unreadable or truncated video itself, once: FFmpeg's own complaints ("moov atom not found")
# stay out of the terminal, unless the user set the level. OpenCV reads it when its FFmpeg backend first
# opens a file in the process, so it is set on import, before any capture.
FFMPEG_QUIET = os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")   # -8: AV_LOG_QUIET
IMAGE_EXTENSIONS = EXTENSIONS
ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
@dataclass(repr=False)
class FaceResult:
    box: list[float]                 # x, y, w, h in source pixels (the whole image with detect=False)
    score: float                     # detector score (1.0 with detect=False)
    label: str
    confidence: float                # probability of `label`
    probabilities: dict[str, float]  # over every class, calibrated
    landmarks: list[list[float]] | None = None  # 5 points (x, y), when detected: eyes, nose, mouth corners
    track: int | None = None         # videos: the person's track id, the same in every frame they are in
    smoothed: dict[str, float] | None = None   # videos: the track's probabilities averaged over time

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types: `json.dumps(face.to_dict())`; `track` and `smoothed` only for video faces."""
        record = asdict(self)
        if self.track is None:
            del record["track"], record["smoothed"]
        return record

    def __repr__(self) -> str:
        x, y, w, h = (round(v) for v in self.box)
        who = "" if self.track is None else f"#{self.track} "
        return f"FaceResult({who}{self.label} {self.confidence:.2f} at x={x} y={y} w={w} h={h})"


@dataclass(repr=False)
class ImageResult:
    source: str
    width: int
    height: int
    faces: list[FaceResult] = field(default_factory=list)
    frame: int | None = None         # frame index, for videos
    time: float | None = None        # seconds from the video's start, for videos

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types, the faces included: `json.dumps(result.to_dict())`."""
        return {**asdict(self), "faces": [face.to_dict() for face in self.faces]}

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per face (pandas, the `pandas` extra); see `results_dataframe`."""
        return results_dataframe([self])

    def __repr__(self) -> str:
        where = self.source if self.frame is None else f"{self.source} frame {self.frame} ({self.time:.2f} s)"
        faces = ", ".join(("" if f.track is None else f"#{f.track} ") + f"{f.label} {f.confidence:.2f}"
                          for f in self.faces)
        count = f"{len(self.faces)} face" + ("" if len(self.faces) == 1 else "s")
        return f"ImageResult({where} {self.width}x{self.height}, {count}{': ' + faces if faces else ''})"


def row_columns(classes: list[str]) -> list[str]:
    """The columns of a result flattened to rows: source, frame, time, the face columns, p_<class>
    (probabilities), s_<class> (a video track's smoothed probabilities); faces: how many the image has."""
    return ["source", "frame", "time", "faces", "face", "track", "x", "y", "w", "h", "score", "label", "confidence",
            *(f"p_{c}" for c in classes), *(f"s_{c}" for c in classes)]


def face_rows(result: ImageResult, classes: list[str]) -> list[list[Any]]:
    """`result` as rows in `row_columns(classes)` order, one per face, at full precision; None where a field
    does not apply (a photo's frame, time, track and smoothed probabilities). No face: no row."""
    rows = []
    for number, face in enumerate(result.faces, 1):
        smoothed = [face.smoothed[c] for c in classes] if face.smoothed else [None] * len(classes)
        rows.append([result.source, result.frame, result.time, len(result.faces), number, face.track, *face.box,
                     face.score, face.label, face.confidence, *(face.probabilities[c] for c in classes), *smoothed])
    return rows


def results_dataframe(results: Iterable[ImageResult]) -> pandas.DataFrame:
    """One row per face of `results` (pandas, the `pandas` extra), in the columns of `row_columns`, as
    `grefel predict --output r.csv` writes them (there rounded, and with a row for an image without faces)."""
    try:
        import pandas
    except ImportError:
        raise ConfigError("to_dataframe needs pandas: pip install 'grefel[pandas]'") from None
    rows, classes = [], []
    for result in results:
        if result.faces and not classes:
            classes = list(result.faces[0].probabilities)
        rows += face_rows(result, classes)
    return pandas.DataFrame(rows, columns=row_columns(classes))


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3); DataError naming the file if it cannot be read or decoded, is not a format
    grefel reads, or declares more than `max_pixels` (checked before decoding: no decompression bombs)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        check_photo(data, max_pixels)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    with native_stderr_without_libpng():
        image = decode_image(data, "rgb")
    if image is None:
        raise DataError(f"{path}: not a decodable image")
    return image


class Recognizer:
    """A trained checkpoint (the shipped FERPlus model by default) ready for inference.

    >>> rec = Recognizer()                      # offline, shipped model
    >>> result = rec.predict("photo.jpg")       # ImageResult with one FaceResult per face
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, device: str = "cpu",
                 backend: str = "auto", detect: bool = True, min_face_size: int = 0,
                 score_threshold: float = 0.7, batch_size: int = 32, onnx_path: str | os.PathLike | None = None,
                 tta_flip: bool | None = None, detect_size: int = 1280, smooth: float = 0.5):
        """`backend`: auto (ONNX Runtime when the onnx extra is installed and the device is the CPU, the
        graph exported once into the grefel cache; else PyTorch), torch or onnx; `.backend` says which
        runs. `tta_flip`: average each face with its mirror (None: as the checkpoint was evaluated; False
        halves the classification time). `detect_size`: photos larger than this are shrunk to it (longest
        side, pixels) for detection only; a smaller value detects faster and misses more small faces.
        `smooth`: videos: the time constant in seconds of each track's moving average of probabilities
        (`FaceResult.smoothed`; 0 turns it off: `smoothed` then repeats `probabilities`)."""
        if smooth < 0:
            raise ConfigError(f"smooth: expected a time constant of 0 seconds or more, got {smooth}")
        self.smooth = float(smooth)
        self._identity = None
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive number of faces per batch, got {batch_size}")
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.backend = backend = resolve_backend(backend, device)
        if backend == "torch":
            # The model file is read once: ServingModel keeps its JSON as `.info`.
            serving = ServingModel.from_checkpoint(self.checkpoint, tta_flip)
            self.info, self.tta_flip = serving.info, serving.tta_flip
            self._device = resolve_device(device)
            self._model = serving.to(self._device).to(memory_format=torch.channels_last)
        else:
            self.info = read_checkpoint_info(self.checkpoint)
            self.tta_flip = served_tta_flip(self.info, tta_flip)
            self._session = self._onnx_session(onnx_path, device)
        self.classes: list[str] = list(self.info["class_names"])
        prep = self.info["preprocessing"]
        self.crop_size, self.color = int(prep["crop_size"]), prep["color"]
        self.transform = eval_transform(self.info["input"]["size"], self.info["input"]["channels"])
        self.batch_size = batch_size
        self.detector = FaceDetector(score_threshold=score_threshold, min_face_size=min_face_size,
                                     max_side=detect_size) if detect else None

    # ---- backends ---------------------------------------------------------------------------

    def serving_model(self) -> ServingModel:
        """The checkpoint as a ServingModel (eval mode): what both backends compute."""
        if self.backend == "torch":
            return self._model
        return ServingModel.from_checkpoint(self.checkpoint, self.tta_flip)

    def describe(self) -> str:
        """One line: the backend that runs, on which device, and the served settings."""
        runtime = (f"ONNX Runtime {onnx_runtime_version()} on {self._session.get_providers()[0]}"
                   if self.backend == "onnx" else f"PyTorch {torch.__version__} on {self._device}")
        return (f"backend {self.backend} ({runtime}); model {self.checkpoint.name} ({self.info['preset']}); "
                f"test-time flip {'on' if self.tta_flip else 'off'}")

    def _onnx_session(self, onnx_path: str | os.PathLike | None, device: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("device cuda with backend onnx: this onnxruntime has no CUDAExecutionProvider "
                                  "(install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        path = Path(onnx_path) if onnx_path else self._onnx_cache_path()
        if not path.is_file():
            ServingModel.from_checkpoint(self.checkpoint, self.tta_flip).export_onnx(path)
        options = ort.SessionOptions()
        # By default the pool's threads spin after each run, taking the cores from the face detection that follows.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)

    def _onnx_cache_path(self) -> Path:
        """Where the exported model of this checkpoint lives: the grefel cache, keyed by content.

        Not beside the checkpoint: the shipped one sits in site-packages, which may
        be read-only, and `grefel calibrate` rewrites the temperature in the JSON
        without touching the weights, so a file found by name could be stale. The
        key covers the weights and everything else the exported graph bakes in.
        """
        weights = self.info.get("weights_sha256") or hashlib.sha256(self.checkpoint.read_bytes()).hexdigest()
        baked = {k: self.info.get(k) for k in ("preset", "model", "input", "serve", "temperature", "logit_adjustment")}
        baked["tta_flip"] = self.tta_flip
        key = hashlib.sha256(json.dumps([weights, baked], sort_keys=True).encode()).hexdigest()
        return default_cache_dir() / "onnx" / f"{key[:32]}.onnx"

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities (N, C) of aligned face crops (uint8, any size, grey or RGB)."""
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32)
        out = []
        for start in range(0, len(crops), self.batch_size):
            x = np.stack([self.transform(c).numpy() for c in crops[start:start + self.batch_size]])
            out.append(self._run(x))
        return np.concatenate(out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnx":
            return self._session.run(None, {"image": x})[0]
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self._device).contiguous(memory_format=torch.channels_last)
            return self._model(t).float().cpu().numpy()

    # ---- faces ------------------------------------------------------------------------------

    def identity_descriptors(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """(N, 128) dlib face descriptors of `faces` in `image` (RGB): who a face is, for tracking. The
        shipped face-recognition ResNet is loaded on first use; two faces of one person lie closer than 0.6."""
        if not faces:
            return np.zeros((0, 128), np.float32)
        if self._identity is None:
            from grefel.models.pretrained import load_dlib_resnet

            self._identity = load_dlib_resnet().eval()
        chips = np.stack([align_face(image, face.landmarks, DLIB_INPUT_SIZE, "rgb") for face in faces])
        with torch.inference_mode():
            x = torch.from_numpy(chips).permute(0, 3, 1, 2).float().div_(255)   # (N, 3, 150, 150)
            return self._identity(x).numpy()

    def crops(self, image: np.ndarray) -> list[tuple[Face | None, np.ndarray]]:
        """Aligned crops of every face in an RGB or grey image (the whole image with detect=False)."""
        if self.detector is None:
            return [(None, resize_square(_to(image, self.color), self.crop_size))]
        return [(face, align_face(image, face.landmarks, self.crop_size, self.color))
                for face in self.detector.detect(image)]

    def _result(self, source: str, shape: tuple[int, ...], faces: list[Face | None], probs: np.ndarray,
                frame: int | None = None, time: float | None = None) -> ImageResult:
        h, w = shape[:2]
        result = ImageResult(source=source, width=w, height=h, frame=frame, time=time)
        for face, p in zip(faces, probs):
            k = int(p.argmax())
            result.faces.append(FaceResult(
                box=[float(v) for v in face.box] if face else [0.0, 0.0, float(w), float(h)],
                score=float(face.score) if face else 1.0, label=self.classes[k], confidence=float(p[k]),
                probabilities={c: float(v) for c, v in zip(self.classes, p)},
                landmarks=face.landmarks.tolist() if face else None))
        return result

    # ---- public API -------------------------------------------------------------------------

    def predict(self, inputs: ImageInput | Sequence[ImageInput]) -> ImageResult | list[ImageResult]:
        """One image -> ImageResult; a list of them -> list of ImageResults, in order.

        An image is a path, a PIL image (any mode) or a uint8 numpy array: RGB (H, W, 3), RGBA (H, W, 4)
        or grey (H, W); OpenCV's BGR arrays need `[:, :, ::-1]` first. Faces of all the images are
        classified together in batches.
        """
        single = isinstance(inputs, (np.ndarray, str, os.PathLike, Image.Image))
        items = [inputs] if single else list(inputs)
        results = list(self.iter_predict(items))
        return results[0] if single else results

    def iter_predict(self, items: Iterable[ImageInput]) -> Iterator[ImageResult]:
        """Results in input order; faces are batched across images."""
        def entries():
            for i, item in enumerate(items):
                if isinstance(item, np.ndarray):
                    rgba = item.ndim == 3 and item.shape[2] == 4
                    yield f"<array {i}>", np.ascontiguousarray(item[:, :, :3]) if rgba else item, None, None
                elif isinstance(item, Image.Image):
                    name = getattr(item, "filename", "") or f"<image {i}>"
                    yield name, np.asarray(item.convert("RGB")), None, None
                elif isinstance(item, (str, os.PathLike)):
                    yield str(item), read_image(item), None, None
                else:
                    raise ConfigError(f"input {i}: a {type(item).__name__}; expected a path, a PIL image or a "
                                      f"numpy array")
        return self.predict_entries(entries())

    def predict_video(self, path: str | os.PathLike, every: int = 1, fps: float | None = None
                      ) -> Iterator[ImageResult]:
        """Per-frame results of every `every`-th frame (or `fps` frames a second), read lazily, each with
        its time and, per face, its track id and smoothed probabilities; faces batched across frames.

        A truncated or corrupt video stops at its last readable frame with a warning.
        """
        source = str(path)
        return self.predict_entries((source, frame, index, time)
                                    for index, time, frame in video_frames(path, every, fps))

    def track_video(self, path: str | os.PathLike, every: int = 1, fps: float | None = None) -> VideoTracks:
        """The whole video's results grouped by person: `VideoTracks` (frames, tracks, summary(),
        timeline(), to_dataframe())."""
        return VideoTracks(str(path), self.classes, list(self.predict_video(path, every, fps)))

    def predict_entries(self, entries: Iterable[tuple[str, np.ndarray, int | None, float | None]],
                        first_track: Mapping[str, int] | None = None) -> Iterator[ImageResult]:
        """(source, RGB image, frame index or None, time in seconds or None) -> results in order; faces
        are batched across entries. Consecutive frames of one source are a video: their faces are tracked
        (`FaceResult.track`, `FaceResult.smoothed`; grefel.inference.tracking), from its first frame given,
        with ids from `first_track[source]` (default 1).

        For callers that read images themselves (to skip unreadable files, or keep
        frames for drawing): `entries` is consumed lazily, a batch at a time.
        """
        # Only the image's shape waits with its crops, and faceless entries count towards the batch
        # too: a long video without faces must neither hold its frames nor hold back its results.
        # Tracking needs the pixels, so it runs here, as each frame is read, not when its batch is classified.
        pending: list[tuple] = []
        waiting = 0
        video: tuple[str, FaceTracker, TrackSmoother] | None = None
        for source, image, frame, time in entries:
            pairs = self.crops(image)
            faces = [f for f, _ in pairs]
            tracks, smoother = None, None
            if frame is not None and self.detector is not None:
                if video is None or video[0] != source:
                    tracker = FaceTracker(self.identity_descriptors, first_id=(first_track or {}).get(source, 1))
                    video = (source, tracker, TrackSmoother(self.smooth))
                tracks, smoother = video[1].update(image, faces, time), video[2]
            pending.append((source, image.shape, faces, [c for _, c in pairs], frame, time, tracks, smoother))
            waiting += len(pairs)
            if waiting >= self.batch_size or len(pending) >= self.batch_size:
                yield from self._flush(pending)
                pending, waiting = [], 0
        yield from self._flush(pending)

    def _flush(self, pending) -> Iterator[ImageResult]:
        probs = self.classify([c for entry in pending for c in entry[3]])
        offset = 0
        for source, shape, faces, crops, frame, time, tracks, smoother in pending:
            result = self._result(source, shape, faces, probs[offset:offset + len(crops)], frame, time)
            for face, track, p in zip(result.faces, tracks or [], probs[offset:offset + len(crops)]):
                face.track = track
                face.smoothed = {c: float(v) for c, v in zip(self.classes, smoother(track, time, p))}
            offset += len(crops)
            yield result


def _to(image: np.ndarray, color: str) -> np.ndarray:
    if color == "grey":
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)


def open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    """An OpenCV capture of `path` (FFmpeg's own log is quiet: see FFMPEG_QUIET)."""
    return cv2.VideoCapture(str(path))


def video_info(path: str | os.PathLike) -> tuple[int, float]:
    """(frame count, frames per second) from the container; (0, 0.0) when it cannot tell."""
    capture = open_video(path)
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


def video_frames(path: str | os.PathLike, every: int = 1, fps: float | None = None
                 ) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, seconds, RGB frame) of every `every`-th frame, or of frames `1 / fps` seconds apart (`fps`,
    whatever the source's rate), one frame in memory at a time. Times are the container's timestamps,
    or index / frame rate where it has none."""
    if every < 1:
        raise ConfigError(f"every: expected a positive frame step, got {every}")
    if fps is not None and not fps > 0:
        raise ConfigError(f"fps: expected a positive number of frames a second, got {fps}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    capture = open_video(path)
    if not capture.isOpened():
        raise DataError(f"{path}: not a readable video")
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    index, last, bucket = -1, -1.0, -1
    try:
        while True:
            ok = capture.grab()
            if not ok:
                break
            index += 1
            stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            time = stamp if stamp > last or index == 0 else (index / rate if rate > 0 else float(index))
            last = time
            if fps is not None:                       # the first frame of each 1 / fps slice of time
                if math.floor(time * fps + 1e-6) == bucket:
                    continue
                bucket = math.floor(time * fps + 1e-6)
            elif index % every:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                break
            yield index, round(time, 4), cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    if expected and index + 1 < expected:
        warnings.warn(f"{path}: stopped at frame {index + 1} of {expected} (truncated or corrupt video)",
                      stacklevel=2)
