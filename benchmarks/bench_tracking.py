"""What following people costs: frames per second analysed with tracking on and off; prints JSON.

Clips of 640x480 at 30 fps, 10 s, built from the shared photos: one face (the
astronaut, moving), and three faces (she and two FERPlus faces, upscaled, moving
in different directions and crossing). Each clip is analysed by
`Recognizer.predict_video` (every frame, default settings), with tracking (what
`grefel predict` does on a video: overlap association, dlib descriptors when that
is ambiguous, smoothing) and without (`Recognizer.predict_entries` given the
frames as separate images). Reported: frames/s each way, the overhead, and how
many faces were embedded (identity asked) out of how many seen.

    python benchmarks/bench_tracking.py
    python benchmarks/bench_tracking.py --seconds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from grefel.inference.recognizer import Recognizer, video_frames

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def faces() -> list[np.ndarray]:
    astronaut = cv2.resize(cv2.imread(str(SHARED / "photos" / "astronaut.png")), (160, 160), interpolation=cv2.INTER_AREA)
    others = [cv2.resize(cv2.imread(str(SHARED / "datasets" / "ferplus" / "FER2013Valid" / name)), (160, 160),
                         interpolation=cv2.INTER_CUBIC) for name in ("fer0028638.png", "fer0028650.png")]
    return [astronaut, *others]


def write_clip(path: Path, people: int, seconds: float) -> Path:
    pictures = faces()[:people]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    frames = round(seconds * 30)
    for i in range(frames):
        canvas = np.full((480, 640, 3), 70, np.uint8)
        phase = i / frames
        spots = [(int(20 + 440 * phase), 30), (int(460 - 440 * phase), 150), (int(240 + 200 * np.sin(6 * phase)), 300)]
        for picture, (x, y) in zip(pictures, spots):
            canvas[y:y + 160, x:x + 160] = picture
        writer.write(canvas)
    writer.release()
    return path


def run(path: Path, tracking: bool) -> tuple[float, int, int]:
    """(frames per second, faces embedded, faces seen)."""
    rec = Recognizer()
    embedded: list[int] = []
    identity = rec.identity_descriptors

    def counted(image, found):
        embedded.append(len(found))
        return identity(image, found)

    rec.identity_descriptors = counted          # what each video's tracker is given
    start = time.perf_counter()
    if tracking:
        results = list(rec.predict_video(path))
    else:   # the same frames as unrelated images: no tracker, no smoothing
        results = list(rec.predict_entries((str(path), frame, None, None) for _, _, frame in video_frames(path)))
    seconds = time.perf_counter() - start
    return len(results) / seconds, sum(embedded), sum(len(r.faces) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the median is reported")
    args = parser.parse_args()
    report: dict = {"cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for people in (1, 3):
            clip = write_clip(Path(tmp) / f"clip{people}.mp4", people, args.seconds)
            on = [run(clip, True) for _ in range(args.repeats)]
            off = [run(clip, False) for _ in range(args.repeats)]
            fps_on, fps_off = statistics.median(r[0] for r in on), statistics.median(r[0] for r in off)
            report[f"{people}_face{'s' if people > 1 else ''}"] = {
                "frames": round(args.seconds * 30), "fps_tracking": round(fps_on, 1), "fps_no_tracking": round(fps_off, 1),
                "tracking_overhead": round(fps_off / fps_on - 1, 3), "faces_embedded": on[0][1], "faces_seen": on[0][2]}
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
