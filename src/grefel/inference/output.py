"""Where `grefel predict` results go: readable lines, JSON, JSONL or CSV, and annotated copies.

JSON is one list written atomically at the end. JSONL (one record per image or
frame) and CSV (one row per face, each saying how many faces its image has; one
row with empty face fields for an image without faces, so it still counts as
done) are appended and flushed record by record, so an interrupted run keeps
what it finished and `--resume` continues it: `open_writer` first cuts an
existing file back to its last complete record and reports the (source, frame)
keys already in it. Rows of sources that a resumed run is not given are kept.
A file is (re)written only once there is a first result: a run that predicts
nothing leaves no empty file behind, nor replaces an earlier one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TextIO

import cv2
import numpy as np

from grefel.errors import ConfigError, DataError
from grefel.fileio import atomic_open, atomic_write_bytes, atomic_write_text
from grefel.inference.recognizer import FaceResult, ImageResult, face_rows, row_columns

OUTPUT_SUFFIXES = (".json", ".jsonl", ".csv")
RESUMABLE_SUFFIXES = (".jsonl", ".csv")
# Stored values: pixels to 0.01, seconds to 1e-4 (CSV), scores and probabilities to 1e-6, well inside any tolerance.
PIXEL_DIGITS, TIME_DIGITS, SCORE_DIGITS = 2, 4, 6
CSV_DIGITS = {"time": TIME_DIGITS, "x": PIXEL_DIGITS, "y": PIXEL_DIGITS, "w": PIXEL_DIGITS, "h": PIXEL_DIGITS}

Key = tuple[str, int | None]   # (source, frame); frame is None for images


def check_output_path(path: str | os.PathLike, resume: bool) -> Path:
    """The output file, its kind checked before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {path}: expected a {', '.join(OUTPUT_SUFFIXES)} file")
    if resume and path.suffix.lower() not in RESUMABLE_SUFFIXES:
        raise ConfigError(f"--resume needs a {' or '.join(RESUMABLE_SUFFIXES)} output (written as it goes), "
                          f"got {path}")
    if path.is_dir():
        raise ConfigError(f"--output {path}: is a directory, expected a file")
    return path


def face_record(face: FaceResult) -> dict[str, Any]:
    """One face as stored (rounded: see PIXEL_DIGITS); video faces also carry their track id and smoothed
    probabilities."""
    record = {"box": [round(v, PIXEL_DIGITS) for v in face.box], "score": round(face.score, SCORE_DIGITS),
              "label": face.label, "confidence": round(face.confidence, SCORE_DIGITS),
              "probabilities": {c: round(p, SCORE_DIGITS) for c, p in face.probabilities.items()},
              "landmarks": ([[round(v, PIXEL_DIGITS) for v in point] for point in face.landmarks]
                            if face.landmarks else None)}
    if face.track is not None:
        record["track"] = face.track
        record["smoothed"] = {c: round(p, SCORE_DIGITS) for c, p in face.smoothed.items()}
    return record


def image_record(result: ImageResult) -> dict[str, Any]:
    return {"source": result.source, "frame": result.frame, "time": result.time, "width": result.width,
            "height": result.height, "faces": [face_record(face) for face in result.faces]}


def describe(result: ImageResult) -> list[str]:
    """Readable lines: `photo.jpg: face 1 at x=178 y=63 w=90 h=113 happiness 0.93`, `photo.jpg: no face`,
    `clip.mp4 frame 30 (1.00 s): face 1 #2 at ...` (#2: the person's track)."""
    where = result.source if result.frame is None else f"{result.source} frame {result.frame} ({result.time:.2f} s)"
    if not result.faces:
        return [f"{where}: no face"]
    return [f"{where}: face {i}{'' if face.track is None else f' #{face.track}'} at "
            f"{' '.join(f'{k}={round(v)}' for k, v in zip('xywh', face.box))} {face.label} {face.confidence:.2f}"
            for i, face in enumerate(result.faces, 1)]


class ResultWriter(Protocol):
    def write(self, result: ImageResult) -> None: ...

    def close(self, complete: bool = True) -> None:
        """Finish; JSON is written only after a complete run, incremental files keep what they have."""


class ConsoleWriter:
    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo

    def write(self, result: ImageResult) -> None:
        for line in describe(result):
            self.echo(line)

    def close(self, complete: bool = True) -> None:
        pass


class JsonWriter:
    """Collects records; `close` (after a complete run only) writes them as one list, atomically."""

    def __init__(self, path: Path):
        self.path, self.records = path, []

    def write(self, result: ImageResult) -> None:
        self.records.append(image_record(result))

    def close(self, complete: bool = True) -> None:
        if complete and self.records:   # one record a line: a face's landmarks do not take a line per number
            atomic_write_text(self.path, "[\n" + ",\n".join(json.dumps(r) for r in self.records) + "\n]\n")


