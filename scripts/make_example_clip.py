"""Write examples/walk.mp4: the astronaut photo (public domain) crossing a 640x480 frame, leaving for a
second and coming back elsewhere, with the cat photo (public domain, no human face) in between: the
example `grefel predict` follows over time (README, docs/predict.md). Deterministic.

    python scripts/make_example_clip.py [--output examples/walk.mp4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="examples/walk.mp4")
    args = parser.parse_args()
    astronaut = cv2.resize(cv2.imread(str(SHARED / "photos" / "astronaut.png")), (220, 220), interpolation=cv2.INTER_AREA)
    cat = cv2.resize(cv2.imread(str(SHARED / "photos" / "chelsea.png")), (300, 200), interpolation=cv2.INTER_AREA)
    fps, frames = 25, 125
    writer = cv2.VideoWriter(args.output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for i in range(frames):
        canvas = np.full((480, 640, 3), (96, 80, 64), np.uint8)
        if i < 50:                                   # she walks right
            x = 20 + 6 * i
            canvas[40:260, x:x + 220] = astronaut
        elif i < 75:                                 # she is away; the cat passes
            x = 20 + 12 * (i - 50)
            canvas[260:460, x:x + 300] = cat
        else:                                        # she is back, lower and to the left, walking left
            x = 380 - 5 * (i - 75)
            canvas[230:450, x:x + 220] = astronaut
        writer.write(canvas)
    writer.release()
    print(f"wrote {args.output} ({Path(args.output).stat().st_size / 1e3:.0f} kB, {frames} frames at {fps} fps)")


if __name__ == "__main__":
    main()
