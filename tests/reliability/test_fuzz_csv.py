"""Fuzzed CSV readers: the seed `emotion,pixels` CSV and fer2013.csv (+ FERPlus's fer2013new.csv).

Near-valid files (valid rows, one mutated field, plus layout noise: CRLF, CR,
blank lines, quoting, padding, unicode) are checked against the rows meant;
random bytes only have to fail cleanly or load consistently.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grefel.labels import CANONICAL_CLASSES, FERPLUS_VOTE_COLUMNS
from reliability.conftest import fuzz_settings, generated, pixels_text, random_image
from reliability.rows import (
    LABEL_MUTATIONS,
    PIXEL_MUTATIONS,
    Case,
    Row,
    check,
    layouts,
    load_both,
    majority_votes,
    mutate_label,
    mutate_pixels,
    render,
    write_case,
)

# fer2013 `emotion` 0..6 (Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral) in canonical indices,
# written out here rather than taken from grefel.labels so the oracle does not reuse the code under test.
FER_TO_CANONICAL = [4, 5, 6, 1, 3, 2, 0]
USAGES = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
seeds = st.integers(0, 2**16)
CSV_NOISE = st.text(st.sampled_from("0123456789 ,\"\r\n\t-+.xe\ufeff\x00\u00e9\u2028"), max_size=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-csv")


# ---------------------------------------------------------------- seed CSV: emotion,pixels

SEED_COLUMNS = [["emotion", "pixels"], ["pixels", "emotion"], ["emotion", "pixels", "Usage"],
                [" emotion", "pixels ", "Usage"]]
SEED_MUTATIONS = ["none", *PIXEL_MUTATIONS, *LABEL_MUTATIONS, "missing_field", "extra_field", "open_quote",
                  "unicode_column", "bom", "header_typo", "latin1"]


@st.composite
def seed_csv(draw, kind: str) -> Case:
    n = draw(st.integers(1, 4))
    rows = [Row(draw(st.integers(0, 7)), random_image(draw(seeds))) for _ in range(n)]
    columns = draw(st.sampled_from(SEED_COLUMNS))
    values = [{"emotion": str(r.label), "pixels": pixels_text(r.image), "Usage": "Training"} for r in rows]
    if kind in ("unicode_column", "latin1"):
        columns = draw(st.sampled_from([c for c in SEED_COLUMNS if "Usage" in c]))
    r = draw(st.integers(0, n - 1))
    raw, flags, encoding, note = set(), {}, "utf-8", kind
    if kind in PIXEL_MUTATIONS:
        values[r]["pixels"], rows[r].verdict, note = mutate_pixels(draw, values[r]["pixels"], kind)
    elif kind in LABEL_MUTATIONS:
        values[r]["emotion"], rows[r].verdict, note = mutate_label(draw, rows[r].label, kind)
    elif kind == "open_quote":  # swallows the rows after it; on the last row the field may still be whole
        values[r]["pixels"] = '"' + values[r]["pixels"]
        raw = {r}
        rows[r].verdict = "bad" if r < n - 1 else "either"
        flags["merges"] = True
    elif kind == "unicode_column":
        values[r]["Usage"] = "Entra\u00eenement \u2713 \u2028 \u00e9"
    elif kind == "latin1":
        values[r]["Usage"], encoding = "Entra\u00eenement", "latin-1"
        flags["file_error"] = True
    elif kind == "header_typo":
        flags["file_error"] = True
    elif kind == "bom":  # a UTF-8 BOM (Excel): loading or a clear error are both acceptable
        for row in rows:
            row.verdict = "either"
    fields = [[v[c.strip()] for c in columns] for v in values]
    if kind == "header_typo":
        columns = [c.replace("emotion", "emotions") for c in columns]
    elif kind == "missing_field":
        fields[r] = fields[r][:1]
        rows[r].verdict = "bad"
    elif kind == "extra_field":
        fields[r].append("junk")
        rows[r].verdict = "either"
    text = render(columns, fields, draw(layouts(n)), raw)
    data = ("\ufeff" + text if kind == "bom" else text).encode(encoding)
    return Case({"seed.csv": data}, rows, f"row {r}: {note}", flags)


@pytest.mark.parametrize("kind", SEED_MUTATIONS)
@fuzz_settings(30)
@given(data=st.data())
def test_seed_csv_near_valid(workdir, kind, data):
    case = data.draw(seed_csv(kind), label="case")
    generated("seed csv (near-valid)")
    write_case(workdir, case)
    path = workdir / "seed.csv"
    for skip_bad, dataset, error in load_both("train", format="csv", csv=str(path)):
        check(case.rows, dataset, error, skip_bad=skip_bad, names=(str(path),), **case.flags)


@fuzz_settings(200)
@given(prefix=st.sampled_from([b"", b"emotion,pixels\n", b"pixels,emotion,Usage\r\n"]),
       body=st.one_of(st.binary(max_size=600), CSV_NOISE.map(str.encode)))
def test_seed_csv_random_bytes(workdir, prefix, body):
    generated("seed csv (random bytes)")
    path = workdir / "random.csv"
    path.write_bytes(prefix + body)
    for skip_bad, dataset, error in load_both("train", format="csv", csv=str(path)):
        check([], dataset, error, skip_bad=skip_bad)


# ---------------------------------------------------------------- fer2013.csv + fer2013new.csv

NEW_FILE_MUTATIONS = ["votes", "usage_mismatch", "extra_new_row", "missing_new_row", "truncated_new_row"]
FER2013_MUTATIONS = ["none", *PIXEL_MUTATIONS, *LABEL_MUTATIONS, "usage", "usage_padded", *NEW_FILE_MUTATIONS]


@st.composite
def fer2013_files(draw, kind: str) -> Case:
    n = draw(st.integers(1, 5))
    split = draw(st.sampled_from(sorted(set(USAGES.values()))))
    # With fer2013new.csv the `emotion` column is not read, so label mutations go to files without it.
    with_new = kind in NEW_FILE_MUTATIONS or (kind not in LABEL_MUTATIONS and draw(st.booleans()))
    usages = [draw(st.sampled_from(sorted(USAGES))) for _ in range(n)]
    fer_labels = [draw(st.integers(0, 6)) for _ in range(n)]
    faces = [not with_new or draw(st.integers(0, 5)) > 0 for _ in range(n)]
    labels = [draw(st.integers(0, 7)) if with_new else FER_TO_CANONICAL[f] for f in fer_labels]
    rows = [Row(labels[i], random_image(draw(seeds)), expected=USAGES[usages[i]] == split and faces[i])
            for i in range(n)]
    old = [[str(fer_labels[i]), pixels_text(rows[i].image), usages[i]] for i in range(n)]
    new = [[usages[i], f"fer{i:07d}.png" if faces[i] else "", *majority_votes(draw, labels[i])] for i in range(n)]
    r = draw(st.integers(0, n - 1))
    flags, note, used = {}, kind, rows[r].expected  # used: the mutated row is read for this split
    if kind in PIXEL_MUTATIONS:
        old[r][1], verdict, note = mutate_pixels(draw, old[r][1], kind)
        rows[r].verdict = verdict if used else "good"
    elif kind in LABEL_MUTATIONS:
        old[r][0], verdict, note = mutate_label(draw, fer_labels[r], kind)
        rows[r].verdict = verdict if used else "good"
    elif kind == "usage":
        old[r][2] = draw(st.sampled_from(["Train", "", "training", "Public Test", "PrivateTest2"]))
        rows[r].verdict, rows[r].expected = "bad", False
        flags["file_error"] = with_new  # the two files then disagree on the row's Usage
    elif kind == "usage_padded":
        old[r][2] = f" {usages[r]}\t"
        if with_new:  # padded in both files: still the same row
            new[r][0] = old[r][2]
    elif kind == "votes":
        column = draw(st.integers(0, 9))
        new[r][2 + column] = draw(st.sampled_from(["-1", "x", "nan", "inf", "", "1e999", "--2"]))
        rows[r].verdict, note = ("bad" if used else "good"), f"vote {column} -> {new[r][2 + column]!r}"
    elif kind == "usage_mismatch":
        new[r][0] = next(u for u in USAGES if u != usages[r])
        flags["file_error"] = True
    elif kind == "extra_new_row":
        new.append(list(new[r]))
        flags["file_error"] = True
    elif kind == "missing_new_row":
        del new[r]
        flags["file_error"] = True
    elif kind == "truncated_new_row":  # Usage only: a cut row, not a "not a face" row
        new[r] = new[r][:1]
        rows[r].verdict = "bad" if USAGES[usages[r]] == split else "good"
        rows[r].expected = False
    # Rows of this split whose fer2013new.csv entry has an empty Image name (and an intact Usage).
    not_faces = sum(1 for i in range(n) if not faces[i] and USAGES[usages[i]] == split
                    and not (i == r and kind in ("usage", "truncated_new_row")))
    files = {"fer2013.csv": render(["emotion", "pixels", "Usage"], old, draw(layouts(n))).encode()}
    if with_new:
        files["fer2013new.csv"] = render(["Usage", "Image name", *FERPLUS_VOTE_COLUMNS], new,
                                         draw(layouts(len(new)))).encode()
    return Case(files, rows, f"{split}, row {r}: {note}", flags, {"split": split, "not_a_face": not_faces})


@pytest.mark.parametrize("kind", FER2013_MUTATIONS)
@fuzz_settings(25)
@given(data=st.data())
def test_fer2013_near_valid(workdir, kind, data):
    case = data.draw(fer2013_files(kind), label="case")
    generated("fer2013 + fer2013new (near-valid)")
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        write_case(Path(folder), case)
        old_path, new_path = Path(folder) / "fer2013.csv", Path(folder) / "fer2013new.csv"
        for skip_bad, dataset, error in load_both(case.extra["split"], format="fer2013", fer2013_csv=str(old_path)):
            check(case.rows, dataset, error, skip_bad=skip_bad, names=(str(old_path), str(new_path)), **case.flags)
            if dataset is not None:
                assert dataset.dropped.get("not_a_face", 0) == case.extra["not_a_face"]
                assert len(dataset.class_names) == (8 if "fer2013new.csv" in case.files else 7)
                assert set(dataset.class_names) <= set(CANONICAL_CLASSES)


@fuzz_settings(150)
@given(old=st.one_of(st.binary(max_size=400), CSV_NOISE.map(lambda t: ("emotion,pixels,Usage\n" + t).encode())),
       new=st.one_of(st.none(), st.binary(max_size=300),
                     CSV_NOISE.map(lambda t: ("Usage,Image name," + ",".join(FERPLUS_VOTE_COLUMNS) + "\n" + t).encode())),
       split=st.sampled_from(["train", "valid", "test"]))
def test_fer2013_random_bytes(workdir, old, new, split):
    generated("fer2013 + fer2013new (random bytes)")
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        (Path(folder) / "fer2013.csv").write_bytes(old)
        if new is not None:
            (Path(folder) / "fer2013new.csv").write_bytes(new)
        for skip_bad, dataset, error in load_both(split, format="fer2013", fer2013_csv=f"{folder}/fer2013.csv"):
            check([], dataset, error, skip_bad=skip_bad)


@pytest.mark.parametrize("fmt", ["csv", "fer2013", "ferplus", "folder"])
def test_unterminated_quote_in_a_large_file_is_a_data_error(tmp_path, fmt):
    """An opening quote that never closes makes the rest of the file one field; past the csv module's
    128 KiB field limit that must still be a one-line DataError, not a csv.Error traceback."""
    body = "\n".join(f"0,{pixels_text(random_image(i))},Training" for i in range(40))  # ~370 kB
    files = {
        "csv": ("seed.csv", f'emotion,pixels\n0,"{body}\n', dict(format="csv", csv=str(tmp_path / "seed.csv"))),
        "fer2013": ("fer2013.csv", f'emotion,pixels,Usage\n0,"{body}\n',
                    dict(format="fer2013", fer2013_csv=str(tmp_path / "fer2013.csv"))),
        "ferplus": ("FER2013Train/label.csv", f'"fer0000000.png,{body}\n', dict(format="ferplus", root=str(tmp_path))),
        "folder": ("list.txt", f'"img0.png,{body}\n', dict(format="folder", list_file=str(tmp_path / "list.txt"))),
    }
    name, text, source = files[fmt]
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
    for skip_bad, dataset, error in load_both("train", **source):
        assert error is not None and name.split("/")[-1] in str(error), (skip_bad, error)
