"""grefel train / train.py end to end on a tiny model: outputs, resume, faults, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FERPLUS_ROOT, REPO_ROOT
from grefel.errors import ConfigError, GrefelError
from grefel.models import build_from_checkpoint
from grefel.training import load_config, train
from grefel.training.state import load_training_state
from training_helpers import tiny_config


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One decoded-data cache for the module: the train split is decoded once, not per test."""
    path = tmp_path_factory.mktemp("grefel-cache")
    old = os.environ.get("GREFEL_CACHE_DIR")
    os.environ["GREFEL_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GREFEL_CACHE_DIR")
    else:
        os.environ["GREFEL_CACHE_DIR"] = old


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grefel", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def model_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / "checkpoints" / "last.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))}


def test_grefel_train_writes_every_output(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--config", str(tiny_config(tmp_path)), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.safetensors",
                 "checkpoints/last.json", "checkpoints/best.safetensors", "checkpoints/best.json",
                 "plots/training_curves.png", "plots/confusion_matrix_best.png", "plots/reliability_best.png"):
        assert (out / name).is_file(), name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:10] == ["epoch", "lr", "train_loss", "train_loss_cls", "train_loss_anchor",
                                       "train_loss_center", "train_acc", "val_loss", "val_acc", "val_mean_class_acc"]
    assert len(rows) == 3  # header + 2 epochs
    state = json.loads((out / "checkpoints" / "last.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 16 and "rng" in state and "scheduler" in state
    model, info = build_from_checkpoint(out / "checkpoints" / "best.safetensors")
    assert info["class_names"][0] == "neutral" and info["training"]["data"]["val_samples"] == 128
    assert info["metrics"]["valid"]["num_samples"] == 128
    # Not a rerun: the existing run is refused without --resume / --overwrite, and left as it was.
    before = (out / "metrics.csv").read_text()
    again = run_cli("train", "--config", str(tiny_config(tmp_path)), "--output-dir", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (out / "metrics.csv").read_text() == before


def test_classic_train_py_on_converted_csv(tmp_path):
    for split, name, limit in (("train", "train.csv", "160"), ("valid", "val.csv", "64")):
        proc = run_cli("data", "convert", "--format", "ferplus", "--data-root", str(FERPLUS_ROOT), "--split", split,
                       "--output", str(tmp_path / name), "--limit", limit)
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "outputs"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--train_csv", str(tmp_path / "train.csv"),
                           "--val_csv", str(tmp_path / "val.csv"), "--output_dir", str(out), "--epochs", "1",
                           "--batch_size", "16", "--num_workers", "0", "--num_anchors", "4",
                           "--model", "grefel_small"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoints" / "best.safetensors").is_file() and (out / "metrics.csv").is_file()
    info = json.loads((out / "checkpoints" / "best.json").read_text())
    assert info["model"]["num_anchors"] == 4 and info["training"]["data"]["train_samples"] == 160
    assert info["training"]["command"].startswith("python train.py --train_csv")


def test_classic_train_py_defaults_and_bad_csv(tmp_path):
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import train as classic
    finally:
        sys.path.remove(str(REPO_ROOT))
    args = classic.build_parser().parse_args(["--train_csv", "a.csv", "--val_csv", "b.csv"])
    assert (args.output_dir, args.batch_size, args.num_workers, args.epochs, args.lr, args.weight_decay,
            args.num_classes, args.num_anchors, args.model) == ("outputs", 32, 4, 50, 1e-4, 1e-2, 8, 10, "grefel_vit")
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,pixels\n3," + " ".join(["1"] * 100) + "\n")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--train_csv", str(bad), "--val_csv",
                           str(bad), "--output_dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.csv" in proc.stderr and "2304" in proc.stderr


def test_classic_train_py_takes_the_shipped_preset_and_skip_bad(tmp_path):
    """cnn_baseline has no anchors: --num_anchors (a default) must not break it; --skip_bad skips a bad row."""
    proc = run_cli("data", "convert", "--format", "ferplus", "--data-root", str(FERPLUS_ROOT), "--split", "valid",
                   "--output", str(tmp_path / "val.csv"), "--limit", "96")
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "val.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(rows + ["3," + " ".join(["1"] * 100)]) + "\n")   # one bad row
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--train_csv", str(tmp_path / "train.csv"), "--val_csv",
           str(tmp_path / "val.csv"), "--output_dir", str(tmp_path / "o"), "--epochs", "1", "--batch_size", "16",
           "--num_workers", "0", "--model", "cnn_baseline"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2 and "(pass --skip_bad to skip bad rows)" in refused.stderr and "num_anchors" not in refused.stderr
    proc = subprocess.run(cmd + ["--skip_bad"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "o" / "checkpoints" / "best.json").read_text())
    assert info["preset"] == "cnn_baseline" and info["training"]["data"]["train_samples"] == 96
    assert "training cnn_baseline (1.2 M parameters, 1.2 M trained) on 96 samples" in proc.stdout
    assert "sized for GPUs" not in proc.stdout


def ctrl_c_after_first_checkpoint(cmd: list[str], run: Path, env: dict | None = None) -> tuple[int, str]:
    """Start a trainer, Ctrl-C it once it has saved an epoch; (exit code, stderr).

    A shell running the suite in the background (`make test &`) hands its children SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: the trainer gets the disposition a terminal gives."""
    trainer = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.json").exists():
        assert time.time() < deadline and trainer.poll() is None, "training never wrote a checkpoint"
        time.sleep(0.1)
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=120)
    return trainer.returncode, err


def test_classic_train_py_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    """Ctrl-C in train.py: one line with the resume command, exit 130, no traceback; its default 4 workers
    are capped at the cores there are, so PyTorch does not warn about them."""
    proc = run_cli("data", "convert", "--format", "ferplus", "--data-root", str(FERPLUS_ROOT), "--split", "valid",
                   "--output", str(tmp_path / "val.csv"), "--limit", "64")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "o"
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--train_csv", str(tmp_path / "val.csv"), "--val_csv",
           str(tmp_path / "val.csv"), "--output_dir", str(run), "--epochs", "500", "--batch_size", "16",
           "--model", "cnn_baseline"]
    code, err = ctrl_c_after_first_checkpoint(cmd, run, {**os.environ, "WANDB_MODE": "disabled"})
    assert code == 130 and "Traceback" not in err and "suggested max number of worker" not in err
    assert err.count("interrupted") == 1
    assert f"continue with:\n  python train.py --train_csv {tmp_path / 'val.csv'}" in err and err.endswith("--resume\n")


def test_grefel_train_skip_bad_flag(tmp_path):
    """The flag the bad-data error advises is accepted by grefel train too."""
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,pixels\n3," + " ".join(["1"] * 100) + "\n")
    config = tiny_config(tmp_path, **{"data.source.format": "csv", "data.train_csv": str(bad),
                                      "data.val_csv": str(bad)})
    proc = run_cli("train", "--config", str(config), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--skip-bad" in proc.stderr
    proc = run_cli("train", "--config", str(config), "--output-dir", str(tmp_path / "o"), "--skip-bad")
    # Past the bad row, the file holds no sample at all: the next error is about that, not the flag.
    assert proc.returncode == 2 and "no samples" in proc.stderr and "--skip-bad" not in proc.stderr


def _live_processes() -> dict[int, tuple[int, str]]:
    """Every process that has not ended (pid -> parent pid, command line), from /proc; none without it."""
    processes = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):  # ended while being read
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            processes[int(entry.name)] = (int(ppid), cmdline)
    return processes


def _descendants(pid: int) -> dict[int, str]:
    """Live processes below `pid` (pid -> command line)."""
    processes = _live_processes()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmdline) in processes.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                frontier.append(child)
    return found


