"""`grefel predict` on the shared photos, real FERPlus crops and small synthetic videos."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FERPLUS_ROOT, PHOTOS_DIR
from grefel.commands import main
from grefel.errors import ConfigError
from grefel.inference.recognizer import Recognizer

ASTRONAUT = PHOTOS_DIR / "astronaut.png"
CHELSEA = PHOTOS_DIR / "chelsea.png"


def predict(capsys, *argv) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def summary(out: str) -> dict[str, int]:
    """The counts of the last stdout line, e.g. `3 images, 0 video frames, 2 faces, 1 skipped, ...`."""
    line = out.strip().splitlines()[-1]
    return {name: int(n) for n, name in re.findall(r"(\d+) (image|video frame|face|skipped|already done)", line)}


def valid_rows(n: int) -> list[list[str]]:
    with open(FERPLUS_ROOT / "FER2013Valid" / "label.csv", newline="") as handle:
        return [row for _, row in zip(range(n), csv.reader(handle))]


def copy_crops(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(FERPLUS_ROOT / "FER2013Valid" / row[0], folder / row[0])) for row in valid_rows(n)]


def astronaut_frame() -> np.ndarray:
    """640x480 BGR with the astronaut photo in the middle (one face)."""
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 64:576] = cv2.resize(cv2.imread(str(ASTRONAUT)), (512, 480), interpolation=cv2.INTER_AREA)
    return frame


def write_video(path: Path, frames: int = 20) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 480))
    frame = astronaut_frame()
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


def test_astronaut_one_face_and_cat_none(capsys):
    code, out, _ = predict(capsys, ASTRONAUT, CHELSEA)
    assert code == 0
    lines = out.strip().splitlines()
    assert re.fullmatch(rf"{re.escape(str(ASTRONAUT))}: face 1 at x=\d+ y=\d+ w=\d+ h=\d+ (\w+) (0|1)\.\d\d", lines[0])
    assert lines[1] == f"{CHELSEA}: no face"
    assert summary(out) == {"image": 2, "video frame": 0, "face": 1, "skipped": 0}


def test_python_api_takes_paths_pil_images_and_arrays_and_results_read_well():
    from PIL import Image

    rec = Recognizer()
    by_path = rec.predict(ASTRONAUT)
    with Image.open(ASTRONAUT) as photo:
        by_pil = rec.predict(photo)
        rgba = np.asarray(photo.convert("RGBA"))
    by_array, by_rgba = rec.predict([np.asarray(Image.open(ASTRONAUT).convert("RGB")), rgba])
    for other in (by_pil, by_array, by_rgba):
        assert other.faces[0].probabilities == pytest.approx(by_path.faces[0].probabilities, abs=1e-6)
    assert by_pil.source == str(ASTRONAUT) and by_array.source == "<array 0>"
    face = by_path.faces[0]
    assert repr(face) == f"FaceResult({face.label} {face.confidence:.2f} at x=178 y=63 w=90 h=113)"
    assert str(by_path) == f"ImageResult({ASTRONAUT} 512x512, 1 face: {face.label} {face.confidence:.2f})"
    assert json.loads(json.dumps(by_path.to_dict()))["faces"][0] == json.loads(json.dumps(face.to_dict()))
    with pytest.raises(ConfigError, match="input 0: a int; expected a path, a PIL image or a numpy array"):
        rec.predict([3])


def test_json_output_is_one_record_a_line(tmp_path, capsys):
    output = tmp_path / "r.json"
    assert predict(capsys, ASTRONAUT, CHELSEA, "--output", output)[0] == 0
    text = output.read_text()
    records = json.loads(text)
    assert [len(r["faces"]) for r in records] == [1, 0] and len(text.splitlines()) == 4
    assert records[0]["faces"][0]["landmarks"] and len(records[0]["faces"][0]["box"]) == 4


def test_tta_flip_averages_the_face_and_its_mirror():
    """With the flip, a face's probabilities are those of the face and of its mirror, combined as the
    checkpoint serves them; --no-tta-flip (tta_flip=False) scores the face alone."""
    flip, plain = Recognizer(detect=False, tta_flip=True), Recognizer(detect=False, tta_flip=False)
    assert flip.tta_flip and not plain.tta_flip and flip.info["serve"] == "primary"
    faces = [cv2.imread(str(FERPLUS_ROOT / "FER2013Valid" / f"fer0028{i}.png"), cv2.IMREAD_GRAYSCALE)
             for i in range(638, 644)]
    alone, mirrored = plain.classify(faces), plain.classify([np.ascontiguousarray(f[:, ::-1]) for f in faces])
    # Primary serving averages the logits: softmax of the mean log-probability, at the same temperature.
    expected = torch.softmax(torch.from_numpy(np.log(alone) + np.log(mirrored)) / 2, -1).numpy()
    assert np.abs(flip.classify(faces) - expected).max() < 1e-5
    assert np.abs(alone - mirrored).max() > 1e-3      # the mirror is a different input, or this proves nothing


def test_smaller_detect_size_finds_the_same_face(capsys):
    (full,), (small,) = (Recognizer(detect_size=size).predict(str(ASTRONAUT)).faces for size in (1280, 256))
    # Detected at half the size, the box is mapped back to the photo's pixels: within a tenth of the face.
    assert max(abs(a - b) for a, b in zip(full.box, small.box)) < 0.1 * full.box[2]
    assert small.label == full.label


def test_no_detect_csv_matches_the_evaluate_path(tmp_path, capsys, cache_dir):
    """Same crops, same probabilities: the predict path (decode RGB, to grey, --no-detect) and the
    evaluate path (FERPlus loader, eval_transform, engine.predict, temperature) agree."""
    from torch.utils.data import DataLoader

    from grefel.data import DataSource, collate_samples, eval_transform, load_dataset
    from grefel.engine import Amp
    from grefel.engine import predict as engine_predict
    from grefel.models import build_from_checkpoint
    from grefel.models.model_file import logit_shift, resolve_checkpoint

    rows = valid_rows(128)
    crops = copy_crops(tmp_path / "crops", 128)
    root = tmp_path / "ferplus" / "FER2013Valid"
    root.mkdir(parents=True)
    for path in crops:
        shutil.copy(path, root / path.name)
    with open(root / "label.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)

    output = tmp_path / "x.csv"
    code, out, _ = predict(capsys, tmp_path / "crops", "--no-detect", "--output", output)
    assert code == 0 and summary(out)["image"] == 128
    with open(output, newline="") as handle:
        table = {Path(r["source"]).name: r for r in csv.DictReader(handle)}

    model, info = build_from_checkpoint(resolve_checkpoint(None))
    ds = load_dataset(DataSource(format="ferplus", root=str(tmp_path / "ferplus"), cache_dir=str(cache_dir)),
                      "valid", "majority")
    ds.transform = eval_transform(info["input"]["size"], info["input"]["channels"])
    preds = engine_predict(model, DataLoader(ds, batch_size=64, collate_fn=collate_samples),
                           device=torch.device("cpu"), amp=Amp("off", "cpu"), tta_flip=info["tta_flip"])
    expected = torch.softmax(torch.from_numpy(preds.served_logits(info["serve"], logit_shift(info))).double()
                             / info["temperature"], -1).numpy()
    names = [Path(i).name for i in ds.ids]                 # ids are FER2013Valid/<file>
    assert len(names) > 100
    got = np.array([[float(table[name][f"p_{c}"]) for c in info["class_names"]] for name in names])
    assert np.abs(got - expected).max() < 1e-5
    assert [table[name]["label"] for name in names] == [info["class_names"][k] for k in expected.argmax(1)]


def test_bad_files_in_a_folder_are_reported_and_skipped(tmp_path, capsys):
    folder = tmp_path / "photos"
    copy_crops(folder / "sub", 3)
    (folder / "broken.png").write_bytes(ASTRONAUT.read_bytes()[:5000])
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / ".hidden.png").write_bytes(b"ignored")
    code, out, err = predict(capsys, folder, "--no-detect")
    assert code == 0
    assert summary(out) == {"image": 3, "video frame": 0, "face": 3, "skipped": 2}
    reports = [line for line in err.splitlines() if line.startswith("grefel predict: skipped")]
    assert reports == [f"grefel predict: skipped {folder / 'broken.png'}: not a decodable image",
                       f"grefel predict: skipped {folder / 'notes.txt'}: not an image file"]
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == \
        [str(p) for p in sorted((folder / "sub").iterdir())]


def test_nothing_predicted_is_an_error_and_bombs_are_refused_unread(tmp_path, capsys):
    """A run whose every input was skipped exits non-zero; a PNG declaring 30000x30000 (900 MP) is refused
    from its header, in well under a second, with no libpng noise on stderr."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    broken = tmp_path / "broken.png"
    broken.write_bytes(ASTRONAUT.read_bytes()[:5000])
    start = time.perf_counter()
    code, out, err = predict(capsys, bomb, broken)
    assert time.perf_counter() - start < 30 and code == 2
    assert summary(out) == {"image": 0, "video frame": 0, "face": 0, "skipped": 2}
    assert f"grefel predict: skipped {bomb}: this PNG image is too large to analyse: 30000 x 30000 pixels" in err
    assert "nothing was predicted: all 2 input(s) were skipped" in err.splitlines()[-1]
    assert "libpng" not in err


