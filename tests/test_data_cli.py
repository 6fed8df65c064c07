"""`grefel data convert` and the CLI's handling of bad input (exit 2, one line on stderr)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from grefel.commands import main
from grefel.data import DataSource, load_dataset

GOOD = " ".join(["9"] * 2304)


def test_convert_output_dir_writes_train_and_val(ferplus_root, tmp_path, cache_dir, capsys):
    # a FERPlus root with train and valid splits built from the shared valid PNGs
    for split in ("FER2013Train", "FER2013Valid"):
        (tmp_path / "fp" / split).mkdir(parents=True)
        with open(ferplus_root / "FER2013Valid" / "label.csv", newline="") as handle:
            rows = list(csv.reader(handle))[:30] if split == "FER2013Train" else list(csv.reader(handle))[30:50]
        with open(tmp_path / "fp" / split / "label.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        for row in rows:
            (tmp_path / "fp" / split / row[0]).write_bytes((ferplus_root / "FER2013Valid" / row[0]).read_bytes())
    code = main(["data", "convert", "--data-root", str(tmp_path / "fp"), "--output-dir", str(tmp_path / "out"),
                 "--limit", "12"])
    assert code == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert written == {str(tmp_path / "out" / "train.csv"): 12, str(tmp_path / "out" / "val.csv"): 12}
    for split, name in (("train", "train.csv"), ("valid", "val.csv")):
        original = load_dataset(DataSource(root=str(tmp_path / "fp")), split).subset(range(12))
        converted = load_dataset(DataSource(format="csv", root=str(tmp_path / "out")), split)
        assert np.array_equal(converted.images, original.images)
        assert np.array_equal(converted.labels, original.labels)
    assert main(["data", "convert", "--data-root", str(tmp_path / "fp"), "--split", "valid", "--label-mode",
                 "probability", "--output", str(tmp_path / "one.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == {str(tmp_path / "one.csv"): 20}
    soft = load_dataset(DataSource(root=str(tmp_path / "fp")), "valid", "probability")
    assert np.array_equal(load_dataset(DataSource(format="csv", csv=str(tmp_path / "one.csv")), "valid").labels,
                          soft.labels)


def _bad_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(f"emotion,pixels\n1,{GOOD}\n3,{GOOD[:-2]}\n")
    return path


@pytest.mark.parametrize("argv, message", [
    (["--format", "csv", "--csv", "{bad}"], "bad.csv line 3: field pixels has 2303 values, expected 2304"),
    (["--format", "csv", "--csv", "{tmp}/none.csv"], "none.csv: CSV file (--csv) does not exist"),
    (["--format", "nope"], "unknown data format 'nope'; expected one of ferplus, fer2013, csv, folder"),
    (["--format", "csv", "--csv", "{bad}", "--split", "dev"], "unknown split 'dev'; expected one of train"),
    (["--format", "csv", "--csv", "{bad}", "--label-mode", "soft"], "unknown label mode 'soft'"),
    (["--format", "csv", "--csv", "{bad}", "--skip-bad", "--label-mode", "probability"],
     "label mode 'probability' needs FERPlus vote counts"),
    (["--format", "ferplus"], "no FERPlus data root (--data-root) given"),
    (["--format", "folder", "--data-root", "{tmp}"], "no class folders"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, cache_dir, capsys, argv, message):
    bad = _bad_csv(tmp_path)
    argv = [a.format(bad=bad, tmp=tmp_path) for a in argv]
    assert main(["data", "summary", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("grefel data: error: ") and captured.err.count("\n") == 1
    assert message in captured.err


def test_cli_skip_bad_reports_drops(tmp_path, cache_dir, capsys):
    assert main(["data", "summary", "--format", "csv", "--csv", str(_bad_csv(tmp_path)), "--skip-bad"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_samples"] == 1 and out["class_counts"][1] == 1 and out["dropped"] == {"bad_pixels": 1}


def test_cli_process_has_no_traceback(tmp_path, cache_dir):
    """The installed entry point, end to end: exit code 2 and a single stderr line."""
    result = subprocess.run([sys.executable, "-m", "grefel", "data", "summary", "--format", "csv",
                             "--csv", str(_bad_csv(tmp_path))], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "bad.csv line 3: field pixels" in result.stderr