class _AppendWriter:
    """An append-mode text file flushed after every record, so a crash loses at most the record in flight.

    `start` replaces the file's content at the first record (a new run); None appends to it as it is
    (a resumed run)."""

    def __init__(self, path: Path, start: str | None):
        self.path, self.start = path, start
        self.handle: TextIO | None = None

    def _append(self, text: str) -> None:
        if self.handle is None:
            if self.start is not None:
                atomic_write_text(self.path, self.start)
            self.handle = open(self.path, "a", encoding="utf-8", newline="")
        self.handle.write(text)
        self.handle.flush()

    def close(self, complete: bool = True) -> None:
        if self.handle is not None:
            self.handle.close()


class JsonlWriter(_AppendWriter):
    def write(self, result: ImageResult) -> None:
        self._append(json.dumps(image_record(result)) + "\n")


class CsvWriter(_AppendWriter):
    def __init__(self, path: Path, classes: list[str], start: str | None):
        super().__init__(path, start)
        self.classes, self.columns = classes, row_columns(classes)

    def write(self, result: ImageResult) -> None:
        # An image without faces gets a row too (faces 0), so --resume counts it as done.
        rows = face_rows(result, self.classes) or [[result.source, result.frame, result.time, 0]
                                                   + [None] * (len(self.columns) - 4)]
        self._append(_csv_text([[_csv_value(c, v) for c, v in zip(self.columns, row)] for row in rows]))


def _csv_value(column: str, value: Any) -> Any:
    if value is None:
        return ""
    return round(value, CSV_DIGITS.get(column, SCORE_DIGITS)) if isinstance(value, float) else value


@dataclass
class Resumed:
    """What a --resume output already holds: the (source, frame) keys done, and each video's highest track
    id, so that the run continues the ids rather than give a new person one already used."""
    done: set[Key] = field(default_factory=set)
    last_track: dict[str, int] = field(default_factory=dict)

    def add(self, source: str, frame: int | None, track: int | None) -> None:
        self.done.add((source, frame))
        if track is not None:
            self.last_track[source] = max(track, self.last_track.get(source, 0))

    def first_tracks(self) -> dict[str, int]:
        """The id each video's next new track gets."""
        return {source: last + 1 for source, last in self.last_track.items()}


def open_writer(path: Path | None, classes: list[str], resume: bool,
                echo: Callable[[str], None]) -> tuple[ResultWriter, Resumed]:
    """(writer, what the file already holds). Without --resume an existing file is replaced."""
    if path is None:
        return ConsoleWriter(echo), Resumed()
    suffix = path.suffix.lower()
    if suffix == ".json":
        return JsonWriter(path), Resumed()
    resumed = Resumed()
    start = _csv_text([row_columns(classes)]) if suffix == ".csv" else ""
    if resume and path.is_file():
        resumed = _resume_jsonl(path) if suffix == ".jsonl" else _resume_csv(path, classes)
        start = None
    return (JsonlWriter(path, start) if suffix == ".jsonl" else CsvWriter(path, classes, start)), resumed


