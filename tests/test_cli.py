"""The command line as a whole: version, one `model` command, the same --device everywhere, progress output."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import pytest

from grefel import __version__
from grefel.commands import build_parser, main
from grefel.devices import DEVICE_CHOICES
from grefel.models import list_models
from grefel.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every leaf sub-command parser, by its full name ("model list", "train", ...)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                leaves = _subcommands(sub)
                found.update({f"{name} {k}": v for k, v in leaves.items()} if leaves else {name: sub})
    return found


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().startswith(f"grefel {__version__}; inference backend: ")


def test_one_model_command_and_the_same_device_choices_everywhere(capsys):
    commands = _subcommands(build_parser())
    assert {"model presets", "model summary", "model list"} <= set(commands)
    assert not any(name.startswith("models") for name in commands)
    with_device = {name: p for name, p in commands.items()
                   if any("--device" in a.option_strings for a in p._actions)}
    # every command that runs a model chooses its device the same way (export traces on the CPU)
    assert {"train", "evaluate", "calibrate", "predict", "serve"} <= set(with_device)
    for name, p in with_device.items():
        (action,) = [a for a in p._actions if "--device" in a.option_strings]
        assert tuple(action.choices) == DEVICE_CHOICES == ("auto", "cpu", "cuda"), name
        assert action.default == "auto" or (name == "train" and action.default is None), name  # train: the config's
    serve_flags = {s for a in commands["serve"]._actions for s in a.option_strings}
    assert "--threads" in serve_flags and "--workers-threads" not in serve_flags
    assert main(["model", "presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in list_models())


def test_licence_is_an_spdx_expression():
    # a table (`license = {text = ...}`) is what setuptools >= 77 warns about on every install
    # (read by pattern: tomllib needs Python 3.11 and grefel supports 3.10)
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "MIT"$', text, re.M), "license must be an SPDX string"
    files = re.search(r"^license-files = \[(.*)\]$", text, re.M).group(1)
    assert all((ROOT / f.strip(' "')).is_file() for f in files.split(","))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log():
    log = io.StringIO()
    with Progress(10, "scoring", unit="img", stream=log, every=4) as progress:
        for _ in range(10):
            progress.update(1)
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["scoring: 4/10 img", "scoring: 8/10 img", "scoring: 10/10 img"]
    assert "\r" not in log.getvalue()

    terminal = _Terminal()
    with Progress(10, "scoring", unit="img", stream=terminal, every=4) as progress:
        for _ in range(10):
            progress.update(1)
    shown = terminal.getvalue()   # a bar redrawn in place (tqdm), cleared at the end, no log lines
    assert "\rscoring:" in shown and "0/10" in shown and "\n" not in shown
