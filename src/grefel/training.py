"""`grefel train`: YAML presets, outputs, checkpoints, resume and torchrun.

A run directory holds `config.yaml` (the resolved config), `metrics.csv`,
`plots/`, `checkpoints/last.*` (the state `--resume` continues from, written
every epoch) and `checkpoints/best.*` (the model selected on validation data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grefel.config import apply_overrides, from_dict, to_dict
from grefel.data.source import DataSource
from grefel.data.transforms import AugmentConfig
from grefel.errors import ConfigError, GrefelError
from grefel.fileio import atomic_write_text
from grefel.losses import LossConfig
from grefel.optim import OptimConfig

SELECT_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
# Keys a resumed run may change: they alter no computed number, or (epochs) extend the run on purpose.
RESUMABLE_CHANGES = {"epochs", "num_workers", "eval_batch_size", "wandb", "wandb_project", "log_every", "threads"}


@dataclass
class DataConfig:
    source: DataSource = field(default_factory=DataSource)
    train_split: str = "train"
    val_split: str = "valid"             # model selection split; never the test split by default
    train_csv: str | None = None         # csv format: one file per split (the classic scripts' layout)
    val_csv: str | None = None
    label_mode: str = "majority"         # training targets: majority | probability | crossentropy | multi_target
    val_label_mode: str = "majority"     # validation is scored on majority labels, as published results are
    balanced_sampling: bool = False      # class-balanced sampling with replacement
    class_weighting: str = "inverse"     # class weights in L_cls: inverse ((N/C)/N_c, the spec) | sqrt | none
    limit_train: int | None = None       # first N samples only (quick experiments, tests)
    limit_val: int | None = None


@dataclass
class TrainConfig:
    model: str = "grefel_small"
    model_args: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None         # a grefel model checkpoint to start from (same preset and classes)
    ir50_weights: str | None = None      # POSTER++ ir50.pth for the image backbone (POSTER++-family presets)
    vit_weights: str | None = None       # a timm-layout ViT state_dict (grefel_vit)
    image_init_from: str | None = None   # a cnn_baseline checkpoint whose VGG stack starts grefel_vgg's image
                                         # branch: the pretrained image branch of the paper, trained here
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 30
    batch_size: int = 64                 # global: divided across torchrun processes
    eval_batch_size: int = 256
    num_workers: int = 2
    seed: int = 0
    deterministic: bool = False
    amp: str = "off"                     # off | bf16 | fp16
    device: str = "auto"                 # auto | cpu | cuda
    serve: str = "primary"               # which prediction the checkpoint serves: primary | corrected
    select_metric: str = "accuracy"      # validation metric that picks best.safetensors
    tta_flip: bool = False               # validation with horizontal-flip test-time augmentation
    channels_last: bool = True
    frozen_cache: bool = False           # compute the frozen parts' maps once and warp them per step
    threads: int | None = None           # torch intra-op threads (default: torch's choice)
    wandb: str = "auto"                  # auto | online | offline | off
    wandb_project: str = "grefel"
    log_every: int = 50

    def validate(self) -> None:
        from grefel.data.source import LABEL_MODES
        from grefel.engine import AMP_MODES
        from grefel.models import model_config
        from grefel.models.serving import SERVE_CHOICES

        model_config(self.model, **self.model_args)
        checks = [("amp", self.amp, AMP_MODES), ("device", self.device, ("auto", "cpu", "cuda")),
                  ("serve", self.serve, SERVE_CHOICES), ("select_metric", self.select_metric, SELECT_METRICS),
                  ("wandb", self.wandb, ("auto", "online", "offline", "off")),
                  ("data.label_mode", self.data.label_mode, LABEL_MODES),
                  ("data.val_label_mode", self.data.val_label_mode, LABEL_MODES),
                  ("data.class_weighting", self.data.class_weighting, ("inverse", "sqrt", "none"))]
        for name, value, choices in checks:
            if value not in choices:
                raise ConfigError(f"{name} = {value!r}: expected one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected a positive integer")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers = {self.num_workers}: expected 0 or more")


def load_config(path: str | None, overrides: list[str], extra: dict[str, Any] | None = None) -> TrainConfig:
    """YAML preset (optional) + `--set` overrides + CLI flags -> checked TrainConfig."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a 4300+ digit integer
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
    data = apply_overrides(data, overrides + [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items()])
    cfg = from_dict(TrainConfig, data, where="config")
    cfg.validate()
    return cfg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML preset",
        description="Train from a YAML preset with --set overrides. Under `torchrun --nproc_per_node N -m "
                    "grefel train ...` it runs DistributedDataParallel (NCCL on GPUs, gloo on CPU).")
    add_train_arguments(parser)
    parser.set_defaults(func=run_train_command)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset, e.g. configs/ferplus_small.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=3e-4 --set data.label_mode=crossentropy")
    parser.add_argument("--data-root", help="dataset root (sets data.source.root)")
    parser.add_argument("--output-dir", required=True, help="run directory (created)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    parser.add_argument("--amp", help="mixed precision: bf16, fp16 or off (default off: on CPU bf16 autocast "
                                      "runs but these cores have no bf16 units, so it is slower; use bf16 on GPUs)")
    parser.add_argument("--wandb", help="Weights & Biases: online, offline or off (default: online if an API "
                                        "key is configured, else offline; never blocks without network)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume)")
    parser.add_argument("--device", help="auto, cpu or cuda")


def run_train_command(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.data_root:
        extra["data.source.root"] = args.data_root
    for key in ("amp", "wandb", "device"):
        if getattr(args, key):
            extra[key] = getattr(args, key)
    if args.deterministic:
        extra["deterministic"] = True
    cfg = load_config(args.config, args.set, extra)
    command = " ".join(shlex.quote(a) for a in ["grefel"] + sys.argv[1:]) if sys.argv[0].endswith("grefel") \
        else " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name] + sys.argv[1:])
    train(cfg, Path(args.output_dir), resume=args.resume, overwrite=args.overwrite, command=command)
    return 0


# ---- the run ----------------------------------------------------------------------------------

def prepare_output_dir(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run needs --resume (same config) or --overwrite."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    saved = out / "config.yaml"
    if resume:
        if not (out / "checkpoints" / "last.json").exists() and not (out / "checkpoints" / "prev.json").exists():
            raise ConfigError(f"{out}: no checkpoint to resume from (checkpoints/last.json)")
        previous = to_dict(from_dict(TrainConfig, yaml.safe_load(saved.read_text()), where=str(saved)))
        changed = [k for k, v in to_dict(cfg).items() if previous.get(k) != v and k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(f"{out}: --resume with a different config ({', '.join(changed)} changed); "
                              f"use the saved {saved} or start a new run")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = "a run (config.yaml)" if saved.exists() else "files"
            raise ConfigError(f"{out} already holds {what}; pass --resume to continue it or --overwrite to replace it")
        for name in ("checkpoints", "plots", "wandb"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("config.yaml", "metrics.csv", "summary.json"):
            (out / name).unlink(missing_ok=True)


def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, json) of the Python, NumPy and torch generators."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    info = {"numpy": [name, pos, has_gauss, gauss], "python": [py_version, list(py_state), py_gauss]}
    return tensors, info


def set_rng_state(tensors: dict[str, Any], info: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    name, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = info["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


def load_split(cfg: DataConfig, role: str):
    """The training (role "train") or validation ("val") dataset of a run."""
    from grefel.data import load_dataset

    split, label_mode, limit, csv_path = (
        (cfg.train_split, cfg.label_mode, cfg.limit_train, cfg.train_csv) if role == "train"
        else (cfg.val_split, cfg.val_label_mode, cfg.limit_val, cfg.val_csv))
    source = cfg.source if csv_path is None else dataclasses.replace(cfg.source, format="csv", csv=csv_path)
    ds = load_dataset(source, split, label_mode)
    if limit is not None and limit < len(ds):
        ds = ds.subset(range(limit))
    return ds


def checkpoint_info(cfg: TrainConfig, model, epoch: int, report: dict[str, Any], command: str,
                    data_summary: dict[str, Any]) -> dict[str, Any]:
    """What best.json records: the inference contract and how the weights were made."""
    from grefel.inference.faces import ALIGN_TEMPLATE
    from grefel.labels import CANONICAL_CLASSES

    mcfg = model.config
    return {
        "preset": cfg.model,
        "model": to_dict(mcfg),
        "class_names": list(CANONICAL_CLASSES[:mcfg.num_classes]),
        "input": {"size": mcfg.input_size, "channels": mcfg.in_chans, "value_range": [0.0, 1.0],
                  "normalisation": {"mean": mcfg.mean, "std": mcfg.std, "applied": "inside the model"}},
        "preprocessing": {
            "color": data_summary["color"], "crop_size": data_summary["image_size"],
            "alignment": "5-point similarity transform onto grefel.inference.faces.ALIGN_TEMPLATE "
                         "(FERPlus-like tight face crop), then resize to the input size",
            "align_template": ALIGN_TEMPLATE.tolist(),
        },
        "serve": cfg.serve,
        "temperature": 1.0,
        "tta_flip": cfg.tta_flip,
        "training": {"command": command, "epoch": epoch, "data": data_summary, "config": to_dict(cfg)},
        "metrics": {"valid": {k: v for k, v in report.items() if k != "confusion_matrix"}},
    }


def build_model(cfg: TrainConfig):
    """The preset, with the starting weights the config names (init_from, ir50_weights, vit_weights,
    image_init_from)."""
    from grefel.checkpoint import load_strict, read_model_checkpoint, unprefixed
    from grefel.fileio import load_state_dict
    from grefel.models import create_model

    model = create_model(cfg.model, **cfg.model_args)
    mcfg = model.config
    if cfg.init_from:
        tensors, init_info = read_model_checkpoint(cfg.init_from)
        if init_info["preset"] != cfg.model or init_info["model"].get("num_classes") != mcfg.num_classes:
            raise ConfigError(f"init_from {cfg.init_from}: a {init_info['preset']} checkpoint with "
                              f"{init_info['model'].get('num_classes')} classes cannot start a {cfg.model} "
                              f"run with {mcfg.num_classes} classes")
        load_strict(model, tensors, cfg.init_from)
    if cfg.ir50_weights:
        from grefel.models.ir import load_ir50
        if not hasattr(model, "image_backbone"):
            raise ConfigError(f"ir50_weights: preset {cfg.model} has no IR image backbone")
        report = load_ir50(model.image_backbone, load_state_dict(cfg.ir50_weights))
        print(f"IR-50 weights: {report['loaded']} tensors loaded, {report['skipped']} unused skipped")
    if cfg.vit_weights:
        if not hasattr(model, "load_vit"):
            raise ConfigError(f"vit_weights: preset {cfg.model} has no ViT image backbone")
        report = model.load_vit(load_state_dict(cfg.vit_weights))
        print(f"ViT weights: {report['loaded']} tensors loaded, {report['skipped']} skipped")
    if cfg.image_init_from:
        from grefel.models.vgg import VGGBackbone
        if not isinstance(getattr(model, "image_backbone", None), VGGBackbone):
            raise ConfigError(f"image_init_from: preset {cfg.model} has no VGG image branch")
        tensors, init_info = read_model_checkpoint(cfg.image_init_from)
        if init_info["preset"] != "cnn_baseline":
            raise ConfigError(f"image_init_from {cfg.image_init_from}: a {init_info['preset']} checkpoint; "
                              f"expected a cnn_baseline one")
        load_strict(model.image_backbone, unprefixed(tensors, "features"), cfg.image_init_from)
        print(f"image branch: started from the VGG stack of {cfg.image_init_from}")
    return model


def check_classes_fit(name: str, ds, num_classes: int) -> None:
    """A sample of a class beyond the model's head is a config mistake, not something to drop silently."""
    import numpy as np

    from grefel.labels import CANONICAL_CLASSES

    beyond = np.flatnonzero(ds.targets[:, num_classes:].sum(1) > 0)
    if beyond.size:
        raise ConfigError(f"the {name} data has a sample of class "
                          f"{CANONICAL_CLASSES[int(ds.targets[beyond[0]].argmax())]} ({ds.ids[beyond[0]]}) "
                          f"but the model has {num_classes} classes ({', '.join(CANONICAL_CLASSES[:num_classes])})")


def build_frozen_caches(model, datasets: dict[str, Any], cache_dir: str | None, info) -> dict[str, Any]:
    """Frozen maps of every image, computed once; under torchrun rank 0 computes and the
    other ranks wait for the files, then map them."""
    import torch

    from grefel.frozen_cache import FrozenMapCache

    caches: dict[str, Any] = {}
    for turn in ((True,) if not info.enabled else (info.is_main, not info.is_main)):
        if turn:
            caches = {name: FrozenMapCache.load_or_build(model, ds.images, cache_dir,
                                                        log=print if info.is_main else (lambda *_: None))
                      for name, ds in datasets.items()}
        if info.enabled:
            torch.distributed.barrier()
    return caches


def restore_training_state(ckpt_dir: Path, model, ema, optimizer, scheduler, amp) -> dict[str, Any]:
    """Load `last` (or `prev` when `last` is damaged) into the run's objects; returns its JSON state."""
    from grefel.checkpoint import load_strict, load_training_state, optimizer_from_flat, unprefixed
    from grefel.optim import load_scheduler_state

    tensors, state, which = load_training_state(ckpt_dir)
    load_strict(model, unprefixed(tensors, "model"), ckpt_dir / f"{which}.safetensors")
    if ema is not None:
        ema.load_state_dict(unprefixed(tensors, "ema"))
    optimizer.load_state_dict(optimizer_from_flat(unprefixed(tensors, "optim"), state["optimizer"]))
    load_scheduler_state(scheduler, state["scheduler"])
    amp.scaler.load_state_dict(state["scaler"])
    set_rng_state(tensors, state["rng"])
    print(f"resuming {ckpt_dir.parent} from {which} checkpoint: epoch {state['epoch']}, step {state['step']}",
          flush=True)
    return state


def save_best(out: Path, model, info: dict[str, Any], report: dict[str, Any], served_logits, labels,
              class_names: list[str]) -> None:
    """best.safetensors/.json, and the confusion matrix and reliability diagram of that epoch."""
    import numpy as np
    import torch

    from grefel.checkpoint import save_model_checkpoint
    from grefel.metrics import plot_confusion_matrix, plot_reliability_diagram

    ckpt_dir, epoch = out / "checkpoints", info["training"]["epoch"]
    try:
        save_model_checkpoint(ckpt_dir / "best", model, info)
    except OSError as exc:
        raise GrefelError(f"could not write the best checkpoint in {ckpt_dir} ({exc.strerror or exc})") from None
    plot_confusion_matrix(np.array(report["confusion_matrix"]), class_names, out / "plots" / "confusion_matrix_best.png",
                          title=f"validation, epoch {epoch} (best)")
    probs = torch.softmax(torch.from_numpy(served_logits).double(), -1).numpy()
    plot_reliability_diagram(probs, labels, out / "plots" / "reliability_best.png",
                             title=f"validation, epoch {epoch} (best)")


def save_last(ckpt_dir: Path, model, ema, optimizer, scheduler, amp, state: dict[str, Any]) -> None:
    """The full training state `--resume` continues from; `state` holds epoch, step, best and config."""
    from grefel.checkpoint import optimizer_to_flat, prefixed, save_training_state

    rng_tensors, rng_info = rng_state()
    optim_tensors, optim_rest = optimizer_to_flat(optimizer.state_dict())
    tensors = {**prefixed(model.state_dict(), "model"), **prefixed(optim_tensors, "optim"), **rng_tensors}
    if ema is not None:
        tensors.update(prefixed(ema.state_dict(), "ema"))
    try:
        save_training_state(ckpt_dir, tensors, {**state, "optimizer": optim_rest, "scheduler": scheduler.state_dict(),
                                                "scaler": amp.scaler.state_dict(), "rng": rng_info})
    except OSError as exc:
        raise GrefelError(f"could not write the epoch {state['epoch']} checkpoint in {ckpt_dir} "
                          f"({exc.strerror or exc}); the previous checkpoint is intact") from None


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
          command: str = "") -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to OUT/summary.json."""
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from grefel.data import class_balanced_weights, class_weights, collate_samples, eval_transform, train_transform
    from grefel.distributed import (EpochSampler, ShardSampler, broadcast_object, init_distributed,
                                    shutdown_distributed)
    from grefel.engine import Amp, evaluate, train_one_epoch, unwrap
    from grefel.labels import CANONICAL_CLASSES
    from grefel.losses import GReFELLoss
    from grefel.optim import build_ema, build_optimizer, build_scheduler
    from grefel.tracking import Progress, RunLogger

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = cuda but no CUDA device is available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    info = init_distributed(device)
    try:
        if use_cuda:
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {info.world_size} processes")
        error = None
        if info.is_main:
            try:
                prepare_output_dir(out, cfg, resume, overwrite)
            except GrefelError as exc:
                error = str(exc)
        error = broadcast_object(error, info)
        if error is not None:
            raise ConfigError(error)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)

        model = build_model(cfg)
        mcfg = model.config
        dcfg = cfg.data
        train_ds, val_ds = load_split(dcfg, "train"), load_split(dcfg, "val")
        check_classes_fit("training", train_ds, mcfg.num_classes)
        check_classes_fit("validation", val_ds, mcfg.num_classes)
        if len(train_ds) < cfg.batch_size:
            raise ConfigError(f"the training split has {len(train_ds)} samples, fewer than batch_size {cfg.batch_size}")

        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.to(device)
        train_ds.transform = train_transform(mcfg.input_size, mcfg.in_chans, cfg.augment,
                                             with_geometry=cfg.frozen_cache)
        val_ds.transform = eval_transform(mcfg.input_size, mcfg.in_chans)
        caches = {"train": None, "val": None}
        if cfg.frozen_cache:
            if not hasattr(model, "frozen_maps"):
                raise ConfigError(f"frozen_cache: preset {cfg.model} has no frozen parts to precompute")
            caches = build_frozen_caches(model, {"train": train_ds, "val": val_ds}, dcfg.source.cache_dir, info)

        sampler = EpochSampler(len(train_ds), cfg.seed, info,
                               class_balanced_weights(train_ds.labels) if dcfg.balanced_sampling else None)
        loader_generator = torch.Generator()
        train_loader = DataLoader(train_ds, batch_size=cfg.batch_size // info.world_size, sampler=sampler,
                                  num_workers=cfg.num_workers, collate_fn=collate_samples, drop_last=True,
                                  generator=loader_generator, pin_memory=use_cuda)
        val_loader = DataLoader(val_ds, batch_size=cfg.eval_batch_size, sampler=ShardSampler(len(val_ds), info),
                                num_workers=cfg.num_workers, collate_fn=collate_samples, pin_memory=use_cuda)
        steps_per_epoch = len(train_loader)
        total_steps = steps_per_epoch * cfg.epochs

        weights = None
        if dcfg.class_weighting != "none":
            weights = class_weights(train_ds.targets, mcfg.num_classes).to(device)
            weights = weights.sqrt() if dcfg.class_weighting == "sqrt" else weights
        criterion = GReFELLoss(cfg.loss, weights, multi_target=dcfg.label_mode == "multi_target").to(device)
        ema = build_ema(model, cfg.optim.ema_decay) if cfg.optim.ema else None
        net = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None) \
            if info.enabled else model
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.epochs)
        amp = Amp(cfg.amp, device.type)

        start_epoch, step, best, run_id = 1, 0, None, None
        ckpt_dir = out / "checkpoints"
        if resume:
            state = restore_training_state(ckpt_dir, model, ema, optimizer, scheduler, amp)
            start_epoch, step, best, run_id = state["epoch"] + 1, state["step"], state["best"], state.get("wandb_run_id")

        data_summary = {
            "format": dcfg.source.format, "root": dcfg.source.root, "train_split": dcfg.train_split,
            "val_split": dcfg.val_split, "train_csv": dcfg.train_csv, "val_csv": dcfg.val_csv,
            "label_mode": dcfg.label_mode, "val_label_mode": dcfg.val_label_mode,
            "train_samples": len(train_ds), "val_samples": len(val_ds),
            "image_size": int(train_ds.images.shape[1]), "color": "rgb" if train_ds.images.ndim == 4 else "grey",
        }
        logger = None
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            logger = RunLogger(out, to_dict(cfg), cfg.wandb, cfg.wandb_project, run_id)
            if resume:
                logger.truncate(start_epoch - 1)
            print(f"training {cfg.model} on {len(train_ds)} samples, validating on {len(val_ds)}; "
                  f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs; {info.world_size} process(es) "
                  f"on {device}; wandb {logger.mode}", flush=True)
        class_names = list(CANONICAL_CLASSES[:mcfg.num_classes])

        for epoch in range(start_epoch, cfg.epochs + 1):
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            loader_generator.manual_seed(cfg.seed * 100_003 + epoch)
            progress = Progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", cfg.log_every) if info.is_main else None
            stats, step = train_one_epoch(net, criterion, optimizer, scheduler, train_loader, device=device,
                                          step=step, total_steps=total_steps, amp=amp, ema=ema,
                                          grad_clip=cfg.optim.grad_clip, info=info,
                                          frozen_cache=caches["train"], on_step=(lambda s, v: progress.update(v)) if progress else None)
            if progress:
                progress.close()
            scored = ema.module if ema is not None else net
            report, preds = evaluate(scored, val_loader, class_names, device=device, amp=amp, serve=cfg.serve,
                                     tta_flip=cfg.tta_flip, info=info, frozen_cache=caches["val"])
            metric = report[cfg.select_metric]
            improved = best is None or metric > best["value"]
            if improved:
                best = {"value": metric, "epoch": epoch, "metric": cfg.select_metric}
            if not info.is_main:
                continue
            served = preds.served_logits(cfg.serve)
            if improved:
                best_model = unwrap(scored)
                save_best(out, best_model, checkpoint_info(cfg, best_model, epoch, report, command, data_summary),
                          report, served, preds.label, class_names)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats,
                   "val_loss": report["nll"], "val_acc": report["accuracy"],
                   "val_mean_class_acc": report["mean_class_accuracy"], "val_macro_f1": report["macro_f1"],
                   "val_ece": report["ece"], "val_primary_acc": report["primary_accuracy"],
                   "val_corrected_acc": report["corrected_accuracy"]}
            logger.log_epoch(row, report, preds.label, served.argmax(1))
            save_last(ckpt_dir, model, ema, optimizer, scheduler, amp,
                      {"epoch": epoch, "step": step, "best": best, "wandb_run_id": logger.run_id,
                       "config": to_dict(cfg)})
        summary = {"output_dir": str(out), "epochs": cfg.epochs, "best": best}
        if info.is_main:
            from grefel.fileio import atomic_write_json
            atomic_write_json(out / "summary.json", summary)
            logger.finish()
            print(f"done: best {cfg.select_metric} {best['value']:.4f} at epoch {best['epoch']}; "
                  f"model in {ckpt_dir / 'best.safetensors'}", flush=True)
        return summary
    finally:
        shutdown_distributed()
