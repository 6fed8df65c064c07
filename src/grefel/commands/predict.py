"""`grefel predict`: the expression of every face in photos, folders of photos and videos.

Inputs are listed and checked before any work. Each image or video frame is
read, detected and aligned in turn, and faces are classified in batches across
images and frames (`Recognizer.predict_entries`), so memory stays bounded by
the batch however long the video. A file that cannot be read is reported and
skipped; the run goes on and the summary counts it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from grefel.commands.options import add_device_argument
from grefel.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

    from grefel.inference.recognizer import ImageResult
    from grefel.progress import Progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="facial expressions in photos, folders and videos",
        description="Detect faces, align them and predict their expression with a checkpoint (the shipped "
                    "FERPlus model by default). Folders are searched recursively for images; videos are "
                    "recognised by extension. Without --output, prints one line per face.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders and video files")
    parser.add_argument("--checkpoint", help="X.safetensors (with X.json beside it); default: the shipped model")
    parser.add_argument("--output", help="write results to FILE.json (at the end), FILE.jsonl or FILE.csv "
                                         "(as they come, resumable)")
    parser.add_argument("--annotate", metavar="DIR", help="write copies with boxes and labels drawn here, "
                                                          "same names (folders mirrored; videos in mp4v)")
    parser.add_argument("--batch-size", type=int, default=32, help="faces classified together (default 32)")
    parser.add_argument("--min-face-size", type=int, default=0, help="ignore faces smaller than this (pixels)")
    parser.add_argument("--score-threshold", type=float, default=0.7, help="face detector score (default 0.7)")
    add_device_argument(parser)
    parser.add_argument("--backend", default="auto",
                        help="auto (default): onnx on the CPU when the onnx extra is installed, else torch; onnx "
                             "is exported once, then cached")
    parser.add_argument("--no-detect", action="store_true", help="each image is already a cropped face")
    parser.add_argument("--detect-size", type=int, default=1280, metavar="PX",
                        help="shrink larger photos to this longest side for detection only (default 1280; "
                             "smaller is faster and misses more small faces)")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each face with its mirror (default: the checkpoint's setting; "
                             "--no-tta-flip halves classification time)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="videos: every N-th frame (default 1)")
    parser.add_argument("--fps", type=float, metavar="F",
                        help="videos: analyse F frames a second, whatever the source's rate (instead of --every)")
    parser.add_argument("--smooth", type=float, default=0.5, metavar="SECONDS",
                        help="videos: time constant of each person's moving average of probabilities, reported "
                             "beside the raw ones and used by --summary and --timeline (default 0.5; 0: off)")
    parser.add_argument("--summary", metavar="FILE.json",
                        help="videos: per person (track), time on screen, share of time per expression and the "
                             "segments where one dominates")
    parser.add_argument("--timeline", metavar="FILE.png",
                        help="videos: one panel per person of the expression probabilities over time (several "
                             "videos: FILE_<video>.png each)")
    parser.add_argument("--verbose", action="store_true",
                        help="say which backend, model and settings run, before the results")
    parser.add_argument("--resume", action="store_true",
                        help="skip the images and frames already in the .jsonl/.csv --output and append the rest "
                             "(an annotated video then holds only the frames processed by this run)")
    parser.set_defaults(func=run)


@dataclass
class Job:
    path: Path
    kind: str             # "image", "video" or "skip"
    relative: Path        # its annotated copy's place under --annotate
    reason: str = ""      # why a "skip" is skipped

    @property
    def source(self) -> str:
        return str(self.path)


def collect_jobs(inputs: list[str]) -> list[Job]:
    """Every input in order; folders expanded (sorted, recursive, hidden files ignored)."""
    from grefel.inference.recognizer import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    missing = [name for name in inputs if not Path(name).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more missing inputs)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: no such file or directory{more}")
    jobs = []
    for name in inputs:
        path = Path(name)
        if not path.is_dir():
            kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
            jobs.append(Job(path, kind, Path(path.name)))
            continue
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(path)
            if any(part.startswith(".") for part in relative.parts) or not file.is_file():
                continue
            suffix = file.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                jobs.append(Job(file, "image", relative))
            elif suffix in VIDEO_EXTENSIONS:
                jobs.append(Job(file, "skip", relative, "a video inside a folder (name videos as inputs)"))
            else:
                jobs.append(Job(file, "skip", relative, "not an image file"))
    return jobs


def annotation_targets(jobs: list[Job], directory: Path) -> dict[int, Path]:
    """Where each job's annotated copy goes; refuses to overwrite an input or to write one place twice."""
    from grefel.inference.output import annotated_video_name

    targets: dict[int, Path] = {}
    seen: dict[Path, Job] = {}
    for i, job in enumerate(jobs):
        if job.kind == "skip":
            continue
        target = directory / (annotated_video_name(job.relative) if job.kind == "video" else job.relative)
        key = target.resolve()
        if key == job.path.resolve():
            raise ConfigError(f"--annotate {directory}: would overwrite the input {job.path}")
        if key in seen:
            raise ConfigError(f"--annotate {directory}: {seen[key].path} and {job.path} would both be "
                              f"drawn to {target}")
        seen[key] = job
        targets[i] = target
    return targets