def _kill_during_epoch(cmd: list[str], epoch: int) -> dict[int, str]:
    """Start training and SIGKILL it partway into `epoch`: when its progress line reports the first logged
    steps of that epoch (a fixed sleep raced the epoch's end on a fast machine). Returns the processes that
    were below the trainer when it was killed (pid -> command line; empty where there is no /proc)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = re.compile(rf"^epoch {epoch}/\d+: (\d+)/(\d+) steps")
    seen = []
    for line in proc.stdout:
        seen.append(line)
        match = marker.match(line)
        if match and int(match[1]) < int(match[2]):
            below = _descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return below
    proc.wait(timeout=60)
    pytest.fail(f"training ended (rc {proc.returncode}) before it logged a step of epoch {epoch}:\n" + "".join(seen))


def test_loader_workers_from_a_fork_server_train_reproducibly(tmp_path):
    """Data loader workers start from a fork server (not from the trainer's grown heap); their per-worker
    seeding still makes two runs identical."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = run_cli("train", "--config", str(tiny_config(tmp_path, epochs=1, num_workers=2, deterministic=True)),
                       "--output-dir", str(out))
        assert proc.returncode == 0, proc.stderr
        runs.append(model_tensors(out))
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), f"{key} differs between two runs with workers"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_sigkill_of_a_trainer_leaves_none_of_its_data_loader_processes(tmp_path):
    """A trainer killed outright (OOM killer, `kill -9`) must not leave its loader's fork server and workers
    running: they hold hundreds of MB each, and PyTorch's own check (the worker's parent changed) never fires
    for workers whose parent is the fork server."""
    config = tiny_config(tmp_path, epochs=2, num_workers=2, **{"data.limit_train": 2048})
    below = _kill_during_epoch([sys.executable, "-m", "grefel", "train", "--config", str(config),
                                "--output-dir", str(tmp_path / "run")], epoch=1)
    # the server and the workers forked from it share its command line
    assert sum("forkserver" in cmd for cmd in below.values()) >= 2, \
        f"no fork server with workers below the trainer when it was killed: {below}"
    deadline = time.monotonic() + 30
    while (left := {pid: below[pid] for pid in below.keys() & _live_processes().keys()}) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running 30 s after the trainer was killed: {left}"


