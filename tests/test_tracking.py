"""Face tracks: ids that stay with a person through motion, crossing, leaving and coming back, and cuts.

The tracker's logic is tested on synthetic frames (faces are flat squares; who a face is travels in its
landmarks array, which the stand-in identity function reads), so every case is exact; then on real
video built from the shipped photos, through detection, dlib's descriptors, `grefel predict` and the
Python API.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from conftest import FERPLUS_ROOT, PHOTOS_DIR
from grefel.commands import main
from grefel.inference.faces import Face
from grefel.inference.recognizer import Recognizer
from grefel.inference.tracking import FaceTracker, TrackSmoother

SIDE = 60


def frame(people: dict[int, tuple[int, int]], background: int = 0) -> tuple[np.ndarray, list[Face]]:
    """A 320x240 frame with a SIDE-px square per person at (x, y), and its faces (landmarks: the person)."""
    image = np.full((240, 320, 3), background, np.uint8)
    faces = []
    for person, (x, y) in people.items():
        image[y:y + SIDE, x:x + SIDE] = 40 * person
        faces.append(Face((float(x), float(y), float(SIDE), float(SIDE)), 0.9, np.full((5, 2), person, np.float32)))
    return image, faces


def identity(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A descriptor per face: its person, one-hot (distance 0 for one person, 1.41 between two)."""
    out = np.zeros((len(faces), 128), np.float32)
    for k, face in enumerate(faces):
        out[k, int(face.landmarks[0, 0])] = 1.0
    return out


def run(scenes: list[dict[int, tuple[int, int]]], fps: float = 10.0, backgrounds: list[int] | None = None):
    tracker = FaceTracker(identity)
    ids = []
    for i, people in enumerate(scenes):
        image, faces = frame(people, (backgrounds or [0] * len(scenes))[i])
        assigned = tracker.update(image, faces, i / fps)
        ids.append(dict(zip(people, assigned)))
    return ids, tracker


def test_a_moving_face_keeps_its_id_and_is_embedded_once():
    ids, tracker = run([{1: (10 + 6 * i, 50 + 2 * i)} for i in range(30)])
    assert {frame_ids[1] for frame_ids in ids} == {1}
    assert tracker.embeddings == 1                         # only when it appeared


def test_faces_that_cross_and_swap_places_keep_their_ids():
    # Person 1 walks right, person 2 left, along the same row: their boxes overlap mid-way.
    ids, tracker = run([{1: (10 + 10 * i, 80), 2: (250 - 10 * i, 80)} for i in range(25)])
    assert all(frame_ids == {1: 1, 2: 2} for frame_ids in ids)
    assert 2 < tracker.embeddings < 25                      # asked only while the overlap is ambiguous


def test_a_face_that_leaves_and_comes_back_gets_its_id_back():
    scenes = [{1: (20 + 5 * i, 60), 2: (200, 100)} for i in range(10)]
    scenes += [{2: (200, 100)} for _ in range(15)]          # person 1 away for 1.5 s
    scenes += [{1: (30, 150), 2: (200, 100)} for _ in range(5)]   # back elsewhere
    ids, _ = run(scenes)
    assert ids[-1] == {1: 1, 2: 2}


def test_a_cut_to_another_person_in_the_same_place_starts_a_new_track():
    scenes = [{1: (100, 80)}] * 10 + [{3: (100, 80)}] * 10 + [{1: (100, 80)}] * 5
    ids, _ = run(scenes, backgrounds=[0] * 10 + [200] * 10 + [0] * 5)
    assert [f[p] for f, p in zip(ids, [1] * 10 + [3] * 10 + [1] * 5)] == [1] * 10 + [2] * 10 + [1] * 5


def test_a_new_person_far_from_everyone_is_a_new_track():
    ids, _ = run([{1: (10, 10)}] * 3 + [{1: (10, 10), 4: (200, 150)}] * 3)
    assert ids[-1] == {1: 1, 4: 2}


def test_smoothing_is_an_average_with_a_time_constant_in_seconds():
    smooth = TrackSmoother(0.5)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert np.allclose(smooth(1, 0.0, a), a)
    weight = 1 - math.exp(-0.1 / 0.5)
    assert np.allclose(smooth(1, 0.1, b), a + weight * (b - a))
    assert np.allclose(smooth(2, 0.1, b), b)               # each track its own
    assert np.allclose(TrackSmoother(0.0)(1, 0.0, b), b)   # 0: off


# ---- real video, through detection and dlib's descriptors -------------------------------------

def paste(canvas: np.ndarray, face: np.ndarray, x: int, y: int) -> None:
    h, w = face.shape[:2]
    canvas[y:y + h, x:x + w] = face


@pytest.fixture(scope="module")
def people() -> tuple[np.ndarray, np.ndarray]:
    """Two people: the astronaut, and a FERPlus face (upscaled, in colour) that dlib tells apart from her."""
    astronaut = cv2.resize(cv2.imread(str(PHOTOS_DIR / "astronaut.png")), (200, 200), interpolation=cv2.INTER_AREA)
    other = cv2.imread(str(FERPLUS_ROOT / "FER2013Valid" / "fer0028638.png"))
    other = cv2.resize(other[:, :, :3], (200, 200), interpolation=cv2.INTER_CUBIC)
    return astronaut, other


