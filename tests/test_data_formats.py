"""fer2013.csv, CSV and image-folder formats, built from the shared FERPlus PNGs; the CSV converter."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from grefel.data import DataSource, convert_to_csv, load_dataset
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES, FER2013_ORDER, RAFDB_ORDER

FER_TO_CANONICAL = [CANONICAL_CLASSES.index(c) for c in FER2013_ORDER]


@pytest.fixture(scope="module")
def valid_majority(ferplus_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("grefel-formats-cache")
    return load_dataset(DataSource(root=str(ferplus_root), cache_dir=str(cache)), "valid", "majority")


def _pixels(png: Path) -> str:
    return " ".join(map(str, cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).ravel().tolist()))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- fer2013.csv (+ fer2013new.csv)


@pytest.fixture
def fer2013_files(ferplus_root, tmp_path):
    """A small real fer2013.csv / fer2013new.csv pair: 15 Training rows, then PublicTest rows up to
    and past the first not-a-face row, each row's pixels from its shared PNG."""
    with open(ferplus_root / "fer2013new.csv", newline="") as handle:
        new = list(csv.reader(handle))
    header, body = new[0], new[1:]
    public = [i for i, r in enumerate(body) if r[0] == "PublicTest"]
    first_not_face = next(i for i in public if not r_name(body[i]))
    chosen = list(range(15)) + [i for i in public if i <= first_not_face + 5][-30:]
    folder = {"Training": "FER2013Train", "PublicTest": "FER2013Valid"}
    fer_rows, new_rows = [], []
    for i in chosen:
        row = body[i]
        name = r_name(row) or body[0][1]  # a not-a-face row has no PNG; its pixels are never used
        votes = [int(v) for v in row[2:10]]
        top = CANONICAL_CLASSES[int(np.argmax(votes))]
        emotion = FER2013_ORDER.index(top) if top in FER2013_ORDER else FER2013_ORDER.index("neutral")
        png = ferplus_root / (folder[row[0]] if r_name(row) else "FER2013Train") / name
        fer_rows.append([emotion, _pixels(png), row[0]])
        new_rows.append(row)
    fer = _write_csv(tmp_path / "fer2013.csv", ["emotion", "pixels", "Usage"], fer_rows)
    _write_csv(tmp_path / "fer2013new.csv", header, new_rows)
    return fer, fer_rows, new_rows


def r_name(row: list[str]) -> str:
    return row[1].strip()


def test_fer2013_with_ferplus_votes_matches_the_ferplus_folders(ferplus_root, fer2013_files, cache_dir):
    fer, fer_rows, new_rows = fer2013_files  # fer2013new.csv found beside fer2013.csv
    ferplus = load_dataset(DataSource(root=str(ferplus_root)), "valid", "crossentropy")
    dataset = load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "valid", "crossentropy")
    assert dataset.class_names == CANONICAL_CLASSES
    assert dataset.dropped.get("not_a_face") == 1
    public = [i for i, r in enumerate(new_rows) if r[0] == "PublicTest" and r_name(r)]
    assert len(dataset) + sum(dataset.dropped.values()) == len(public) + 1
    by_name = {name.split("/")[1]: k for k, name in enumerate(ferplus.ids)}
    with open(ferplus_root / "FER2013Valid" / "label.csv", newline="") as handle:
        label_csv_votes = {r[0]: r[2:] for r in csv.reader(handle)}
    checked = 0
    for k, sample_id in enumerate(dataset.ids):
        assert sample_id.startswith("fer2013.csv:")
        row = new_rows[int(sample_id.split(":")[1]) - 2]  # header is line 1
        assert np.array_equal(dataset.images[k], cv2.imread(str(ferplus_root / "FER2013Valid" / row[1]), 0))
        if row[2:] == label_csv_votes[row[1]]:  # the shared label.csv is an older vote release for some rows
            assert np.allclose(dataset.targets[k], ferplus.targets[by_name[row[1]]])
            checked += 1
    assert checked > 20
    train = load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "train", "majority")
    assert all(int(i.split(":")[1]) <= 16 for i in train.ids)


def test_fer2013_without_ferplus_uses_the_7_original_classes(fer2013_files, tmp_path, cache_dir):
    fer, fer_rows, _ = fer2013_files
    (tmp_path / "fer2013new.csv").unlink()
    dataset = load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "train")
    assert dataset.class_names == tuple(c for c in CANONICAL_CLASSES if c != "contempt")
    assert dataset.labels.tolist() == [FER_TO_CANONICAL[r[0]] for r in fer_rows if r[2] == "Training"]
    with pytest.raises(DataError, match="needs FERPlus vote counts"):
        load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "train", "probability")


