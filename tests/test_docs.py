"""The README and the docs cannot rot: their commands parse, their shipped-model figures are the file's.

Every line of every fenced `bash` block in README.md and the docs' job pages is checked against the
real parser (a sub-command or flag that does not exist fails), the cheap ones are run, and the model
card and the README's shipped row are compared with the shipped model file.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from grefel.commands import build_parser, main
from grefel.models.model_file import shipped_checkpoint

PAGES = ["README.md", *(f"docs/{name}" for name in ("index.md", "predict.md", "serve.md", "train.md",
                                                     "distributed.md", "data.md", "evaluate.md", "models.md",
                                                     "benchmarks.md", "learned.md"))]


def shell_commands(markdown: str) -> list[str]:
    """The command lines of the fenced bash blocks, comments and blank lines left out."""
    blocks = re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def classic_parser():
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import train as classic
    finally:
        sys.path.remove(str(REPO_ROOT))
    return classic.build_parser()


def command_problem(line: str) -> str | None:
    """Why `line` would fail as the docs show it (None when it parses): grefel and train.py through their
    own parsers, torchrun's grefel part likewise, make targets, files the command names."""
    words = shlex.split(line, comments=True)
    if words[:2] == ["pip", "install"] or words[0] == "curl":
        return None if "-r" not in words else (None if (REPO_ROOT / words[words.index("-r") + 1]).is_file()
                                               else f"{line}: no such requirements file")
    if words[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
        return None if all(w in targets for w in words[1:]) else f"{line}: no such make target"
    if words[0] == "torchrun":
        words = ["grefel", *words[words.index("grefel") + 1:]]
    if words[:2] == ["python", "train.py"]:
        parser, args = classic_parser(), words[2:]
    elif words[0] == "grefel":
        parser, args = build_parser(), words[1:]
    elif words[0] == "python" and words[1].startswith(("benchmarks/", "scripts/")):
        return None if (REPO_ROOT / words[1]).is_file() else f"{line}: no such script"
    else:
        return f"{line}: not a command the docs test knows"
    try:
        parser.parse_args(args)
    except SystemExit:
        return f"{line}: refused by the parser"
    return None


@pytest.mark.parametrize("page", PAGES)
def test_every_command_shown_parses(page, capsys):
    lines = shell_commands((REPO_ROOT / page).read_text())
    problems = [p for p in map(command_problem, lines) if p]
    capsys.readouterr()
    assert not problems, "\n".join(problems)


def test_a_misspelt_flag_is_caught(capsys):
    readme = (REPO_ROOT / "README.md").read_text()
    lines = shell_commands(readme.replace("--data-root", "--data-rot", 1))
    assert any(command_problem(line) for line in lines)
    assert command_problem("grefel predcit photo.jpg") and command_problem("make deom")
    assert command_problem("python train.py --train-csv a.csv --val_csv b.csv")
    capsys.readouterr()


def test_the_readme_stays_short_and_names_its_two_setup_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme and "make test" in (REPO_ROOT / ".ci/run").read_text()


def test_make_demo_installs_only_what_the_demo_needs():
    """`make demo` installs grefel with ONNX Runtime, not the dev extra (pytest, the browser driver, wandb...)."""
    dry = subprocess.run(["make", "-n", "demo", "VENV=/nonexistent/venv"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60)
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert dry.returncode == 0 and installs and all("'.[onnx]'" in line for line in installs), dry.stdout


def test_the_cheap_commands_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert main(["predict", "examples/astronaut.png"]) == 0
    assert re.search(r"examples/astronaut\.png: face 1 at x=\d+ y=\d+ w=\d+ h=\d+ happiness 1\.00",
                     capsys.readouterr().out)
    assert main(["model", "list"]) == 0 and "grefel_ferplus" in capsys.readouterr().out
    # The example video: the astronaut leaves and comes back as the same person (five frames a second here).
    assert main(["predict", "examples/walk.mp4", "--fps", "5", "--summary", str(tmp_path / "s.json"),
                 "--timeline", str(tmp_path / "t.png")]) == 0
    (track,) = json.loads((tmp_path / "s.json").read_text())["tracks"]
    assert track["track"] == 1 and len(track["segments"]) == 2 and (tmp_path / "t.png").stat().st_size > 0
    proc = subprocess.run([sys.executable, "-m", "grefel", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "predict" in proc.stdout


def test_the_model_card_is_the_shipped_files_own(capsys):
    """docs/model-card.md is `grefel model card` of the shipped model: regenerate it when the model changes."""
    assert main(["model", "card"]) == 0
    assert capsys.readouterr().out == (REPO_ROOT / "docs" / "model-card.md").read_text(), \
        "docs/model-card.md is stale: grefel model card > docs/model-card.md"


def test_the_readme_results_row_is_the_shipped_files_figures():
    info = json.loads(shipped_checkpoint().with_suffix(".json").read_text())
    cal = info["calibration"]
    row = next(line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith("| **shipped**"))
    figures = [f"{100 * cal[k]:.2f}%" for k in ("accuracy", "mean_class_accuracy", "macro_f1", "ece_after")]
    cells = [cell.strip().strip("*") for cell in row.split("|")[2:6]]
    assert cells == figures
    assert f"tau {cal['logit_adjustment']:g}" in row
    members = info["model"].get("members")
    if members:
        assert ["one", "two", "three", "four", "five", "six"][members - 1] in row.split("|")[1]
