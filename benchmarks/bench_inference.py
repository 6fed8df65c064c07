"""Inference speed of the shipped model (or --checkpoint) on this machine's CPU cores; prints JSON.

- photo: one 512x512 photo with one face (shared astronaut.png), decoded once;
  end to end (detect + align + classify, `Recognizer.predict` on the array) and
  its parts, median of --repeats after warm-up, for each backend.
- crops: aligned crops per second through `Recognizer.classify` (its default batch).
- video: frames per second of `Recognizer.predict_video` (--every 1) on a
  synthetic 640x480 mp4v video of the same face (--frames long).
- onnx_speedup: PyTorch time / ONNX Runtime time for each of these.

Each backend runs twice: with the checkpoint's settings (test-time flip as
evaluated) and "fast" (--no-tta-flip, --detect-size 320).

Another job on the same cores inflates every figure: the load average is
recorded before and after.

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --repeats 10 --frames 50
    python benchmarks/bench_inference.py --threads 1     # when another job holds a core
    python benchmarks/bench_inference.py --checkpoint runs/ens/ens.safetensors   # a candidate, before shipping it
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from grefel.inference.faces import align_face
from grefel.inference.recognizer import Recognizer, read_image

PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "photos" / "astronaut.png"
VARIANTS = {
    "torch": dict(backend="torch"),
    "onnx": dict(backend="onnx"),
    "torch_fast": dict(backend="torch", tta_flip=False, detect_size=320),
    "onnx_fast": dict(backend="onnx", tta_flip=False, detect_size=320),
}


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def photo_timings(rec: Recognizer, image: np.ndarray, repeats: int) -> dict:
    """End to end and each stage, so an overrun shows where it goes."""
    (face,) = rec.detector.detect(image)
    crop = align_face(image, face.landmarks, rec.crop_size, rec.color)
    return {
        "end_to_end_ms": median_ms(lambda: rec.predict(image), repeats),
        "detect_ms": median_ms(lambda: rec.detector.detect(image), repeats),
        "align_ms": median_ms(lambda: align_face(image, face.landmarks, rec.crop_size, rec.color), repeats),
        "transform_ms": median_ms(lambda: rec.transform(crop), repeats),
        "classify_batch1_ms": median_ms(lambda: rec.classify([crop]), repeats),   # transform + model
    }


def crops_per_s(rec: Recognizer, crops: list[np.ndarray], rounds: int) -> float:
    rec.classify(crops)                                                        # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        rec.classify(crops)
    return round(len(crops) * rounds / (time.perf_counter() - start), 1)


def write_video(path: Path, image_rgb: np.ndarray, frames: int) -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 64:576] = cv2.resize(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), (512, 480), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
    for _ in range(frames):
        writer.write(frame)
    writer.release()


def video_fps(rec: Recognizer, path: Path) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in rec.predict_video(path, every=1))
    return round(n / (time.perf_counter() - start), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a model file (default: the shipped model)")
    parser.add_argument("--photo", default=str(PHOTO))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--crop-rounds", type=int, default=3, help="times the 64 crops are classified per variant")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    image = read_image(args.photo)
    decode_ms = median_ms(lambda: read_image(args.photo), args.repeats)
    report: dict = {"checkpoint": args.checkpoint or "shipped", "photo": args.photo, "photo_size": list(image.shape[:2]), "decode_ms": decode_ms,
                    "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_average_before": [round(v, 2) for v in load_before]}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "face.mp4"
        write_video(video, image, args.frames)
        for name, options in VARIANTS.items():
            start = time.perf_counter()
            rec = Recognizer(args.checkpoint, **options)   # onnx: exported into the grefel cache on first use
            setup_s = round(time.perf_counter() - start, 2)
            (face,) = rec.detector.detect(image)
            crop = align_face(image, face.landmarks, rec.crop_size, rec.color)
            report[name] = {"options": options, "tta_flip": rec.tta_flip, "setup_s": setup_s,
                            "photo": photo_timings(rec, image, args.repeats),
                            "crops_per_s": crops_per_s(rec, [crop] * 64, args.crop_rounds),
                            "video_frames_per_s": video_fps(rec, video)}
            print(f"{name} done", file=sys.stderr, flush=True)
    for suffix in ("", "_fast"):
        t, o = report["torch" + suffix], report["onnx" + suffix]
        report["onnx_speedup" + suffix] = {
            "photo_end_to_end": round(t["photo"]["end_to_end_ms"] / o["photo"]["end_to_end_ms"], 2),
            "classify_batch1": round(t["photo"]["classify_batch1_ms"] / o["photo"]["classify_batch1_ms"], 2),
            "crops": round(o["crops_per_s"] / t["crops_per_s"], 2),
            "video": round(o["video_frames_per_s"] / t["video_frames_per_s"], 2),
        }
    report["target_photo_ms"] = 40
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
