"""Fault injection for training: ENOSPC at every step of a checkpoint save, and a disk that fills mid-run.

The SIGKILL / --resume chain lives in test_kill_resume.py.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
import torch

import grefel.fileio
import grefel.training.state
from grefel.errors import GrefelError
from grefel.models.model_file import read_model_checkpoint
from grefel.training import load_config, train
from grefel.training.state import load_training_state, save_training_state
from reliability.conftest import assert_one_line, training_state_info
from training_helpers import tiny_config


def fd_name(fd: int) -> str:
    return Path(os.readlink(f"/proc/self/fd/{fd}")).name


class FailingFile:
    """A file whose write may fail after writing half its data, as on a disk that fills."""

    def __init__(self, handle, owner: FailingOS) -> None:
        self.handle, self.owner = handle, owner

    def write(self, data):
        try:
            self.owner.op(f"write {fd_name(self.handle.fileno())}")
        except OSError:
            self.handle.write(data[:len(data) // 2])
            raise
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


class FailingOS:
    """`os` as grefel.fileio and grefel.training.state see it, where the writes, fsyncs and renames they do
    can fail with ENOSPC: `fail(n, op)` decides for the n-th such operation, e.g. "replace last.json -> prev.json"."""

    def __init__(self, fail: Callable[[int, str], bool]) -> None:
        self.fail, self.ops = fail, []

    def op(self, what: str) -> None:
        self.ops.append(what)
        if self.fail(len(self.ops), what):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(self, fd, *args, **kwargs):
        return FailingFile(os.fdopen(fd, *args, **kwargs), self)

    def fsync(self, fd) -> None:
        self.op(f"fsync {fd_name(fd)}")
        os.fsync(fd)

    def replace(self, src, dst) -> None:
        self.op(f"replace {Path(src).name} -> {Path(dst).name}")
        os.replace(src, dst)

    def __getattr__(self, name):
        return getattr(os, name)


def failing_os(monkeypatch: pytest.MonkeyPatch, fail: Callable[[int, str], bool]) -> FailingOS:
    faulty = FailingOS(fail)
    for module in (grefel.fileio, grefel.training.state):
        monkeypatch.setattr(module, "os", faulty)
    return faulty


def save_epoch(directory: Path, epoch: int) -> None:
    save_training_state(directory, {"w": torch.full((4,), float(epoch))}, training_state_info(epoch))


def test_checkpoint_save_fails_cleanly_at_every_step(tmp_path):
    """ENOSPC at each write, fsync and rename of a save: the save raises (or, for the folder fsync it
    deliberately ignores, completes), leaves no temp file, and a consistent checkpoint (the old or the
    new epoch, tensors matching) remains to resume from; the next save then works."""
    with pytest.MonkeyPatch.context() as mp:
        counted = failing_os(mp, lambda n, op: False)
        save_epoch(tmp_path / "count", 1)
        save_epoch(tmp_path / "count", 2)
        counted.ops.clear()
        save_epoch(tmp_path / "count", 3)
    steps = list(counted.ops)
    assert any(op.startswith("write") for op in steps) and any(op.startswith("replace") for op in steps)
    broken = []
    for k, step in enumerate(steps, start=1):
        folder = tmp_path / f"fail-{k}"
        save_epoch(folder, 1)
        save_epoch(folder, 2)
        with pytest.MonkeyPatch.context() as mp:
            failing_os(mp, lambda n, op, k=k: n == k)
            try:
                save_epoch(folder, 3)
                saved = True
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                saved = False
        assert not list(folder.glob(".*.tmp")), f"{step}: temp files left behind"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tensors, info, _ = load_training_state(folder)
            assert info["epoch"] in ((3,) if saved else (2, 3)), f"epoch {info['epoch']}"
            assert torch.equal(tensors["w"], torch.full((4,), float(info["epoch"]))), "tensors of another epoch"
        except (GrefelError, AssertionError) as exc:
            broken.append(f"ENOSPC at {step!r}: {exc}")
        save_epoch(folder, 4)
        assert load_training_state(folder)[1]["epoch"] == 4
    assert not broken, f"{len(broken)} of {len(steps)} failure points leave no usable checkpoint:\n" + "\n".join(broken)


@pytest.mark.parametrize("target, occurrence, message", [
    (".staged.json.", 2, r"could not write the epoch 2 checkpoint .*No space left on device.*previous checkpoint is intact"),
    (".best.safetensors.", 1, r"could not write the best checkpoint .*No space left on device"),
], ids=["training-state-epoch-2", "best-model-epoch-1"])
def test_full_disk_during_training_fails_clearly_and_resumes(tmp_path, reliability_cache, monkeypatch,
                                                              target, occurrence, message):
    """The disk fills while a real (tiny) run writes a checkpoint: one clear line, nothing half-written,
    and where an epoch was saved before, --resume continues from it."""
    threads = torch.get_num_threads()
    cfg = load_config(str(tiny_config(tmp_path, epochs=2, threads=1, **{"data.limit_train": 64,
                                                                           "data.limit_val": 32})), [])
    out = tmp_path / "run"
    hits = Counter()

    def fail(n: int, op: str) -> bool:
        if not op.startswith(f"write {target}"):
            return False
        hits[target] += 1
        return hits[target] == occurrence

    faulty = failing_os(monkeypatch, fail)
    try:
        with pytest.raises(GrefelError, match=message) as raised:
            train(cfg, out)
        assert_one_line(raised.value)
        assert hits[target] == occurrence, f"the run never wrote {target} {occurrence} times: {faulty.ops}"
        checkpoints = out / "checkpoints"
        assert not list(checkpoints.glob(".*.tmp")), "temp files left behind"
        if occurrence == 2:  # epoch 1 is intact and the run resumes from it once the disk has room
            assert load_training_state(checkpoints)[1]["epoch"] == 1
            read_model_checkpoint(checkpoints / "best")
            monkeypatch.undo()
            summary = train(cfg, out, resume=True)
            assert summary["epochs"] == 2 and load_training_state(checkpoints)[1]["epoch"] == 2
        else:
            assert not (checkpoints / "best.safetensors").exists() and not (checkpoints / "last.json").exists()
    finally:
        torch.set_num_threads(threads)