@pytest.mark.slow
def test_compiled_training_runs_and_saves_the_plain_module(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--config", str(tiny_config(tmp_path, epochs=1, compile=True)), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    tensors = load_file(str(out / "checkpoints" / "best.safetensors"))
    assert tensors and not any("_orig_mod" in key for key in tensors)
    assert json.loads((out / "checkpoints" / "best.json").read_text())["metrics"]["valid"]["num_samples"] == 128


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    config = tiny_config(tmp_path, epochs=3, deterministic=True, **{"optim.ema": True})
    base = [sys.executable, "-m", "grefel", "train", "--config", str(config)]
    straight = tmp_path / "straight"
    assert subprocess.run(base + ["--output-dir", str(straight)], cwd=REPO_ROOT, capture_output=True,
                          timeout=600).returncode == 0
    killed = tmp_path / "killed"
    _kill_during_epoch(base + ["--output-dir", str(killed)], epoch=2)
    assert json.loads((killed / "checkpoints" / "last.json").read_text())["epoch"] == 1
    resumed = subprocess.run(base + ["--output-dir", str(killed), "--resume"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = model_tensors(straight), model_tensors(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert (straight / "metrics.csv").read_text().splitlines()[1:][-1].split(",")[:9] == \
        (killed / "metrics.csv").read_text().splitlines()[1:][-1].split(",")[:9]


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import grefel.fileio as checkpoint  # where the training state's pair of files is written

    out = tmp_path / "run"
    cfg = load_config(str(tiny_config(tmp_path, epochs=2)), [])
    real = checkpoint.atomic_write_bytes
    staged = {"n": 0}

    def failing(path, data):
        weights = str(path).endswith("staged.safetensors")  # the JSON beside it is written through here too
        staged["n"] += weights
        if weights and staged["n"] == 2:  # epoch 1's training state saves; epoch 2's fails
            with open(path, "wb") as handle:  # a partial write, as on a full disk
                handle.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", failing)
    with pytest.raises(GrefelError, match="No space left on device.*previous checkpoint is intact"):
        train(cfg, out)
    tensors, state, which = load_training_state(out / "checkpoints")
    assert which == "last" and state["epoch"] == 1


def test_truncated_last_checkpoint_falls_back_to_previous(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(str(tiny_config(tmp_path, epochs=2)), [])
    train(cfg, out)
    last = out / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(UserWarning, match="unusable"):
        _, state, which = load_training_state(out / "checkpoints")
    assert which == "prev" and state["epoch"] == 1
    (out / "checkpoints" / "prev.safetensors").write_bytes(b"garbage")
    with pytest.raises(GrefelError, match="no usable checkpoint"):
        load_training_state(out / "checkpoints")


def test_nan_loss_stops_with_the_step_and_saves_nothing_corrupt(tmp_path, monkeypatch):
    import grefel.engine.losses as losses

    real = losses.GReFELLoss.forward
    calls = {"n": 0}

    def poisoned(self, out, target, anchors, trust):
        calls["n"] += 1
        loss, parts = real(self, out, target, anchors, trust)
        return (loss * float("nan") if calls["n"] == 11 else loss), parts

    monkeypatch.setattr(losses.GReFELLoss, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(GrefelError, match="loss is nan at step 10"):
        train(load_config(str(tiny_config(tmp_path, epochs=2)), []), out)
    _, state, _ = load_training_state(out / "checkpoints")
    assert state["epoch"] == 1  # epoch 2 diverged and wrote nothing


def test_wandb_offline_run_without_network(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_API_KEY": "", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "NETRC": str(tmp_path / "no-netrc")}
    proc = subprocess.run([sys.executable, "-m", "grefel", "train", "--config",
                           str(tiny_config(tmp_path, epochs=1, wandb="auto")), "--output-dir", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "wandb offline" in proc.stdout
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.lrr=1"], "unknown key 'lrr'"),
    (["--set", "epochs=many"], "config.epochs: expected an integer"),
    (["--set", "model=grefel_huge"], "unknown model preset 'grefel_huge'"),
    (["--set", "model_args.widths=3"], "unknown key 'widths'"),
    (["--data-root", "/nonexistent/ferplus"], "/nonexistent/ferplus"),
    (["--set", "amp=fp8"], "amp = 'fp8'"),
    (["--set", "wandb=off"], "quote the word"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, args, message):
    proc = run_cli("train", "--config", str(tiny_config(tmp_path)), "--output-dir", str(tmp_path / "o"), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_the_run_folder_exists_before_the_data_loads(tmp_path):
    from grefel.training.run import prepare_output_dir

    prepare_output_dir(tmp_path / "new" / "run", load_config(str(tiny_config(tmp_path)), []), False, False)
    assert (tmp_path / "new" / "run").is_dir()


def test_a_yaml_typo_names_the_file_and_the_key_meant(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: cnn_baseline\nepcohs: 3\noptim:\n  weight_decy: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{preset}: config: unknown key 'epcohs' (did you mean "
                                                    f"'epochs'?); valid keys: ")):
        load_config(str(preset), [])
    preset.write_text("model: cnn_baseline\noptim:\n  weight_decy: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{preset} with --set overrides: config.optim: unknown key "
                                                    f"'weight_decy' (did you mean 'weight_decay'?)")):
        load_config(str(preset), ["epochs=3"])


@pytest.mark.parametrize("preset", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_preset_loads(preset):
    cfg = load_config(str(preset), [])        # validate() also builds the model's config
    assert cfg.epochs > 0 and cfg.data.source.format == "ferplus"


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # PyYAML reads 3e-4 as a string (YAML 1.1); the help text's own example must work, in --set and in files.
    preset = tmp_path / "p.yaml"
    preset.write_text("optim:\n  weight_decay: 5e-2\n", encoding="utf-8")
    cfg = load_config(str(preset), ["optim.lr=3e-4", "optim.min_lr_ratio=-1E-2"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.min_lr_ratio) == (3e-4, 5e-2, -1e-2)
    with pytest.raises(ConfigError, match="optim.lr: expected a finite number, got '3e-4x'"):
        load_config(None, ["optim.lr=3e-4x"])


def test_checkpoint_from_another_preset_or_class_count_is_refused(tmp_path):
    out = tmp_path / "run"
    train(load_config(str(tiny_config(tmp_path, epochs=1)), []), out)
    best = str(out / "checkpoints" / "best.safetensors")
    with pytest.raises(ConfigError, match="cannot start a grefel_small run with 7 classes"):
        train(load_config(str(tiny_config(tmp_path, init_from=best, **{"model_args.num_classes": 7,
                                                                          "data.label_mode": "majority"})), []),
              tmp_path / "other")
    with pytest.raises(ConfigError, match="different config"):
        train(load_config(str(tiny_config(tmp_path, epochs=1, seed=5)), []), out, resume=True)


def test_torchrun_two_processes_match_one_process(tmp_path):
    config = tiny_config(tmp_path, epochs=1, deterministic=True, **{"data.limit_val": 96})
    one = tmp_path / "one"
    single = run_cli("train", "--config", str(config), "--output-dir", str(one))
    assert single.returncode == 0, single.stderr
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "grefel", "train", "--config", str(config), "--output-dir", str(two)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r1 = (one / "metrics.csv").read_text().splitlines()[1].split(",")
    r2 = (two / "metrics.csv").read_text().splitlines()[1].split(",")
    header = (one / "metrics.csv").read_text().splitlines()[0].split(",")
    m1, m2 = dict(zip(header, r1)), dict(zip(header, r2))
    # Same samples per global batch; only BatchNorm statistics and the in-batch attention see half batches.
    assert abs(float(m1["train_loss"]) - float(m2["train_loss"])) < 0.15 * float(m1["train_loss"])
    assert abs(float(m1["val_acc"]) - float(m2["val_acc"])) <= 0.1
    best = json.loads((two / "checkpoints" / "best.json").read_text())
    assert best["metrics"]["valid"]["num_samples"] == 96  # every validation sample counted once across ranks


def test_image_init_from_starts_grefel_vgg_from_a_cnn_baseline(tmp_path):
    """The trained plain CNN's VGG stack becomes grefel_vgg's image branch, tensor for tensor."""
    from grefel.config import to_dict
    from grefel.labels import CANONICAL_CLASSES
    from grefel.models import create_model
    from grefel.models.model_file import save_model_checkpoint
    from grefel.training import build_model

    widths = [8, 8, 16, 16]
    torch.manual_seed(3)
    cnn = create_model("cnn_baseline", widths=widths)
    stem = tmp_path / "cnn"
    save_model_checkpoint(stem, cnn, {
        "preset": "cnn_baseline", "model": to_dict(cnn.config), "class_names": list(CANONICAL_CLASSES),
        "input": {"size": 48, "channels": 3}, "preprocessing": {"color": "grey", "crop_size": 48},
        "serve": "primary", "temperature": 1.0})
    vgg_args = {"vgg_widths": widths, "cross_heads": [1, 2, 2], "embed_dim": 32, "num_heads": 2, "num_anchors": 3}
    cfg = load_config(str(tiny_config(tmp_path, model="grefel_vgg", model_args=vgg_args,
                                      image_init_from=str(stem.with_suffix(".safetensors")))), [])
    model = build_model(cfg)
    expected = cnn.features.state_dict()
    got = model.image_backbone.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    # Anything but a cnn_baseline checkpoint, or a preset without the VGG branch, is a config error.
    with pytest.raises(ConfigError, match="has no VGG image branch"):
        build_model(load_config(str(tiny_config(tmp_path, image_init_from=str(stem))), []))


def test_collapse_warning_names_what_happened():
    from grefel.training.run import collapse_warning

    names = ["neutral", "happiness", "surprise"]
    one_class = {"class_names": names, "accuracy": 0.5, "confusion_matrix": [[5, 0, 0], [3, 0, 0], [2, 0, 0]]}
    assert "collapse to one class (neutral) for all 10 samples" in collapse_warning(one_class)
    majority = {"class_names": names, "accuracy": 0.5, "confusion_matrix": [[4, 1, 0], [2, 1, 0], [1, 1, 0]]}
    assert "not above the majority-class rate 50.0% (always answering neutral)" in collapse_warning(majority)
    fine = {"class_names": names, "accuracy": 0.8, "confusion_matrix": [[5, 0, 0], [1, 2, 0], [0, 1, 1]]}
    assert collapse_warning(fine) is None


def test_model_list_marks_a_model_no_better_than_guessing(tmp_path, capsys):
    from grefel.commands import main

    out = tmp_path / "run"
    train(load_config(str(tiny_config(tmp_path, epochs=1)), []), out)
    best = out / "checkpoints" / "best.json"
    info = json.loads(best.read_text())
    info["warning"] = "validation predictions collapse to one class (neutral) for all 128 samples"
    best.write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["model", "list", str(tmp_path)]) == 0
    out_text = capsys.readouterr().out
    assert "[!] no better than guessing" in out_text and "collapse to one class (neutral)" in out_text


def test_ctrl_c_prints_the_resume_command(tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tmp_path, epochs=20)
    code, err = ctrl_c_after_first_checkpoint([sys.executable, "-m", "grefel", "train", "--config", str(config),
                                               "--output-dir", str(run)], run)
    assert code == 130 and err.count("interrupted") == 1
    assert "continue with:" in err and f"--output-dir {run} --resume" in err


def test_distillation_blends_the_teachers_into_the_targets(tmp_path):
    """distill_from: the teachers' probabilities as trained (temperature, flip, no logit adjustment) on the
    un-augmented training images, averaged and blended with the labels; computed once and reused on resume."""
    from grefel.data import DataSource, eval_transform, load_dataset
    from grefel.models.model_file import update_checkpoint_info
    from grefel.models.serving import ServingModel
    from grefel.training.distill import distilled_targets

    teacher_run = tmp_path / "teacher"
    train(load_config(str(tiny_config(tmp_path, epochs=1, tta_flip=True)), []), teacher_run)
    teacher = str(teacher_run / "checkpoints" / "best.safetensors")
    ds = load_dataset(DataSource(root=str(FERPLUS_ROOT)), "train", "crossentropy").subset(range(40))
    cache = tmp_path / "t.npz"
    blended = distilled_targets((teacher, teacher), 0.25, ds, torch.device("cpu"), cache, log=lambda *_: None)
    serving = ServingModel.from_checkpoint(teacher)
    with torch.no_grad():
        expected = serving(torch.stack([eval_transform(48, 3)(im) for im in ds.images])).numpy()
    np.testing.assert_allclose(blended, 0.75 * ds.targets + 0.25 * expected, atol=1e-5)
    np.testing.assert_allclose(blended.sum(1), 1.0, atol=1e-5)
    stamp = cache.stat().st_mtime_ns
    again = distilled_targets((teacher, teacher), 0.25, ds, torch.device("cpu"), cache, log=pytest.fail)
    assert cache.stat().st_mtime_ns == stamp and np.array_equal(again, blended)   # reused, not recomputed
    with pytest.raises(ConfigError, match="distill_weight"):
        distilled_targets((teacher,), 1.5, ds, torch.device("cpu"), cache)
    # The same teacher served with a logit adjustment teaches the same targets: the student is adjusted later.
    info = json.loads(teacher_run.joinpath("checkpoints", "best.json").read_text())
    info["logit_adjustment"] = {"tau": 1.0, "train_class_counts": [900, 700, 300, 300, 200, 10, 60, 10]}
    adjusted = update_checkpoint_info(teacher, info, tmp_path / "adjusted").with_suffix(".safetensors")
    assert ServingModel.from_checkpoint(adjusted).shift.abs().sum() > 1.0
    from_adjusted = distilled_targets((str(adjusted),) * 2, 0.25, ds,
                                      torch.device("cpu"), tmp_path / "a.npz", log=lambda *_: None)
    np.testing.assert_allclose(from_adjusted, blended, atol=1e-6)
    out = tmp_path / "student"
    train(load_config(str(tiny_config(tmp_path, epochs=1, distill_from=[teacher])), []), out)
    assert (out / "teacher_targets.npz").is_file()
    assert json.loads((out / "checkpoints" / "best.json").read_text())["training"]["config"]["distill_from"] == [teacher]
    # Consistent mode: the teachers are one view each (no flip, no adjustment), averaged, on every batch.
    from grefel.training.distill import Teacher
    views = torch.rand(5, 3, 48, 48)
    plain = ServingModel.from_checkpoint(teacher, tta_flip=False)
    assert Teacher((teacher, str(adjusted)), (3, 48), torch.device("cpu"))(views).allclose(plain(views), atol=1e-6)
    with pytest.raises(ConfigError, match="1-channel 48 px"):
        Teacher((teacher,), (1, 48), torch.device("cpu"))
    out = tmp_path / "consistent"
    train(load_config(str(tiny_config(tmp_path, epochs=1, distill_from=[teacher], distill_mode="consistent")), []),
          out)
    assert not (out / "teacher_targets.npz").exists() and (out / "checkpoints" / "best.safetensors").is_file()
    with pytest.raises(ConfigError, match="distill_mode = 'fixed'"):
        load_config(str(tiny_config(tmp_path, distill_mode="fixed")), [])


def test_a_teacher_is_asked_about_the_very_view_the_student_is_trained_on():
    """train_one_epoch with a teacher: the teacher sees the student's (augmented) batch, and the loss gets
    (1 - w) * target + w * the teacher's probabilities."""
    from grefel.engine.loops import Amp, train_one_epoch
    from grefel.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn_baseline", widths=(4, 4, 8, 8))
    seen = {"student": [], "teacher": [], "target": []}
    model.register_forward_pre_hook(lambda _, args: seen["student"].append(args[0].clone()))
    teacher_probs = torch.softmax(torch.randn(8, 8), -1)

    def teacher(x):
        seen["teacher"].append(x.clone())
        return teacher_probs

    def criterion(out, target, anchors, trust):
        seen["target"].append(target)
        loss = -(target * torch.log_softmax(out.logits, -1)).sum(1).mean()
        return loss, {"cls": loss}

    labels = torch.randint(0, 8, (16,))
    loader = [{"image": torch.rand(8, 3, 48, 48), "target": torch.nn.functional.one_hot(labels[i:i + 8], 8).float(),
               "label": labels[i:i + 8]} for i in (0, 8)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    train_one_epoch(model, criterion, optimizer, scheduler, loader, device=torch.device("cpu"), step=0,
                    total_steps=2, amp=Amp("off", "cpu"), teacher=teacher, teacher_weight=0.3)
    for batch, student, taught, target in zip(loader, seen["student"], seen["teacher"], seen["target"]):
        assert torch.equal(student, taught)
        torch.testing.assert_close(target, 0.7 * batch["target"] + 0.3 * teacher_probs)


def test_mixed_precision_this_cpu_emulates_is_pointed_out(tmp_path, capsys, monkeypatch):
    from grefel.engine import loops

    monkeypatch.setattr(loops, "cpu_has_units", lambda mode: False)
    train(load_config(str(tiny_config(tmp_path, amp="bf16", epochs=1)), []), tmp_path / "run")
    assert "has no bf16 units, so --amp bf16 runs in software" in capsys.readouterr().out
    assert loops.slow_autocast_note("off", "cpu") is None and loops.slow_autocast_note("bf16", "cuda") is None
    monkeypatch.setattr(loops, "cpu_has_units", lambda mode: True)
    assert loops.slow_autocast_note("bf16", "cpu") is None