def test_fer2013_bad_input(fer2013_files, tmp_path, cache_dir):
    fer, fer_rows, new_rows = fer2013_files
    new_path = tmp_path / "fer2013new.csv"
    header = new_path.read_text().splitlines()[0].split(",")
    swapped = [list(r) for r in new_rows]
    swapped[3][0] = "PublicTest"
    _write_csv(new_path, header, swapped)
    with pytest.raises(DataError, match=re.escape("fer2013.csv line 5 has Usage 'Training' but")):
        load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "train")
    _write_csv(new_path, header, new_rows[:-1])
    with pytest.raises(DataError, match="no matching row in .*fer2013new.csv"):
        load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer), ferplus_csv=str(new_path)), "valid")
    bad = [list(r) for r in fer_rows]
    bad[1][0] = 7
    _write_csv(fer, ["emotion", "pixels", "Usage"], bad)
    new_path.unlink()
    with pytest.raises(DataError, match=re.escape("fer2013.csv line 3: field emotion is '7', expected an integer 0-6")):
        load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "train")
    _write_csv(fer, ["emotion", "pixel", "Usage"], fer_rows)
    with pytest.raises(DataError, match="missing required column.*pixels"):
        load_dataset(DataSource(format="fer2013", fer2013_csv=str(fer)), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataSource(format="fer2013", fer2013_csv=str(tmp_path / "none.csv")), "train")


# ---------------------------------------------------------------- csv format and the converter


def test_convert_round_trip(valid_majority, tmp_path, cache_dir):
    subset = valid_majority.subset(range(40))
    path = tmp_path / "val.csv"
    convert_to_csv(subset, str(path))
    loaded = load_dataset(DataSource(format="csv", csv=str(path)), "valid")
    assert np.array_equal(loaded.images, subset.images)
    assert np.array_equal(loaded.labels, subset.labels)
    assert loaded.ids[:2] == ["val.csv:2", "val.csv:3"]
    by_root = load_dataset(DataSource(format="csv", root=str(tmp_path)), "valid")
    assert np.array_equal(by_root.images, subset.images)
    with pytest.raises(DataError, match="train split file train.csv.*does not exist|train.csv.*does not exist"):
        load_dataset(DataSource(format="csv", root=str(tmp_path)), "train")


def test_convert_resizes_rgb_to_48_grey(valid_majority, tmp_path, cache_dir):
    big = valid_majority.subset(range(5))
    big.images = np.stack([cv2.cvtColor(cv2.resize(im, (96, 96)), cv2.COLOR_GRAY2RGB) for im in big.images])
    convert_to_csv(big, str(tmp_path / "x.csv"))
    loaded = load_dataset(DataSource(format="csv", csv=str(tmp_path / "x.csv")), "train")
    expected = [cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
                for im in big.images]
    assert np.array_equal(loaded.images, np.stack(expected))
    assert np.abs(loaded.images.astype(int) - valid_majority.images[:5]).mean() < 6  # the same faces


GOOD = " ".join(["7"] * 2304)


@pytest.mark.parametrize("emotion, pixels, reason, message", [
    ("1", " ".join(["7"] * 2303), "bad_pixels", "line 3: field pixels has 2303 values, expected 2304"),
    ("1", GOOD[:-1] + "x", "bad_pixels", "line 3: field pixels value #2304 is 'x', expected space-separated integers"),
    ("1", "1.5 " + GOOD[2:], "bad_pixels", "line 3: field pixels value #1 is '1.5', expected space-separated"),
    ("1", GOOD[:-1] + "256", "bad_pixels", "line 3: field pixels value #2304 is 256, expected integers 0-255"),
    ("1", "-1 " + GOOD[2:], "bad_pixels", "line 3: field pixels value #1 is -1, expected integers 0-255"),
    ("8", GOOD, "bad_emotion", "line 3: field emotion is '8', expected an integer 0-7"),
    ("happy", GOOD, "bad_emotion", "line 3: field emotion is 'happy', expected an integer 0-7"),
])
def test_bad_csv_rows(tmp_path, cache_dir, emotion, pixels, reason, message):
    path = _write_csv(tmp_path / "train.csv", ["emotion", "pixels", "Usage"],
                      [["0", GOOD, "Training"], [emotion, pixels, "Training"], ["2", GOOD, "Training"]])
    with pytest.raises(DataError, match=re.escape(f"{path} {message}")) as refused:
        load_dataset(DataSource(format="csv", csv=str(path)), "train")
    assert str(refused.value).endswith("(pass skip_bad=True in the DataSource to skip bad rows)")  # the API's words
    dataset = load_dataset(DataSource(format="csv", csv=str(path), skip_bad=True), "train")
    assert dataset.labels.tolist() == [0, 2] and dataset.dropped == {reason: 1}
    assert dataset.ids == ["train.csv:2", "train.csv:4"]


def test_csv_missing_columns_and_all_rows_bad(tmp_path, cache_dir):
    path = _write_csv(tmp_path / "a.csv", ["label", "pixels"], [["0", GOOD]])
    with pytest.raises(DataError, match=re.escape(f"{path}: missing required column(s) emotion")):
        load_dataset(DataSource(format="csv", csv=str(path)), "train")
    (tmp_path / "latin1.csv").write_bytes("emotion,pixels\n1,\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.csv: not UTF-8 text"):
        load_dataset(DataSource(format="csv", csv=str(tmp_path / "latin1.csv")), "train")
    path = _write_csv(tmp_path / "b.csv", ["emotion", "pixels"], [["9", GOOD]])
    with pytest.raises(DataError, match="has no samples after filtering"):
        load_dataset(DataSource(format="csv", csv=str(path), skip_bad=True), "train")


