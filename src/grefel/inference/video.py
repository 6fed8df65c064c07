"""A video's results grouped by person: tracks, a summary of who showed which expression when, a timeline.

`Recognizer.track_video` returns a `VideoTracks`; `grefel predict --summary` and
`--timeline` write its `summary()` and `timeline()`. The expression of a track at
a frame is the label of its smoothed probabilities (`FaceResult.smoothed`), so a
one-frame flicker does not make a segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from grefel.plots import plot_timeline

if TYPE_CHECKING:
    import pandas

    from grefel.inference.recognizer import FaceResult, ImageResult


def _label(face: FaceResult) -> str:
    probs = face.smoothed or face.probabilities
    return max(probs, key=probs.get)


@dataclass
class VideoTracks:
    source: str
    classes: list[str]
    frames: list[ImageResult]            # every analysed frame, in order, with its faces

    def tracks(self) -> dict[int, list[tuple[float, FaceResult]]]:
        """Track id -> its (time, face) in every frame it is in, in time order."""
        out: dict[int, list[tuple[float, FaceResult]]] = {}
        for frame in self.frames:
            for face in frame.faces:
                if face.track is not None:
                    out.setdefault(face.track, []).append((frame.time, face))
        return dict(sorted(out.items()))

    def frame_interval(self) -> float:
        """Seconds between analysed frames (their median), what one frame of a track stands for."""
        times = [f.time for f in self.frames if f.time is not None]
        return float(np.median(np.diff(times))) if len(times) > 1 else 0.0

    def summary(self, min_segment: float = 0.5) -> dict[str, Any]:
        """Per track: when it is on screen, the share of its time per expression, and the segments (at
        least `min_segment` seconds) in which one expression dominates."""
        step = self.frame_interval()
        tracks = []
        for track, seen in self.tracks().items():
            labels = [_label(face) for _, face in seen]
            share = {c: round(labels.count(c) / len(labels), 4) for c in self.classes if c in labels}
            segments, start = [], 0
            for i in range(1, len(seen) + 1):
                # A segment ends where the label changes or the track was away for more than two frames.
                if i == len(seen) or labels[i] != labels[start] or seen[i][0] - seen[i - 1][0] > 2.5 * step:
                    begin, end = seen[start][0], seen[i - 1][0] + step
                    if end - begin >= min_segment:
                        segments.append({"label": labels[start], "start_s": round(begin, 3), "end_s": round(end, 3)})
                    start = i
            tracks.append({"track": track, "first_s": round(seen[0][0], 3), "last_s": round(seen[-1][0], 3),
                           "frames": len(seen), "seconds_on_screen": round(len(seen) * step, 3),
                           "share": dict(sorted(share.items(), key=lambda kv: -kv[1])), "segments": segments})
        duration = (self.frames[-1].time + step) if self.frames else 0.0
        return {"source": self.source, "frames_analysed": len(self.frames), "frame_interval_s": round(step, 4),
                "duration_s": round(duration, 3), "tracks": tracks}

    def timeline(self, path: str | os.PathLike) -> None:
        """A PNG: one panel per track, the smoothed probability of each expression over time."""
        series = {track: ([t for t, _ in seen], np.array([[(f.smoothed or f.probabilities)[c] for c in self.classes]
                                                          for _, f in seen]))
                  for track, seen in self.tracks().items()}
        duration = (self.frames[-1].time + self.frame_interval()) if self.frames else 0.0
        plot_timeline(series, self.classes, path, title=os.path.basename(self.source), duration=duration)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per face per frame (pandas, the `pandas` extra): time, track, box, label, the
        probabilities (p_*) and their smoothed values (s_*)."""
        from grefel.inference.recognizer import results_dataframe

        return results_dataframe(self.frames)
