"""Fuzzed readers of files that name images: FERPlus label.csv and `path,label` list files.

Each example writes a small folder of real PNGs and a near-valid label file
(one mutated row or name, plus layout noise); random bytes stand in for the
label file too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grefel.labels import CANONICAL_CLASSES, LABEL_ORDERS, SYNONYMS
from reliability.conftest import fuzz_settings, generated, random_image
from reliability.rows import (
    LABEL_RULE_DROPS,
    Case,
    Row,
    check,
    layouts,
    load_both,
    majority_votes,
    png,
    render,
    write_case,
)

seeds = st.integers(0, 2**16)
NOISE = st.text(st.sampled_from("abcfer0123456789.png ,\"()\r\n\t-/\\\x00\u00e9\u2028\ufeff"), max_size=300)
# Image names that cannot be a file in the folder, but must still give a one-line error naming the row.
ODD_NAMES = ["fer\n0.png", "fer\r0.png", "fer\x000.png", "fer\u20280.png", "fer\x0c0.png", "\"quoted\".png",
             "missing.png", "sub/../../outside.png", ".", "x" * 300 + ".png"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-folders")


def consistent(dataset, skip_bad: bool) -> None:
    """What any load of random bytes must satisfy: only the one real image, and no bad row skipped silently."""
    if dataset is None:
        return
    assert len(dataset) >= 1 and len(dataset.ids) == len(dataset.targets) == len(dataset)
    assert all(image.tobytes() == random_image(0).tobytes() for image in dataset.images)
    assert ((dataset.labels >= 0) & (dataset.labels < 8)).all()
    assert skip_bad or set(dataset.dropped) <= LABEL_RULE_DROPS, f"rows dropped without skip_bad: {dataset.dropped}"


def image_file(draw, kind: str, image) -> tuple[bytes | None, str]:
    """The bytes stored for an image (None: not written) and the row's verdict."""
    if kind == "missing_image":
        return None, "bad"
    if kind == "wrong_size":
        return png(random_image(draw(seeds), size=draw(st.sampled_from([40, 47, 49, 96])))), "bad"
    if kind == "undecodable":
        return draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"not an image", png(image)[:60]])), "bad"
    return png(image), "good"


# ---------------------------------------------------------------- FERPlus label.csv

FERPLUS_MUTATIONS = ["none", "votes", "votes_lenient", "short_row", "long_row", "empty_name", "padded_name",
                     "odd_name", "missing_image", "wrong_size", "undecodable", "not_a_face", "bom"]


@st.composite
def ferplus_files(draw, kind: str) -> Case:
    n = draw(st.integers(1, 4))
    rows = [Row(draw(st.integers(0, 7)), random_image(draw(seeds))) for _ in range(n)]
    names = [f"fer{i:07d}.png" for i in range(n)]
    lines = [[names[i], "(0, 0, 48, 48)", *majority_votes(draw, rows[i].label)] for i in range(n)]
    r = draw(st.integers(0, n - 1))
    note = kind
    stored, rows[r].verdict = image_file(draw, kind, rows[r].image)
    if kind == "votes":
        column = draw(st.integers(2, 11))
        lines[r][column] = draw(st.sampled_from(["-1", "x", "nan", "inf", "", "1e999", "--2", "\u0663\u0663x"]))
        rows[r].verdict, note = "bad", f"vote column {column} -> {lines[r][column]!r}"
    elif kind == "votes_lenient":  # padded or decimal counts mean the same votes
        lines[r][2:] = [draw(st.sampled_from([f" {v} ", f"{v}.0", f"{v}\t"])) for v in lines[r][2:]]
    elif kind in ("short_row", "long_row"):
        lines[r] = lines[r][:-1] if kind == "short_row" else lines[r] + ["0"]
        rows[r].verdict = "bad"
    elif kind == "empty_name":
        lines[r][0], rows[r].verdict = draw(st.sampled_from(["", " ", "\t"])), "bad"
    elif kind == "padded_name":
        lines[r][0] = f" {names[r]}\t"
    elif kind == "odd_name":
        lines[r][0], rows[r].verdict = draw(st.sampled_from(ODD_NAMES)), "bad"
        note = f"name -> {lines[r][0]!r}"
    elif kind == "not_a_face":  # the NF column holds the majority: dropped by the label rule, not an error
        lines[r][2:] = ["0"] * 9 + ["10"]
        rows[r].expected = False
    elif kind == "bom":  # a BOM glued to the first name: a lenient reader may strip it
        lines[0][0] = "\ufeff" + lines[0][0]
        rows[0].verdict = "either"
    files = {"FER2013Train/label.csv": render(None, lines, draw(layouts(n))).encode()}
    for i, name in enumerate(names):
        data = stored if i == r else png(rows[i].image)
        if data is not None:
            files[f"FER2013Train/{name}"] = data
    return Case(files, rows, f"row {r}: {note}")