def _complete_text(path: Path) -> tuple[str, str]:
    """(the file up to its last newline, all of it): a record without its newline was cut off."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); cannot resume") from None
    return text[:text.rfind("\n") + 1], text


def _resume_jsonl(path: Path) -> Resumed:
    complete, text = _complete_text(path)
    resumed = Resumed()
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            record = json.loads(line)
            for face in record["faces"] or [{}]:
                resumed.add(record["source"], record["frame"], face.get("track"))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
            raise DataError(f"{path} line {number}: not a grefel predict record (JSON with source, frame and "
                            f"faces); cannot resume from this file") from None
    if complete != text:
        atomic_write_text(path, complete)
    return resumed


def _resume_csv(path: Path, classes: list[str]) -> Resumed:
    complete, text = _complete_text(path)
    rows = list(csv.reader(io.StringIO(complete)))
    if not rows:        # cut inside the header: nothing was done
        atomic_write_text(path, _csv_text([row_columns(classes)]))
        return Resumed()
    if rows[0] != row_columns(classes):
        raise DataError(f"{path}: header is not {','.join(row_columns(classes))} (another model's classes, a CSV "
                        f"of an earlier grefel without the faces column, or not a grefel predict CSV); cannot "
                        f"resume from it")
    keys, faces, tracks = [], [], []
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(rows[0]):
            raise DataError(f"{path} line {number}: {len(row)} fields, expected {len(rows[0])}; cannot resume")
        try:
            keys.append((row[0], int(row[1]) if row[1] else None))
            faces.append(int(row[3]))
            tracks.append(int(row[5]) if row[5] else None)
        except ValueError:
            raise DataError(f"{path} line {number}: frame {row[1]!r}, faces {row[3]!r} or track {row[5]!r} is "
                            f"not an integer; cannot resume") from None
    # An image's rows are consecutive; the last image's are complete when they are as many as its faces
    # (one row for none). Only then is it done: rows cut short are redone, finished ones never.
    kept = len(keys)
    while kept and keys[kept - 1] == keys[-1]:
        kept -= 1
    if keys and len(keys) - kept == max(faces[-1], 1):
        kept = len(keys)
    if kept < len(keys) or complete != text:
        atomic_write_text(path, _csv_text(rows[:kept + 1]))
    resumed = Resumed()
    for (source, frame), track in zip(keys[:kept], tracks):
        resumed.add(source, frame, track)
    return resumed


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


# ---- annotated copies -----------------------------------------------------------------------

def draw_faces(image_rgb: np.ndarray, result: ImageResult) -> np.ndarray:
    """A BGR copy with each face's box and `label 0.93`; line and text scale with the image."""
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_GRAY2BGR if image_rgb.ndim == 2 else cv2.COLOR_RGB2BGR)
    side = max(bgr.shape[:2])
    thickness = max(1, round(side / 400))
    scale = max(0.3, side / 1000)
    for face in result.faces:
        x, y, w, h = (round(v) for v in face.box)
        cv2.rectangle(bgr, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thickness)
        text = ("" if face.track is None else f"#{face.track} ") + f"{face.label} {face.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        if tw > bgr.shape[1]:   # small images (48 px crops): shrink the label to fit across
            scale *= bgr.shape[1] / tw
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y - th - base if y - th - base >= 0 else y   # above the box, or inside it at the top edge
        left = max(0, min(x, bgr.shape[1] - 1 - tw))       # whole, even for a face at the right edge
        cv2.rectangle(bgr, (left, top), (left + tw, top + th + base), (0, 255, 0), cv2.FILLED)
        cv2.putText(bgr, text, (left, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return bgr


def write_annotated_image(path: Path, image_rgb: np.ndarray, result: ImageResult) -> None:
    ok, encoded = cv2.imencode(path.suffix, draw_faces(image_rgb, result))
    if not ok:
        raise DataError(f"{path}: OpenCV cannot encode a {path.suffix} image")
    atomic_write_bytes(path, encoded.tobytes())


# Containers FFmpeg will put mp4v into; an annotated copy of any other video is written as .mp4.
MP4V_CONTAINERS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


def annotated_video_name(name: Path) -> Path:
    return name if name.suffix.lower() in MP4V_CONTAINERS else name.with_suffix(".mp4")


class AnnotatedVideo:
    """An mp4v video of the annotated frames, at the source rate divided by the frame step.

    cv2.VideoWriter needs a file name, so frames go to a private temp file that
    is copied into place through grefel.fileio when the video is complete.
    """

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self._tmp = tempfile.TemporaryDirectory(prefix="grefel-annotate-")
        self._file = Path(self._tmp.name) / f"video{path.suffix}"
        self._writer: cv2.VideoWriter | None = None

    def add(self, frame_rgb: np.ndarray, result: ImageResult) -> None:
        bgr = draw_faces(frame_rgb, result)
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self._file), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                           (bgr.shape[1], bgr.shape[0]))
            if not self._writer.isOpened():
                raise DataError(f"{self.path}: OpenCV cannot write an mp4v video with this name")
        self._writer.write(bgr)

    def close(self, keep: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            if keep:
                with open(self._file, "rb") as source, atomic_open(self.path, "wb") as target:
                    shutil.copyfileobj(source, target)
        self._tmp.cleanup()


class Annotator:
    """Draws each result into its place under --annotate: an image at once, a video's frames into one file."""

    def __init__(self, targets: dict[int, Path], video_fps: dict[int, float]):
        self.targets, self.video_fps = targets, video_fps
        self._video: tuple[int, AnnotatedVideo] | None = None

    def add(self, job: int, image_rgb: np.ndarray | None, result: ImageResult) -> None:
        target = self.targets.get(job)
        if target is None:
            return
        if result.frame is None:
            write_annotated_image(target, image_rgb, result)
            return
        if self._video is None or self._video[0] != job:   # the previous video has ended
            self.close()
            self._video = (job, AnnotatedVideo(target, self.video_fps[job]))
        self._video[1].add(image_rgb, result)

    def close(self, complete: bool = True) -> None:
        """Finish the open video; after a failure its partial copy is dropped."""
        if self._video is not None:
            self._video[1].close(keep=complete)
            self._video = None
