"""grefel presets against the POSTER++ reference code, side by side in one run; prints JSON lines and a table.

Phases, each in a fresh process so its peak RSS (`ru_maxrss`) is its own: training at batch 8 and 32
(forward, backward and an optimizer step; SAM around AdamW on both sides by default, the POSTER++ and
`configs/ferplus_paper.yaml` recipe, through grefel's SAM so the optimizer code is the same), inference
at batch 1 and 32 (eval mode, `torch.inference_mode`). Random weights and random 224 px input, 8 classes.
Warm-up steps, then the median of the timed steps (min and max beside it), CPU utilisation (process CPU
time / wall time) and the kernel's share of that CPU time (page faults from large allocations show there).

POSTER++ comes from a local checkout of the public repository `Talented-Q/POSTER_V2` (`--poster-src`;
never vendored here). Its model file imports timm and thop and loads two checkpoints from hard-coded
paths in its constructor; the benchmark gives it stand-ins for the few timm helpers it imports (none of
which are used by the POSTER++ 8-class model's forward or initialisation: it defines its own) and skips
the two checkpoint loads, so its backbones stay randomly initialised, like grefel's here. Without the
checkout, the benchmark says so and times grefel alone.

Inference times grefel as `grefel predict` and `grefel export` run it (`ServingModel`: batch norms folded
into the convolutions), POSTER++ as its code runs; `--inference-backend onnx` runs both exported to ONNX
Runtime instead (grefel as `grefel predict --backend onnx` runs it), which takes eager-mode overheads out of
the comparison. Training runs each side as its training code does:
grefel in channels_last (`grefel train`'s default) and with `grefel train`'s CPU allocator settings
(`grefel.cpu_memory`: freed blocks of 4 MiB and more returned to the OS, on 2 MiB pages), POSTER++ in the
default layout and glibc's defaults (`--poster-channels-last`, `--poster-training-allocator` give it
grefel's, to tell what the model saves from what the process settings save).

`--loop` adds a real `grefel train` run at batch 32 (`configs/ferplus_paper.yaml`: SAM, its 8 data loader
workers, evaluation at the training batch, as that config does) on a few batches of FERPlus, reporting the
peak RSS of the training process and the peak summed PSS of its process tree (workers included).

    python benchmarks/bench_poster.py --poster-src ../POSTER_V2
    python benchmarks/bench_poster.py --poster-src ../POSTER_V2 --preset grefel_paper --set checkpoint_ir_stage1=true
    python benchmarks/bench_poster.py --phases infer1,infer32 --steps 10     # grefel alone, inference only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

PHASES = {"train8": ("train", 8), "train32": ("train", 32), "infer1": ("infer", 1), "infer32": ("infer", 32)}
INPUT_SIZE, NUM_CLASSES = 224, 8
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- POSTER++ from a local checkout

def _timm_stand_ins() -> dict[str, types.ModuleType]:
    """Modules for POSTER++'s `from timm... import ...` lines. POSTER++'s 8-class model defines its own
    Mlp, Block and DropPath-using layers; what it takes from timm is `trunc_normal_` (same as torch's),
    `DropPath` (stochastic depth, rate 0 in the model's ViT), `to_2tuple`, and `register_model`, `_cfg`,
    `Mlp`, `Block` that its file imports but the model does not call."""
    from grefel.models.layers import DropPath

    def unused(name: str):
        def fail(*args, **kwargs):
            raise RuntimeError(f"bench_poster: POSTER++ called timm's {name}, which this stand-in does not provide")
        return fail

    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    vision_transformer = types.ModuleType("timm.models.vision_transformer")
    for name in ("_cfg", "Mlp", "Block"):
        setattr(vision_transformer, name, unused(name))
    thop = types.ModuleType("thop")
    thop.profile = unused("thop.profile")
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry,
            "timm.models.vision_transformer": vision_transformer, "thop": thop}


class _NoCheckpoint(dict):
    """What `torch.load` returns while POSTER++ is built: an empty state dict (a face-landmark
    `load_state_dict` of it is skipped; its IR-50 loader matches no key and keeps the random weights)."""


@contextlib.contextmanager
def _checkpoint_loads_skipped():
    load, load_state_dict = torch.load, torch.nn.Module.load_state_dict

    def skip_load(*args, **kwargs):
        return {"state_dict": _NoCheckpoint()}

    def maybe_load_state_dict(module, state_dict, *args, **kwargs):
        if isinstance(state_dict, _NoCheckpoint):
            return None
        return load_state_dict(module, state_dict, *args, **kwargs)

    torch.load, torch.nn.Module.load_state_dict = skip_load, maybe_load_state_dict
    try:
        yield
    finally:
        torch.load, torch.nn.Module.load_state_dict = load, load_state_dict


def build_poster(source: str) -> torch.nn.Module:
    model_file = Path(source) / "models" / "PosterV2_8cls.py"
    if not model_file.is_file():
        raise SystemExit(f"bench_poster: --poster-src {source}: no models/PosterV2_8cls.py there "
                         "(expected a checkout of github.com/Talented-Q/POSTER_V2)")
    sys.modules.update(_timm_stand_ins())
    sys.path.insert(0, str(Path(source).resolve()))
    from models.PosterV2_8cls import pyramid_trans_expr2  # noqa: PLC0415 - the user's checkout, on sys.path now

    with _checkpoint_loads_skipped():
        return pyramid_trans_expr2(img_size=INPUT_SIZE, num_classes=NUM_CLASSES)


# ---------------------------------------------------------------- one phase, in a child process

def onnx_step(model: torch.nn.Module, x: torch.Tensor, threads: int, is_poster: bool):
    """One ONNX Runtime run of `model` on `x`, as `grefel predict --backend onnx` runs it (its session options);
    grefel exported by `grefel export`'s code (dynamic batch), POSTER++ at this batch (its forward bakes the
    batch size into reshapes, so a dynamic-batch export of it fails at run time)."""
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="bench_poster_")) / "model.onnx"
    if is_poster:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits"])
    else:
        model.export_onnx(path, tuple(x.shape))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = {"image": x.contiguous().numpy()}
    with torch.inference_mode():
        reference = model(x).numpy()
    max_abs_diff = float(abs(session.run(None, feed)[0] - reference).max())
    return (lambda: session.run(None, feed)), max_abs_diff


def measure(model_name: str, overrides: dict, phase: str, steps: int, warmup: int, optimizer: str,
            poster_src: str | None, channels_last: bool, backend: str = "torch") -> dict:
    from grefel.engine.losses import GReFELLoss
    from grefel.engine.optim import SAM
    from grefel.models import create_model
    from grefel.models.serving import ServingModel

    mode, batch = PHASES[phase]
    torch.manual_seed(0)
    is_poster = model_name == "poster++"
    model = build_poster(poster_src) if is_poster else create_model(model_name, **overrides)
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    x = torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    label = torch.randint(0, NUM_CLASSES, (batch,))
    criterion = GReFELLoss()

    def loss_of(out):
        if is_poster:
            return F.cross_entropy(out, label)                     # POSTER++'s main_8.py criterion
        return criterion(out, F.one_hot(label, NUM_CLASSES).float(), model.reliability.anchors, 0.5)[0]

    if mode == "train":
        model.train()
        if optimizer == "sam":
            opt = SAM(trainable, torch.optim.AdamW, rho=0.05, lr=3.5e-5, weight_decay=1e-4)
        else:
            opt = torch.optim.AdamW(trainable, lr=3.5e-5, weight_decay=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_of(model(x) if is_poster else model(x, trust=0.5)).backward()
            if optimizer == "sam":
                opt.first_step()
                opt.zero_grad(set_to_none=True)
                loss_of(model(x) if is_poster else model(x, trust=0.5)).backward()
                opt.second_step()
            else:
                opt.step()
    else:
        if not is_poster:
            # As `grefel predict` and `grefel export` run it: batch norms folded into the convs.
            model = ServingModel(model)
        model.eval()
        if backend == "onnx":
            step, onnx_max_abs_diff = onnx_step(model, x, torch.get_num_threads(), is_poster)
        else:
            def step() -> None:
                with torch.inference_mode():
                    model(x)

    for _ in range(warmup):
        step()
    seconds, cpu_seconds, kernel_seconds = [], 0.0, 0.0
    for _ in range(steps):
        usage, cpu, start = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        cpu_seconds += time.process_time() - cpu
        kernel_seconds += resource.getrusage(resource.RUSAGE_SELF).ru_stime - usage.ru_stime
    median = statistics.median(seconds)
    return {"model": model_name, "overrides": overrides, "phase": phase, "mode": mode, "batch": batch,
            "optimizer": optimizer if mode == "train" else None, "channels_last": channels_last, "params": params,
            "backend": backend if mode == "infer" else "torch",
            **({"onnx_max_abs_diff": onnx_max_abs_diff} if mode == "infer" and backend == "onnx" else {}),
            "images_per_s": round(batch / median, 3),
            "step_s": {"min": round(min(seconds), 3), "median": round(median, 3), "max": round(max(seconds), 3)},
            "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
            "cpu_util": round(cpu_seconds / sum(seconds), 2), "kernel_share": round(kernel_seconds / cpu_seconds, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# ---------------------------------------------------------------- a real `grefel train` run

def _tree_pss_kib(pid: int) -> int:
    """Summed proportional set size of `pid` and its descendants (shared pages counted once in all)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def measure_loop(data_root: str, preset_overrides: list[str], batches: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "grefel", "train", "--config", str(ROOT / "configs" / "ferplus_paper.yaml"),
                   "--data-root", data_root, "--output-dir", str(Path(out) / "run"), "--wandb", "off",
                   "--set", "batch_size=32", "--set", "eval_batch_size=32", "--set", "epochs=1",
                   "--set", f"threads={threads}",
                   "--set", f"data.limit_train={32 * batches}", "--set", "data.limit_val=256",
                   *[a for s in preset_overrides for a in ("--set", f"model_args.{s}")]]
        start = time.perf_counter()
        log_path = Path(out) / "train.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        peak_pss = 0
        while True:
            # wait4: this run's own peak RSS (RUSAGE_CHILDREN would be the largest of every phase so far).
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_pss = max(peak_pss, _tree_pss_kib(proc.pid))
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        speed = re.search(r"images_per_s ([0-9.]+)", log_path.read_text())
        if proc.returncode or not speed:
            raise SystemExit(f"bench_poster: the grefel train run failed:\n{log_path.read_text()[-2000:]}")
        return {"model": "grefel train (configs/ferplus_paper.yaml)", "phase": "loop32", "batch": 32,
                "train_batches": batches, "val_images": 256, "overrides": preset_overrides,
                "seconds": round(time.perf_counter() - start, 1), "train_images_per_s": float(speed.group(1)),
                "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "1") == "1",
                "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                "peak_tree_pss_mib": round(peak_pss / 1024, 1)}


# ---------------------------------------------------------------- driver

def table(rows: list[dict]) -> str:
    lines = ["| model | phase | images/s (median) | step s min/median/max | cpu util | kernel share | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["phase"] == "loop32":
            continue
        s = r["step_s"]
        name = r["model"] + (" " + ",".join(f"{k}={v}" for k, v in r["overrides"].items()) if r["overrides"] else "") \
            + (" (channels_last)" if r["channels_last"] else "") + (" (training allocator)" if r["allocator"] else "") \
            + (" (onnxruntime)" if r.get("backend") == "onnx" else "")
        lines.append(f"| {name} | {r['phase']} | {r['images_per_s']:.2f} | {s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f} "
                     f"| {r['cpu_util']:.2f} | {r['kernel_share']:.2f} | {r['peak_rss_mib']:.0f} |")
    by = {(r["model"], r["phase"]): r for r in rows}
    poster = [r for r in rows if r["model"] == "poster++"]
    if poster:
        lines += ["", "| ratio grefel / POSTER++ | " + " | ".join(r["phase"] for r in poster) + " |",
                  "|---|" + "---|" * len(poster)]
        for model in dict.fromkeys(r["model"] for r in rows if r["model"] != "poster++" and r["phase"] != "loop32"):
            speed = [by[(model, r["phase"])]["images_per_s"] / r["images_per_s"] for r in poster]
            memory = [by[(model, r["phase"])]["peak_rss_mib"] / r["peak_rss_mib"] for r in poster]
            lines.append(f"| {model} speed | " + " | ".join(f"{v:.2f}" for v in speed) + " |")
            lines.append(f"| {model} peak RSS | " + " | ".join(f"{v:.2f}" for v in memory) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poster-src", help="checkout of github.com/Talented-Q/POSTER_V2 (without it: grefel alone)")
    parser.add_argument("--preset", default="grefel_paper")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="grefel model config override")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, from {', '.join(PHASES)} ('' with --loop: the loop alone)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase (default 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizer", choices=["sam", "adamw"], default="sam",
                        help="training step: SAM around AdamW (both recipes) or plain AdamW")
    parser.add_argument("--poster-channels-last", action="store_true",
                        help="run POSTER++ in channels_last too (its code does not; grefel train does by default)")
    parser.add_argument("--poster-training-allocator", action="store_true",
                        help="train POSTER++ with grefel train's CPU allocator settings too (grefel.cpu_memory)")
    parser.add_argument("--inference-backend", choices=["torch", "onnx"], default="torch",
                        help="run the inference phases in PyTorch (default) or both sides exported to ONNX Runtime")
    parser.add_argument("--loop", action="store_true", help="also a real `grefel train` run at batch 32 (needs FERPlus)")
    parser.add_argument("--loop-batches", type=int, default=4)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets" / "ferplus"))
    parser.add_argument("--output", help="also write the JSON lines here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(spec.pop("threads"))
        print(json.dumps(measure(**spec)))
        return
    import yaml

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]  # none: --loop alone
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)}; expected some of {', '.join(PHASES)}")
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    # Each side as its training code runs it: grefel train puts the model in channels_last (TrainConfig's
    # default) and sets its allocator; POSTER++'s main_8.py does neither.
    from grefel.cpu_memory import TRAINING_ALLOCATOR_ENV
    from grefel.training.config import TrainConfig

    models = [(args.preset, overrides, TrainConfig.channels_last, True)]
    if args.poster_src:
        models.insert(0, ("poster++", {}, args.poster_channels_last, args.poster_training_allocator))
    else:
        print("bench_poster: no --poster-src given: timing grefel alone (POSTER++: github.com/Talented-Q/POSTER_V2)",
              file=sys.stderr)
    load = os.getloadavg()[0]
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for phase in phases:
        for name, model_overrides, channels_last, allocator in models:
            spec = dict(model_name=name, overrides=model_overrides, phase=phase, steps=args.steps, warmup=args.warmup,
                        optimizer=args.optimizer, poster_src=args.poster_src, channels_last=channels_last,
                        threads=args.threads, backend=args.inference_backend)
            allocator = allocator and PHASES[phase][0] == "train"     # grefel predict keeps glibc's defaults
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, env={**env, **TRAINING_ALLOCATOR_ENV} if allocator else env)
            if out.returncode:
                raise SystemExit(f"bench_poster: {name} {phase} failed:\n{out.stderr[-3000:]}")
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "allocator": allocator})
            print(json.dumps(rows[-1]), flush=True)
    if args.loop:
        rows.append(measure_loop(args.data_root, args.set, args.loop_batches, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    machine = {"load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2),
               "cpus": os.cpu_count(), "torch": torch.__version__}
    print(json.dumps({"machine": machine}))
    print(table(rows))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.output).with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"machine": machine}]))
        tmp.replace(args.output)


if __name__ == "__main__":
    main()
