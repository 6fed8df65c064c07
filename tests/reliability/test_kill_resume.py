"""SIGKILL `grefel train` at random points, `--resume` each time, and end with the uninterrupted run's numbers.

One run is killed five times: during training steps (a random delay after a
checkpoint) and during checkpoint writes (as soon as a staged file appears).
Between kills its `last` checkpoint is truncated once and given garbage JSON
once (the resume must warn and continue from `prev`), and both checkpoints are
broken once (the resume must refuse in one line and change nothing; the files
are then restored). The final
weights, optimizer, EMA and RNG state, the best model and metrics.csv must equal
those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT
from grefel.commands import main as grefel_main
from grefel.fileio import read_pair as _read_pair
from reliability.conftest import KILLS
from training_helpers import tiny_config

EPOCHS = 7  # room for five kills even when a fallback to prev repeats an epoch
KILL_POINTS = ["step", "write", "step", "write", "step"]  # during training steps / during a checkpoint write
# Applied in order, one per kill from the second on, when the checkpoints allow it: damaging `last` is
# only a test of the fallback while `prev` is intact (a fallback rotates the damaged `last` into `prev`).
DAMAGES = ["truncate last", "break both", "garbage last.json"]
TIMING_COLUMNS = ("images_per_s", "epoch_seconds")


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "grefel", *args], cwd=REPO_ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "default"})


def last_state(ckpt: Path) -> bytes | None:
    try:
        return (ckpt / "last.json").read_bytes()
    except FileNotFoundError:
        return None


def kill_when(proc: subprocess.Popen, ckpt: Path, how: str, rng: random.Random, deadline: float) -> bool:
    """SIGKILL once this process has saved a checkpoint and then reached the kill point; False if it finished."""
    before = last_state(ckpt)
    while last_state(ckpt) in (before, None):
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.01)
    if how == "step":  # somewhere in the next epoch: steps, evaluation, plots or the save
        time.sleep(rng.uniform(0.0, 1.0))
    else:  # the next save has begun writing its staged pair
        while not any(p.name.startswith((".staged", "staged")) for p in ckpt.iterdir()):
            if proc.poll() is not None:
                return False
            assert time.time() < deadline, "no checkpoint write seen"
            time.sleep(0.0005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return True


def usable(stem: Path) -> bool:
    try:
        _read_pair(stem)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a pair to corrupt on purpose"
        return False


def used_prev(log: Path) -> None:
    text = log.read_text()
    assert "is unusable" in text and "from prev checkpoint" in text, \
        f"the resume after a broken last checkpoint did not warn and use prev:\n{text[-2000:]}"


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def in_process(argv: list[str]) -> int:
    """`grefel ARGV` in this process; undoes the global torch settings a run makes."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return grefel_main(argv)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def metrics(run: Path) -> list[dict[str, str]]:
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [{k: v for k, v in zip(header, line.split(",")) if k not in TIMING_COLUMNS} for line in lines[1:]]


def test_sigkill_and_corruption_then_resume_match_an_uninterrupted_run(tmp_path, reliability_cache, capsys):
    config = str(tiny_config(tmp_path, epochs=EPOCHS, threads=1, **{"data.limit_train": 64, "data.limit_val": 32,
                                                                      "optim.ema": True}))
    train_args = ["train", "--config", config, "--deterministic", "--output-dir"]
    straight, run = tmp_path / "straight", tmp_path / "killed"
    proc = start(train_args + [str(straight)], tmp_path / "straight.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    rng = random.Random(1234)  # a fixed schedule, so CI sees the same kill points every run
    ckpt, deadline = run / "checkpoints", time.time() + 600
    kills, fallback, resume, pending = 0, False, [], list(DAMAGES)
    for attempt, how in enumerate(KILL_POINTS):
        log = tmp_path / f"attempt-{attempt}.log"
        proc = start(train_args + [str(run)] + resume, log)
        if not kill_when(proc, ckpt, how, rng, deadline):
            break  # the run finished before this kill point
        kills += 1
        resume = ["--resume"]
        if fallback:
            used_prev(log)
        fallback = False
        if attempt == 0 or not pending:
            continue
        if pending[0] != "break both" and not (usable(ckpt / "last") and usable(ckpt / "prev")):
            continue
        damage = pending.pop(0)
        if damage == "truncate last":
            data = (ckpt / "last.safetensors").read_bytes()
            (ckpt / "last.safetensors").write_bytes(data[:rng.randrange(8, len(data))])
            fallback = True
        elif damage == "garbage last.json":
            (ckpt / "last.json").write_bytes(b'{"epoch": 9, "weights_sha' + bytes(rng.randrange(256) for _ in range(40)))
            fallback = True
        else:  # both broken: the resume must refuse and leave every file as it was
            kept = snapshot(run)
            (ckpt / "last.safetensors").write_bytes(b"")
            (ckpt / "prev.json").write_bytes(b"\x00garbage")
            broken = snapshot(run)
            code = in_process([*train_args, str(run), "--resume"])  # the CLI, without a second interpreter start
            lines = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "no usable checkpoint" in lines[0], lines
            assert snapshot(run) == broken, "a refused resume changed the run directory"
            for name, data in kept.items():
                (run / name).write_bytes(data)
    KILLS[f"train --resume (tiny, {EPOCHS} epochs)"] = kills
    assert kills >= 4 and not pending, f"{kills} kills landed; damages never applied: {pending}"

    proc = start(train_args + [str(run), "--resume"], tmp_path / "final.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "final.log").read_text()[-3000:]
    if fallback:
        used_prev(tmp_path / "final.log")
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(straight / "checkpoints" / name)), load_file(str(ckpt / name))
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {len(different)} tensors differ after {kills} kills, first {different[:3]}"
    assert metrics(straight) == metrics(run)
    a, b = (json.loads((d / "checkpoints" / "last.json").read_text()) for d in (straight, run))
    assert (a["epoch"], a["step"], a["best"]) == (b["epoch"], b["step"], b["best"]) and a["epoch"] == EPOCHS