@dataclass
class Tally:
    images: int = 0
    frames: int = 0
    faces: int = 0
    skipped: int = 0
    resumed: int = 0      # images and frames already in the --resume output

    def add(self, result: ImageResult) -> None:
        self.faces += len(result.faces)
        if result.frame is None:
            self.images += 1
        else:
            self.frames += 1

    def line(self, seconds: float, output: str | None) -> str:
        def count(n: int, noun: str) -> str:
            return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

        parts = [count(self.images, "image"), count(self.frames, "video frame"), count(self.faces, "face"),
                 f"{self.skipped} skipped"]
        if self.resumed:
            parts.append(f"{self.resumed} already done")
        return ", ".join(parts) + f", {seconds:.2f} s" + (f" -> {output}" if output else "")


def run(args: argparse.Namespace) -> int:
    from grefel.inference.output import Annotator, check_output_path, open_writer
    from grefel.inference.recognizer import Recognizer, video_info
    from grefel.progress import Progress

    start = time.perf_counter()
    if args.every < 1:
        raise ConfigError(f"--every {args.every}: expected a positive frame step")
    if args.fps is not None and (not args.fps > 0 or args.every != 1):
        raise ConfigError(f"--fps {args.fps}: expected a positive number of frames a second, without --every")
    if args.smooth < 0:
        raise ConfigError(f"--smooth {args.smooth}: expected a time constant of 0 seconds or more")
    for flag, path, suffix in (("--summary", args.summary, ".json"), ("--timeline", args.timeline, ".png")):
        if path and Path(path).suffix.lower() != suffix:
            raise ConfigError(f"{flag} {path}: expected a {suffix} file")
    if args.resume and not args.output:
        raise ConfigError("--resume needs --output FILE.jsonl or FILE.csv to resume from")
    output = check_output_path(args.output, args.resume) if args.output else None
    jobs = collect_jobs(args.inputs)
    targets = annotation_targets(jobs, Path(args.annotate)) if args.annotate else {}
    video_jobs = [job for job in jobs if job.kind == "video"]
    if (args.summary or args.timeline) and (not video_jobs or args.no_detect):
        raise ConfigError("--summary and --timeline follow the people in videos: "
                          + ("give a video" if not video_jobs else "they need face detection (no --no-detect)"))
    recognizer = Recognizer(args.checkpoint, device=args.device, backend=args.backend, detect=not args.no_detect,
                            min_face_size=args.min_face_size, score_threshold=args.score_threshold,
                            batch_size=args.batch_size, tta_flip=args.tta_flip, detect_size=args.detect_size,
                            smooth=args.smooth)
    if args.verbose:
        print(f"grefel predict: {recognizer.describe()}", file=sys.stderr)
    videos = {i: video_info(job.path) for i, job in enumerate(jobs) if job.kind == "video"}
    def analysed(count: int, fps: float) -> int:
        return math.ceil(count / fps * args.fps) if args.fps and fps else math.ceil(count / args.every)

    progress = Progress(sum(1 for job in jobs if job.kind != "video")
                        + sum(analysed(count, fps) for count, fps in videos.values()),
                        "grefel predict", unit="images and frames", period=10.0)
    # Annotated videos play the processed frames at the rate they were taken (the source's over the step,
    # or --fps; 25 fps when the source does not say).
    annotator = Annotator(targets, {i: args.fps or (fps or 25.0) / args.every for i, (_, fps) in videos.items()})
    tally = Tally()
    by_video: dict[str, list[ImageResult]] = {}
    writer = None
    with warnings.catch_warnings():
        # A truncated video warns from the recognizer; say it in one line, like every other report here.
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = lambda message, *_, **__: progress.write(f"grefel predict: warning: {message}",
                                                                        sys.stderr)
        try:
            writer, resumed = open_writer(output, recognizer.classes, args.resume,
                                          lambda line: progress.write(line, sys.stdout))
            pending: deque[tuple[int, np.ndarray | None]] = deque()
            entries = _entries(jobs, resumed.done, args.every, args.fps, targets, pending, tally, progress)
            for result in recognizer.predict_entries(entries, first_track=resumed.first_tracks()):
                i, image = pending.popleft()
                writer.write(result)
                tally.add(result)
                progress.update()
                annotator.add(i, image, result)
                if result.frame is not None and (args.summary or args.timeline):
                    by_video.setdefault(result.source, []).append(result)
        except BaseException:
            if writer is not None:
                writer.close(complete=False)
            annotator.close(complete=False)
            raise
        finally:
            progress.close()
        writer.close()
        annotator.close()
    write_video_reports(by_video, recognizer.classes, args.summary, args.timeline)
    print(tally.line(time.perf_counter() - start, args.output))
    if tally.images + tally.frames + tally.resumed == 0:
        raise DataError(f"nothing was predicted: all {tally.skipped} input(s) were skipped")
    return 0