@pytest.mark.parametrize("kind", FERPLUS_MUTATIONS)
@fuzz_settings(25)
@given(data=st.data())
def test_ferplus_label_csv_near_valid(workdir, kind, data):
    case = data.draw(ferplus_files(kind), label="case")
    generated("ferplus label.csv (near-valid)")
    with tempfile.TemporaryDirectory(dir=workdir) as root:
        write_case(Path(root), case)
        label = Path(root) / "FER2013Train" / "label.csv"
        for skip_bad, dataset, error in load_both("train", format="ferplus", root=root):
            check(case.rows, dataset, error, skip_bad=skip_bad, names=(str(label), "FER2013Train"))
            if dataset is not None:
                assert all(i.startswith("FER2013Train/fer") for i in dataset.ids)
                assert dataset.dropped.get("unknown_or_not_face", 0) == (kind == "not_a_face")


@fuzz_settings(150)
@given(label_csv=st.one_of(st.binary(max_size=500), NOISE.map(str.encode),
                           NOISE.map(lambda t: ("fer0000000.png,\"(0, 0, 48, 48)\",10,0,0,0,0,0,0,0,0,0\n" + t).encode())))
def test_ferplus_label_csv_random_bytes(workdir, label_csv):
    generated("ferplus label.csv (random bytes)")
    with tempfile.TemporaryDirectory(dir=workdir) as root:
        folder = Path(root) / "FER2013Train"
        folder.mkdir()
        (folder / "fer0000000.png").write_bytes(png(random_image(0)))
        (folder / "label.csv").write_bytes(label_csv)
        for skip_bad, dataset, error in load_both("train", format="ferplus", root=root):
            consistent(dataset, skip_bad)


# ---------------------------------------------------------------- list files: path,label

LIST_MUTATIONS = ["none", "header", "late_header", "label_unknown", "label_out_of_range", "label_lenient",
                  "three_fields", "one_field", "empty_path", "odd_name", "missing_image", "undecodable"]


def label_text(draw, label: int, order: str) -> str:
    """How a list file may write canonical class `label`: an integer in `order`, a name or a synonym."""
    name = CANONICAL_CLASSES[label]
    if draw(st.booleans()):
        return str(LABEL_ORDERS[order].index(name)) if name in LABEL_ORDERS[order] else name
    synonym = draw(st.sampled_from(sorted(k for k, v in SYNONYMS.items() if v == name)))
    return draw(st.sampled_from([synonym, synonym.upper(), f" {synonym.title()} ", synonym.replace("_", "-")]))