def test_missing_input_fails_in_one_line_before_any_work(tmp_path, capsys):
    code, out, err = predict(capsys, ASTRONAUT, tmp_path / "nope.jpg", "--output", tmp_path / "o.csv")
    assert code == 2 and out == ""
    assert err.strip() == f"grefel predict: error: {tmp_path / 'nope.jpg'}: no such file or directory"
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--output", "o.txt"], "--output o.txt: expected a .json, .jsonl, .csv file"),
    (["--output", "o.json", "--resume"], "--resume needs a .jsonl or .csv output"),
    (["--every", "0"], "--every 0: expected a positive frame step"),
    (["--backend", "tflite"], "backend 'tflite': expected one of auto, torch, onnx"),
    (["--batch-size", "0"], "batch_size: expected a positive number of faces per batch, got 0"),
    (["--detect-size", "16"], "detect size: expected at least 32 pixels (longest side), got 16"),
])
def test_bad_options_fail_in_one_line(capsys, argv, message):
    code, _, err = predict(capsys, ASTRONAUT, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


def records(path: Path, data: bytes | None = None) -> list[tuple[str, int | None]]:
    """(source, frame) of each image or frame in an output (or in `data`, its bytes), in file order.

    Only whole records count: a JSONL line without its newline, or CSV rows after the last newline, were cut off.
    """
    text = (path.read_bytes() if data is None else data).decode()
    text = text[:text.rfind("\n") + 1]
    if path.suffix == ".jsonl":
        return [(r["source"], r["frame"]) for r in map(json.loads, text.splitlines())]
    keys = [(r["source"], int(r["frame"]) if r["frame"] else None) for r in csv.DictReader(text.splitlines())]
    return [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]   # one per image, not per face


def two_faces(path: Path) -> Path:
    photo = cv2.imread(str(ASTRONAUT))
    cv2.imwrite(str(path), np.hstack([photo, photo]))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_an_interruption(tmp_path, capsys, suffix):
    folder = tmp_path / "photos"
    copy_crops(folder, 30)                                 # detection on: 0 or 1 face each
    shutil.copy(CHELSEA, folder / "zz_cat.png")            # no face: still one record, so resume knows
    two_faces(folder / "zz_two.png")                       # two faces: two CSV rows
    output = tmp_path / f"out{suffix}"
    assert predict(capsys, folder, "--output", output)[0] == 0
    full, data = records(output), output.read_bytes()
    assert len(full) == len(set(full)) == 32

    def resume(cut: bytes) -> dict[str, int]:
        output.write_bytes(cut)                            # the run stopped here
        code, out, _ = predict(capsys, folder, "--output", output, "--resume")
        assert code == 0 and records(output) == full       # every image once, in order
        return summary(out)

    cut = data[:len(data) // 2]                            # half way, inside a record
    kept = records(output, cut)                            # every whole record is kept, the last one too
    counts = resume(cut)
    assert 0 < len(kept) < 32
    assert counts["already done"] == len(kept) and counts["image"] == 32 - len(kept)
    if suffix == ".csv":
        assert output.read_bytes() == data                 # rows and values identical to the full run
        # Cut between the two face rows of one image: that image is done again, both rows once.
        lines = data.decode().splitlines(keepends=True)
        counts = resume("".join(lines[:-1]).encode())
        assert counts["image"] == 1 and counts["already done"] == 31 and output.read_bytes() == data


def test_a_training_state_given_as_the_model_says_which_file_to_use(tmp_path, capsys):
    from grefel.training.state import save_training_state

    save_training_state(tmp_path, {"w": torch.zeros(1)}, {"epoch": 1, "step": 10, "best": None, "config": {}})
    code, _, err = predict(capsys, ASTRONAUT, "--checkpoint", tmp_path / "last.safetensors")
    assert code == 2 and err.strip() == (
        f"grefel predict: error: {tmp_path / 'last.json'}: a training state (what `grefel train --resume` "
        f"continues from), not a model file; use the model its run selected: {tmp_path / 'best.safetensors'}")


def test_a_label_at_the_right_edge_is_drawn_whole():
    from grefel.inference.output import draw_faces
    from grefel.inference.recognizer import FaceResult, ImageResult

    face = FaceResult(box=[600.0, 100.0, 40.0, 40.0], score=1.0, label="neutral", confidence=0.91,
                      probabilities={"neutral": 0.91})
    drawn = draw_faces(np.zeros((480, 640, 3), np.uint8), ImageResult("x", 640, 480, [face]))
    (tw, _), _ = cv2.getTextSize("neutral 0.91", cv2.FONT_HERSHEY_SIMPLEX, 0.64, 2)
    green = np.flatnonzero((drawn[:, :, 1] == 255).any(0))
    assert green.max() <= 639 and green.max() - green.min() >= tw   # the label's full width, inside the image


def test_resume_never_loses_a_finished_row(tmp_path, capsys):
    """A finished last image is not redone, and the rows of sources this run is not given stay."""
    two = two_faces(tmp_path / "two.png")
    for suffix in (".csv", ".jsonl"):
        output = tmp_path / f"r{suffix}"
        assert predict(capsys, ASTRONAUT, two, "--output", output)[0] == 0
        data = output.read_bytes()
        for given in (ASTRONAUT, two):
            code, out, _ = predict(capsys, given, "--output", output, "--resume")
            assert code == 0 and summary(out) == {"image": 0, "video frame": 0, "face": 0, "skipped": 0,
                                                  "already done": 1}
            assert output.read_bytes() == data


def test_csv_rows_are_the_dataframe_rows_rounded(tmp_path):
    pandas = pytest.importorskip("pandas")
    from grefel.inference.output import open_writer
    from grefel.inference.recognizer import FaceResult, ImageResult, results_dataframe

    classes = ["happiness", "sadness"]
    face = FaceResult([1.234567, 2.0, 30.5, 40.25], 0.9876543, "happiness", 0.7123456,
                      {"happiness": 0.7123456, "sadness": 0.2876544}, track=3,
                      smoothed={"happiness": 0.61, "sadness": 0.39})
    results = [ImageResult("clip.mp4", 64, 48, [face, face], frame=5, time=0.2000004),
               ImageResult("clip.mp4", 64, 48, [], frame=6, time=0.24),
               ImageResult("a.png", 64, 48, [FaceResult([0.0, 0.0, 64.0, 48.0], 1.0, "sadness", 0.6,
                                                        {"happiness": 0.4, "sadness": 0.6})])]
    writer, _ = open_writer(tmp_path / "r.csv", classes, resume=False, echo=print)
    for result in results:
        writer.write(result)
    writer.close()
    written = pandas.read_csv(tmp_path / "r.csv")
    frame = results_dataframe(results)
    assert list(written.columns) == list(frame.columns)
    assert written.faces.tolist() == [2, 2, 0, 1] and written.face.isna().tolist() == [False, False, True, False]
    faces = written[written.faces > 0].reset_index(drop=True)
    assert faces.x.tolist() == [1.23, 1.23, 0.0] and faces.time.tolist()[0] == 0.2
    pandas.testing.assert_frame_equal(faces, frame, check_dtype=False, atol=5e-3)


def test_nothing_predicted_writes_no_file_and_no_library_noise(tmp_path, capfd):
    """All inputs skipped: no empty output is left, an earlier file is not replaced, and FFmpeg's own
    complaint about a zero-byte video stays out of the terminal (grefel says it once)."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for suffix in (".csv", ".jsonl", ".json"):
        assert main(["predict", str(empty), "--output", str(tmp_path / f"out{suffix}")]) == 2
        assert not (tmp_path / f"out{suffix}").exists()
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("an earlier file\n")
    assert main(["predict", str(empty), "--output", str(earlier)]) == 2
    assert earlier.read_text() == "an earlier file\n"
    err = capfd.readouterr().err
    assert "moov atom" not in err and err.count(f"skipped {empty}: not a readable video") == 4


def test_video_every_n_and_truncated_video(tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi")
    output = tmp_path / "v.jsonl"
    code, out, _ = predict(capsys, video, "--every", "5", "--output", output)
    assert code == 0 and summary(out)["video frame"] == 4
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["source"], r["frame"]) for r in lines] == [(str(video), f) for f in (0, 5, 10, 15)]
    assert all(len(r["faces"]) == 1 for r in lines)

    # AVI keeps going without its index (at the end): a cut file plays up to the cut, with a warning.
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[:video.stat().st_size // 2])
    code, out, err = predict(capsys, cut)
    frames = [int(m) for m in re.findall(r" frame (\d+) \([\d.]+ s\): face 1 ", out)]
    assert code == 0 and 3 <= len(frames) < 20 and frames == list(range(len(frames)))
    assert f"grefel predict: warning: {cut}: stopped at frame {len(frames)} of 20 (truncated or corrupt video)" in err
    # An mp4 written by OpenCV keeps its index (moov) at the end: cut, it cannot be opened at all.
    mp4 = write_video(tmp_path / "clip.mp4", 5)
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[:mp4.stat().st_size // 2])
    code, out, err = predict(capsys, tmp_path / "cut.mp4", ASTRONAUT)
    assert code == 0 and summary(out) == {"image": 1, "video frame": 0, "face": 1, "skipped": 1}
    assert f"grefel predict: skipped {tmp_path / 'cut.mp4'}: not a readable video" in err


def test_annotate_images_and_video(tmp_path, capsys):
    folder = tmp_path / "in"
    copy_crops(folder / "sub", 2)
    shutil.copy(ASTRONAUT, folder / "astronaut.png")
    video = write_video(tmp_path / "clip.mp4", 6)
    out_dir = tmp_path / "drawn"
    code, out, _ = predict(capsys, folder, video, "--every", "2", "--annotate", out_dir)
    assert code == 0
    drawn = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    crops = sorted(f"sub/{p.name}" for p in (folder / "sub").iterdir())
    assert drawn == sorted(["astronaut.png", "clip.mp4", *crops])
    original, annotated = cv2.imread(str(ASTRONAUT)), cv2.imread(str(out_dir / "astronaut.png"))
    assert annotated.shape == original.shape and (annotated != original).any(axis=2).mean() > 0.001
    capture = cv2.VideoCapture(str(out_dir / "clip.mp4"))
    frames = []
    while (ok_frame := capture.read())[0]:
        frames.append(ok_frame[1])
    assert len(frames) == 3 and frames[0].shape == (480, 640, 3)
    # The drawn box is green where the plain frame has none.
    green = (frames[0][..., 1] > 200) & (frames[0][..., 0] < 80) & (frames[0][..., 2] < 80)
    assert green.sum() > 200

    code, _, err = predict(capsys, folder, "--annotate", folder)
    assert code == 2 and "would overwrite the input" in err


def test_faceless_entries_do_not_wait_for_a_full_batch():
    """Results of a long faceless video must come out as it is read, not after its last frame."""
    recognizer = Recognizer(batch_size=4)
    cat = cv2.cvtColor(cv2.imread(str(CHELSEA)), cv2.COLOR_BGR2RGB)
    consumed = 0

    def entries():
        nonlocal consumed
        for i in range(100):
            consumed += 1
            yield "cat", cat, i, i / 25

    first = next(recognizer.predict_entries(entries()))
    assert first.frame == 0 and first.faces == [] and consumed <= 4