# ---------------------------------------------------------------- image folders


def _write_folder(root: Path, dataset, names: dict[int, str], count: int) -> list[tuple[str, int]]:
    """PNGs of the first `count` samples of each class in `names`, under root/<folder name>/."""
    written = []
    for label, folder in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in np.flatnonzero(dataset.labels == label)[:count]:
            cv2.imwrite(str(root / folder / f"{k:05d}.png"), dataset.images[k])
            written.append((f"{folder}/{k:05d}.png", label))
    return written


def test_image_folder_with_synonyms_and_splits(valid_majority, tmp_path, cache_dir):
    folders = {1: "happy", 4: "Angry", 0: "neutral"}
    _write_folder(tmp_path / "faces" / "train", valid_majority, folders, 4)
    written = _write_folder(tmp_path / "faces" / "val", valid_majority, folders, 3)
    source = DataSource(format="folder", root=str(tmp_path / "faces"), image_size=48, color="grey")
    dataset = load_dataset(source, "valid")
    assert dataset.class_names == ("neutral", "happiness", "anger")
    assert sorted(zip(dataset.ids, dataset.labels.tolist())) == sorted((f"val/{p}", lbl) for p, lbl in written)
    for k, sample_id in enumerate(dataset.ids):
        assert np.array_equal(dataset.images[k], valid_majority.images[int(Path(sample_id).stem)])
    assert len(load_dataset(source, "train")) == 12
    with pytest.raises(DataError, match=r"none for split 'test'; expected test/"):
        load_dataset(source, "test")
    default = load_dataset(DataSource(format="folder", root=str(tmp_path / "faces")), "train")
    assert default.images.shape == (12, 100, 100, 3)  # RAF-DB size, RGB by default


def test_image_folder_reads_every_photo_format_predict_reads(valid_majority, tmp_path, cache_dir):
    import pillow_heif
    from PIL import Image

    from grefel.data.headers import EXTENSIONS

    pillow_heif.register_heif_opener()                 # PIL writes HEIC through it
    (tmp_path / "happy").mkdir()
    for k, ext in enumerate(EXTENSIONS):
        Image.fromarray(valid_majority.images[k]).convert("RGB").save(tmp_path / "happy" / f"{k}{ext}")
    dataset = load_dataset(DataSource(format="folder", root=str(tmp_path), image_size=48, color="grey"), "train")
    assert len(dataset) == len(EXTENSIONS) == 10


def test_unknown_class_folder_is_named(valid_majority, tmp_path, cache_dir):
    _write_folder(tmp_path, valid_majority, {1: "happy", 2: "bored"}, 1)
    with pytest.raises(DataError, match=re.escape(f"class folder {tmp_path / 'bored'}: unknown class name 'bored'")):
        load_dataset(DataSource(format="folder", root=str(tmp_path)), "train")


def test_list_file_with_names_and_integer_orders(valid_majority, tmp_path, cache_dir):
    written = _write_folder(tmp_path / "img", valid_majority, {1: "a", 3: "b", 6: "c"}, 2)
    lines = ["path,label"] + [f"{p},{RAFDB_ORDER.index(CANONICAL_CLASSES[lbl])}" for p, lbl in written]
    (tmp_path / "img" / "list.csv").write_text("\n".join(lines) + "\n")
    source = DataSource(format="folder", list_file=str(tmp_path / "img" / "list.csv"), label_order="rafdb",
                        image_size=48, color="grey")
    dataset = load_dataset(source, "train")
    assert dataset.ids == [p for p, _ in written] and dataset.labels.tolist() == [lbl for _, lbl in written]
    assert dataset.class_names == ("happiness", "sadness", "fear")
    names = [f"{p},{'sad' if lbl == 3 else CANONICAL_CLASSES[lbl]}" for p, lbl in written]
    (tmp_path / "names.txt").write_text("\n".join(names + ["a/x.png,bored", "a/missing.png,happy"]) + "\n")
    source = DataSource(format="folder", list_file=str(tmp_path / "names.txt"), root=str(tmp_path / "img"),
                        image_size=48, color="grey")
    with pytest.raises(DataError, match=re.escape("names.txt line 7: field label: unknown class name 'bored'")):
        load_dataset(source, "train")
    (tmp_path / "names.txt").write_text("\n".join(names + ["a/missing.png,happy"]) + "\n")
    with pytest.raises(DataError, match=re.escape("a/missing.png (names.txt line 7): image file not found")):
        load_dataset(source, "train")
    (tmp_path / "names.txt").write_text("\n".join(names + ["a/x.png,bored", "a/missing.png,happy"]) + "\n")
    skipped = load_dataset(DataSource(**{**source.__dict__, "skip_bad": True}), "train")
    assert skipped.labels.tolist() == [lbl for _, lbl in written]
    assert skipped.dropped == {"bad_label": 1, "missing_image": 1}
