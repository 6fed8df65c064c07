"""Cost against work: `grefel predict` on folders of 100, 1,000 and 10,000 inputs, and `grefel evaluate`.

- crops: FERPlus face crops (48 px PNG, from FER2013Train), `--no-detect`;
- photos: 640x480 JPEGs, each the shared astronaut photo at a random place, size and
  mirror (one face each), with detection;
- evaluate: `grefel evaluate` of the model on FERPlus valid (3,191 faces).

Each command runs as its own process, as a user runs it (default settings: the
fastest backend installed, the model file's test-time flip), writing a CSV. Reported
per size: wall seconds, inputs per second, peak RSS (the process's own, from
wait4), and the marginal rate between the two largest sizes (start-up excluded),
which is what a long job sees. Flat memory and linear time mean the peak RSS stays
within 10% and the marginal rate holds from 100 to 10,000. Prints JSON.

    python benchmarks/bench_predict_scale.py
    python benchmarks/bench_predict_scale.py --sizes 100 1000 --photo-sizes 100 --checkpoint runs/x/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FERPLUS = SHARED / "datasets" / "ferplus"


def crops_folder(root: Path, n: int) -> Path:
    folder = root / f"crops_{n}"
    folder.mkdir()
    sources = sorted((FERPLUS / "FER2013Train").glob("*.png"))[:n]
    if len(sources) < n:
        raise SystemExit(f"only {len(sources)} FERPlus train crops, asked for {n}")
    same_disk = sources[0].stat().st_dev == folder.stat().st_dev
    for path in sources:
        if same_disk:
            os.link(path, folder / path.name)
        else:
            shutil.copy(path, folder / path.name)
    return folder


def photos_folder(root: Path, n: int, seed: int = 0) -> Path:
    folder = root / f"photos_{n}"
    folder.mkdir()
    face = cv2.imread(str(SHARED / "photos" / "astronaut.png"))
    rng = np.random.default_rng(seed)
    for i in range(n):
        canvas = np.full((480, 640, 3), rng.integers(0, 256, 3), np.uint8)
        side = int(rng.integers(240, 400))
        photo = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        photo = photo[:, ::-1] if rng.random() < 0.5 else photo
        x, y = int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))
        canvas[y:y + side, x:x + side] = photo
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def timed(command: list[str]) -> dict:
    """Run `command`; its wall seconds and its own peak RSS (MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
        lines = out.read().strip().splitlines()
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "last_line": lines[-1] if lines else ""}


def scale(kind: str, folders: dict[int, Path], extra: list[str], out: Path) -> dict:
    rows = []
    for n, folder in sorted(folders.items()):
        result = timed([sys.executable, "-m", "grefel", "predict", str(folder), "--output", str(out / f"{kind}_{n}.csv"),
                        *extra])
        rows.append({"inputs": n, **result, "inputs_per_s": round(n / result["seconds"], 1)})
    summary = {"rows": rows}
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        summary["marginal_inputs_per_s"] = round((b["inputs"] - a["inputs"]) / (b["seconds"] - a["seconds"]), 1)
        summary["peak_rss_growth"] = round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1, 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="crop folder sizes")
    parser.add_argument("--photo-sizes", type=int, nargs="+", default=[100, 1000], help="photo folder sizes")
    parser.add_argument("--checkpoint", help="a model file (default: the shipped model)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the evaluate run")
    args = parser.parse_args()
    extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    report: dict = {"cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "out"
        out.mkdir()
        report["crops_no_detect"] = scale("crops", {n: crops_folder(root, n) for n in args.sizes},
                                          ["--no-detect", *extra], out)
        report["photos_detect"] = scale("photos", {n: photos_folder(root, n) for n in args.photo_sizes}, extra, out)
    if not args.no_evaluate:
        evaluate = timed([sys.executable, "-m", "grefel", "evaluate", "--data-root", str(FERPLUS), "--split", "valid",
                          *extra])
        report["evaluate_valid"] = {k: v for k, v in evaluate.items() if k != "last_line"}
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
