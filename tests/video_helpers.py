"""Short test videos made from the shipped photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from conftest import PHOTOS_DIR


def clip(path: Path, seconds: float, fps: float, side: int = 640, face: bool = True) -> bytes:
    """An mp4 of the astronaut's face moving right (or of a grey frame), `seconds` long at `fps`; its bytes."""
    photo = cv2.resize(cv2.imread(str(PHOTOS_DIR / "astronaut.png")), (side * 5 // 16, side * 5 // 16))
    height = side * 3 // 4
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (side, height))
    for i in range(round(seconds * fps)):
        frame = np.full((height, side, 3), 60, np.uint8)
        if face:
            x = min(10 + 8 * i, side - photo.shape[1])
            frame[20:20 + photo.shape[0], x:x + photo.shape[1]] = photo
        writer.write(frame)
    writer.release()
    return path.read_bytes()