def write(path, frames: list[np.ndarray], fps: float = 25.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_real_video_two_people_cross_one_leaves_and_comes_back_then_a_cut(tmp_path, people, capsys):
    astronaut, other = people
    frames = []
    for i in range(30):                                    # cross: she walks right, the other left
        canvas = np.full((480, 640, 3), 60, np.uint8)
        paste(canvas, astronaut, 10 + 14 * i, 40)
        paste(canvas, other, 430 - 14 * i, 240)
        frames.append(canvas)
    for i in range(20):                                    # she leaves; the other stays
        canvas = np.full((480, 640, 3), 60, np.uint8)
        paste(canvas, other, 20, 240)
        frames.append(canvas)
    for i in range(15):                                    # she is back, elsewhere
        canvas = np.full((480, 640, 3), 60, np.uint8)
        paste(canvas, other, 20, 240)
        paste(canvas, astronaut, 400, 20)
        frames.append(canvas)
    for i in range(10):                                    # a cut: a bright scene, the other alone, where she was
        canvas = np.full((480, 640, 3), 220, np.uint8)
        paste(canvas, other, 400, 20)
        frames.append(canvas)
    video = write(tmp_path / "clip.mp4", frames)
    tracks = Recognizer().track_video(video, every=1)
    per_frame = [[(f.track, round(f.box[0])) for f in r.faces] for r in tracks.frames]
    assert all(len(faces) == 2 for faces in per_frame[:30])
    # The astronaut is the face on the left at the start and on the right at the end of the crossing.
    her, them = [t for t, _ in sorted(per_frame[0], key=lambda t: t[1])]
    assert her != them
    assert sorted(per_frame[29], key=lambda t: t[1])[-1][0] == her
    assert all({t for t, _ in faces} == {her, them} for faces in per_frame[:30])
    assert all([t for t, _ in faces] == [them] for faces in per_frame[30:50])
    assert all({t for t, _ in faces} == {her, them} for faces in per_frame[50:65])
    assert all([t for t, _ in faces] == [them] for faces in per_frame[65:])  # not her id, though in her place
    summary = tracks.summary()
    assert [t["track"] for t in summary["tracks"]] == sorted({her, them})
    assert summary["tracks"][her - 1]["frames"] == 45 and abs(summary["frame_interval_s"] - 0.04) < 1e-6
    frame = tracks.to_dataframe()
    assert list(frame.columns[:7]) == ["source", "frame", "time", "faces", "face", "track", "x"]
    assert len(frame) == 30 * 2 + 20 + 15 * 2 + 10 and set(frame.track) == {her, them}


def test_predict_writes_times_tracks_a_summary_a_timeline_and_an_annotated_video(tmp_path, people, capsys):
    astronaut, _ = people
    frames = []
    for i in range(50):
        canvas = np.full((480, 640, 3), 60, np.uint8)
        paste(canvas, astronaut, 10 + 6 * i, 40)
        frames.append(canvas)
    video = write(tmp_path / "walk.mp4", frames, fps=25.0)
    out = tmp_path / "out"
    code = main(["predict", str(video), "--fps", "5", "--output", str(out / "r.jsonl"), "--summary",
                 str(out / "s.json"), "--timeline", str(out / "t.png"), "--annotate", str(out / "drawn")])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "r.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(0, 50, 5))          # 5 of 25 frames a second
    assert [r["time"] for r in records] == pytest.approx([i / 5 for i in range(10)], abs=1e-3)
    assert {f["track"] for r in records for f in r["faces"]} == {1}
    assert set(records[0]["faces"][0]["smoothed"]) == set(records[0]["faces"][0]["probabilities"])
    summary = json.loads((out / "s.json").read_text())
    (track,) = summary["tracks"]
    assert track["seconds_on_screen"] == pytest.approx(2.0) and sum(track["share"].values()) == pytest.approx(1)
    assert cv2.imread(str(out / "t.png")) is not None
    capture = cv2.VideoCapture(str(out / "drawn" / "walk.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()


@pytest.mark.parametrize("argv, message", [
    (["--summary", "s.json"], "--summary and --timeline follow the people in videos: give a video"),
    (["--timeline", "t.jpg"], "--timeline t.jpg: expected a .png file"),
    (["--fps", "0"], "--fps 0.0: expected a positive number of frames a second"),
    (["--smooth", "-1"], "--smooth -1.0: expected a time constant of 0 seconds or more"),
])
def test_video_options_are_checked_in_one_line(argv, message, capsys):
    assert main(["predict", str(PHOTOS_DIR / "astronaut.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_resumed_video_continues_the_track_ids_of_its_output(tmp_path, people, capsys, suffix):
    """Tracking starts again where a run resumes; its new tracks take ids after those already written, so one
    id never names two people in a file."""
    astronaut, other = people
    frames = []
    for i in range(50):              # her alone for 1 s, then the other person alone, elsewhere in the frame
        canvas = np.full((480, 640, 3), 60, np.uint8)
        paste(canvas, astronaut, 20, 40) if i < 25 else paste(canvas, other, 400, 200)
        frames.append(canvas)
    video = write(tmp_path / "clip.mp4", frames)
    output = tmp_path / f"r{suffix}"

    def tracks() -> list[int]:     # the track of each row with a face, in order
        if suffix == ".jsonl":
            return [f["track"] for line in output.read_text().splitlines() for f in json.loads(line)["faces"]]
        return [int(row.split(",")[5]) for row in output.read_text().splitlines()[1:]]

    assert main(["predict", str(video), "--fps", "5", "--output", str(output)]) == 0
    full = tracks()
    assert full == [1] * 5 + [2] * 5
    lines = output.read_text().splitlines(keepends=True)
    header = 1 if suffix == ".csv" else 0
    for done, expected in ((5, full), (7, [1] * 5 + [2] * 2 + [3] * 3)):
        output.write_text("".join(lines[:header + done]))          # stopped after `done` frames
        assert main(["predict", str(video), "--fps", "5", "--output", str(output), "--resume"]) == 0
        assert tracks() == expected, capsys.readouterr().err