def write_video_reports(by_video: dict[str, list[ImageResult]], classes: list[str], summary: str | None,
                        timeline: str | None) -> None:
    """--summary (one JSON for every video) and --timeline (a PNG per video) from the videos' results."""
    from grefel.fileio import atomic_write_json
    from grefel.inference.video import VideoTracks

    videos = [VideoTracks(source, classes, frames) for source, frames in by_video.items()]
    if summary:
        reports = [video.summary() for video in videos]
        atomic_write_json(summary, reports[0] if len(reports) == 1 else {"videos": reports})
    if timeline:
        for video in videos:
            path = Path(timeline) if len(videos) == 1 else \
                Path(timeline).with_name(f"{Path(timeline).stem}_{Path(video.source).stem}.png")
            if video.tracks():
                video.timeline(path)
            else:
                print(f"grefel predict: no face in {video.source}, so no timeline for it", file=sys.stderr)


# Photos are read and decoded this many ahead on a thread (the decoders release the GIL), so the next one is
# ready while this one is detected and classified; a few at most, as one photo may decode to 360 MB.
READ_AHEAD = 2


def _entries(jobs: list[Job], done: set[tuple[str, int | None]], every: int, fps: float | None,
             targets: dict[int, Path], pending: deque[tuple[int, np.ndarray | None]], tally: Tally,
             progress: Progress) -> Iterator[tuple[str, np.ndarray, int | None, float | None]]:
    """(source, RGB image, frame, time) of every image and frame still to do, read lazily.

    Each one yielded is also queued on `pending` as (job index, its pixels when they are
    to be drawn), for the consumer to pop as its result arrives.
    """
    from grefel.inference.recognizer import read_image, video_frames

    def skip(message: str) -> None:
        tally.skipped += 1
        progress.write(f"grefel predict: skipped {message}", sys.stderr)
        progress.update()

    to_read = iter([i for i, job in enumerate(jobs) if job.kind == "image" and (job.source, None) not in done])
    reads: dict[int, Future] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="grefel-read") as reader:
        for i, job in enumerate(jobs):
            if job.kind == "skip":
                skip(f"{job.path}: {job.reason}")
            elif job.kind == "image":
                if (job.source, None) in done:
                    tally.resumed += 1
                    progress.update()
                    continue
                while len(reads) < READ_AHEAD and (k := next(to_read, None)) is not None:
                    reads[k] = reader.submit(read_image, jobs[k].path)
                try:
                    image = reads.pop(i).result()
                except DataError as exc:
                    skip(str(exc))
                    continue
                pending.append((i, image if i in targets else None))
                yield job.source, image, None, None
            else:
                try:
                    for index, moment, frame in video_frames(job.path, every, fps):
                        if (job.source, index) in done:
                            tally.resumed += 1
                            progress.update()
                            continue
                        pending.append((i, frame if i in targets else None))
                        yield job.source, frame, index, moment
                except DataError as exc:      # raised on opening, before any frame
                    skip(str(exc))
