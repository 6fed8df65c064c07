"""Face tracks in a video: which face is which person, frame after frame.

`FaceTracker.update` takes one frame's detections and gives each a track id.
Association is by box overlap first: each live track's box is moved by its
velocity to the frame's time and matched to the detection it overlaps most
(IoU). Where that is not enough to tell, the face's identity decides: dlib's
face-recognition ResNet (shipped) embeds the face, and the nearest track by
descriptor distance takes it if it is close enough to be the same person (dlib's
own threshold, 0.6), else a new track starts. Identity is asked only when

- a detection matches no live track (a new face, or one coming back after it
  left or was hidden: lost tracks stay for `max_lost_s` and get their id back),
- a detection overlaps two tracks about equally, or a track two detections
  (faces crossing),
- the frame is a cut (its small grey thumbnail differs from the previous one by
  more than `cut_difference`), where overlap means nothing,

so on a steady shot tracking costs a box comparison per face. `TrackSmoother`
keeps each track's exponential moving average of its probabilities, with a time
constant in seconds (so the same on any frame rate or `--fps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from grefel.inference.faces import Face


@dataclass
class TrackerConfig:
    iou_match: float = 0.3          # a detection may continue a track whose predicted box it overlaps this much
    ambiguity_margin: float = 0.2   # a second candidate within this IoU of the best makes the match ambiguous
    same_person: float = 0.6        # dlib descriptor distance under which two faces are one person (dlib's rule)
    max_lost_s: float = 60.0        # how long a track that left may come back with its id
    max_gap_s: float = 1.0          # a track unseen for longer is matched by identity only, not by overlap
    cut_difference: float = 40.0    # mean absolute difference (0-255) of 32x32 grey thumbnails: a cut


@dataclass
class Track:
    id: int
    box: np.ndarray                  # (4,) x, y, w, h at `time`
    time: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))   # box change per second
    descriptor: np.ndarray | None = None                                 # (128,) dlib, the mean of its looks
    looks: int = 0

    def predicted(self, time: float) -> np.ndarray:
        return self.box + self.velocity * (time - self.time)

    def see(self, box: np.ndarray, time: float, descriptor: np.ndarray | None) -> None:
        dt = time - self.time
        if 0 < dt <= 1.0:
            self.velocity = 0.5 * self.velocity + 0.5 * (box - self.box) / dt   # smoothed: detection boxes jitter
        elif dt > 1.0:
            self.velocity = np.zeros(4)
        self.box, self.time = box.astype(np.float64), time
        if descriptor is not None:
            self.looks += 1
            base = descriptor if self.descriptor is None else self.descriptor
            self.descriptor = base + (descriptor - base) / self.looks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x, y, w, h boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def thumbnail(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


class FaceTracker:
    """Track ids for the faces of one video's frames, in order (see the module docstring).

    `embed(image, faces)` gives the (N, 128) dlib descriptors of those faces of the frame; it is called
    only when overlap cannot decide. `embeddings` counts the faces it embedded. Ids count from `first_id`
    (a resumed run continues after the ids already written)."""

    def __init__(self, embed: Callable[[np.ndarray, Sequence[Face]], np.ndarray],
                 config: TrackerConfig = TrackerConfig(), first_id: int = 1):
        self.embed, self.config = embed, config
        self.tracks: list[Track] = []
        self.embeddings = 0
        self._previous: np.ndarray | None = None
        self._next_id = first_id

    def update(self, image: np.ndarray, faces: Sequence[Face], time: float) -> list[int]:
        """The track id of each face of this frame (taken at `time` seconds), in order."""
        cfg = self.config
        small = thumbnail(image)
        cut = self._previous is not None and float(np.abs(small - self._previous).mean()) > cfg.cut_difference
        self._previous = small
        self.tracks = [t for t in self.tracks if time - t.time <= cfg.max_lost_s]
        boxes = [np.asarray(f.box, np.float64) for f in faces]
        ids: list[int | None] = [None] * len(faces)
        decided: dict[int, Track] = {}
        if not cut:
            live = [t for t in self.tracks if time - t.time <= cfg.max_gap_s]
            overlap = np.array([[iou(t.predicted(time), b) for b in boxes] for t in live]).reshape(len(live), len(boxes))
            for ti, fi in sorted(np.argwhere(overlap >= cfg.iou_match).tolist(), key=lambda p: -overlap[p[0], p[1]]):
                track = live[ti]
                if ids[fi] is not None or track.id in decided:
                    continue
                rivals = [overlap[ti, j] for j in range(len(boxes)) if j != fi and ids[j] is None] + \
                         [overlap[k, fi] for k in range(len(live)) if k != ti and live[k].id not in decided]
                if max(rivals, default=0.0) >= cfg.iou_match and \
                        overlap[ti, fi] - max(rivals) < cfg.ambiguity_margin:
                    continue                                   # crossing faces: identity decides below
                ids[fi] = track.id
                decided[track.id] = track
                track.see(boxes[fi], time, None)
        undecided = [i for i, t in enumerate(ids) if t is None]
        if undecided:
            descriptors = self.embed(image, [faces[i] for i in undecided])
            self.embeddings += len(undecided)
            free = [t for t in self.tracks if t.id not in decided and t.descriptor is not None]
            pairs = sorted(((float(np.linalg.norm(t.descriptor - d)), k, t) for k, d in enumerate(descriptors)
                            for t in free), key=lambda p: p[0])
            taken: set[int] = set()
            for distance, k, track in pairs:
                if distance >= cfg.same_person:
                    break
                if k in taken or track.id in decided:
                    continue
                taken.add(k)
                decided[track.id] = track
                ids[undecided[k]] = track.id
                track.see(boxes[undecided[k]], time, descriptors[k])
            for k, fi in enumerate(undecided):
                if k not in taken:
                    track = Track(self._next_id, boxes[fi], time)
                    track.see(boxes[fi], time, descriptors[k])
                    self._next_id += 1
                    self.tracks.append(track)
                    ids[fi] = track.id
        return [int(i) for i in ids]


class TrackSmoother:
    """Per track, the exponential moving average of its probabilities over time: each new value weighs
    1 - exp(-dt / time_constant), dt the seconds since the track's previous frame."""

    def __init__(self, time_constant: float):
        self.time_constant = time_constant
        self._state: dict[int, tuple[float, np.ndarray]] = {}

    def __call__(self, track: int, time: float, probs: np.ndarray) -> np.ndarray:
        if self.time_constant <= 0:
            return probs
        previous = self._state.get(track)
        if previous is None:
            smoothed = probs.astype(np.float64)
        else:
            weight = 1.0 - math.exp(-max(time - previous[0], 0.0) / self.time_constant)
            smoothed = previous[1] + weight * (probs - previous[1])
        self._state[track] = (time, smoothed)
        return smoothed