@st.composite
def list_files(draw, kind: str) -> Case:
    n = draw(st.integers(1, 4))
    order = draw(st.sampled_from(sorted(LABEL_ORDERS)))
    # A class the order cannot express as an integer (contempt outside FERPlus orders) is written by name.
    rows = [Row(draw(st.integers(0, 7)), random_image(draw(seeds))) for _ in range(n)]
    paths = [draw(st.sampled_from([f"img{i}.png", f"a/img{i}.png", f"b c/\u00e9{i}.png"])) for i in range(n)]
    lines = [[paths[i], label_text(draw, rows[i].label, order)] for i in range(n)]
    r = draw(st.integers(0, n - 1))
    note = kind
    stored, rows[r].verdict = image_file(draw, kind, rows[r].image)
    if kind == "header":
        lines.insert(0, [draw(st.sampled_from(["path", "Path", " path "])), "label"])
    elif kind == "late_header":  # a header after a data row is a row naming class "label"
        lines.insert(r + 1, ["path", "label"])
    elif kind == "label_unknown":
        lines[r][1] = draw(st.sampled_from(["happyy", "", "neutral sad", "1.0", "\u00b3", "+-1", "0x1", "label"]))
        rows[r].verdict, note = "bad", f"label -> {lines[r][1]!r}"
    elif kind == "label_out_of_range":
        lines[r][1] = draw(st.sampled_from([str(len(LABEL_ORDERS[order]) + draw(st.integers(0, 3))), "-1"]))
        rows[r].verdict, note = "bad", f"label -> {lines[r][1]!r} ({order})"
    elif kind == "label_lenient":  # int() reads these as the same integer
        if lines[r][1].isdigit():
            lines[r][1] = draw(st.sampled_from([f"+{lines[r][1]}", chr(0x0660 + int(lines[r][1])),
                                                chr(0xFF10 + int(lines[r][1]))]))
            rows[r].verdict, note = "either", f"label -> {lines[r][1]!r} ({order})"
    elif kind == "three_fields":
        lines[r].append(draw(st.sampled_from(["", "x", "0"])))
        rows[r].verdict = "bad"
    elif kind == "one_field":
        lines[r], rows[r].verdict = lines[r][:1], "bad"
    elif kind == "empty_path":
        lines[r][0], rows[r].verdict = draw(st.sampled_from(["", " "])), "bad"
    elif kind == "odd_name":
        lines[r][0], rows[r].verdict = draw(st.sampled_from(ODD_NAMES)), "bad"
        note = f"path -> {lines[r][0]!r}"
    files = {"list.txt": render(None, lines, draw(layouts(len(lines)))).encode()}
    for i, path in enumerate(paths):
        data = stored if i == r else png(rows[i].image)
        if data is not None:
            files[path] = data
    if kind == "late_header":
        rows.append(Row(-1, random_image(0), "bad", expected=False))
    return Case(files, rows, f"row {r}: {note}", extra={"order": order})


@pytest.mark.parametrize("kind", LIST_MUTATIONS)
@fuzz_settings(25)
@given(data=st.data())
def test_list_file_near_valid(workdir, kind, data):
    case = data.draw(list_files(kind), label="case")
    generated("list file (near-valid)")
    with tempfile.TemporaryDirectory(dir=workdir) as base:
        write_case(Path(base), case)
        path = Path(base) / "list.txt"
        for skip_bad, dataset, error in load_both("train", format="folder", list_file=str(path), image_size=48,
                                                  color="grey", label_order=case.extra["order"]):
            check(case.rows, dataset, error, skip_bad=skip_bad, names=(str(path), base))
            if dataset is not None:
                present = {CANONICAL_CLASSES[i] for i in dataset.labels.tolist()}
                assert set(dataset.class_names) == present


@fuzz_settings(150)
@given(content=st.one_of(st.binary(max_size=500), NOISE.map(str.encode),
                         NOISE.map(lambda t: ("path,label\nimg0.png,happy\n" + t).encode())),
       order=st.sampled_from(sorted(LABEL_ORDERS)))
def test_list_file_random_bytes(workdir, content, order):
    generated("list file (random bytes)")
    with tempfile.TemporaryDirectory(dir=workdir) as base:
        (Path(base) / "img0.png").write_bytes(png(random_image(0)))
        (Path(base) / "list.txt").write_bytes(content)
        for skip_bad, dataset, error in load_both("train", format="folder", list_file=f"{base}/list.txt",
                                                  image_size=48, color="grey", label_order=order):
            consistent(dataset, skip_bad)
