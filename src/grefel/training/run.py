"""`train()`: one training run, from a checked config to a run folder with its model file.

A run directory holds `config.yaml` (the resolved config), `metrics.csv`,
`plots/`, `checkpoints/last.*` (the state `--resume` continues from, written
every epoch, with the one before it as `prev.*`) and `checkpoints/best.*` (the
model selected on validation data).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from grefel.alignment import ALIGN_TEMPLATE
from grefel.config import from_dict, to_dict
from grefel.data import (
    class_balanced_weights,
    class_weights,
    collate_samples,
    eval_transform,
    load_dataset,
    train_transform,
)
from grefel.data.workers import end_with
from grefel.devices import resolve_device
from grefel.engine.distributed import (
    EpochSampler,
    ShardSampler,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from grefel.engine.frozen_cache import FrozenMapCache
from grefel.engine.loops import Amp, evaluate, slow_autocast_note, train_one_epoch, unwrap
from grefel.engine.losses import GReFELLoss
from grefel.engine.optim import build_ema, build_optimizer, build_scheduler
from grefel.engine.tracking import RunLogger
from grefel.errors import ConfigError, GrefelError
from grefel.fileio import atomic_write_json, atomic_write_text
from grefel.labels import CANONICAL_CLASSES
from grefel.models import create_model
from grefel.models.model_file import save_model_checkpoint
from grefel.plots import plot_confusion_matrix, plot_reliability_diagram
from grefel.progress import Progress
from grefel.training.config import RESUMABLE_CHANGES, DataConfig, TrainConfig
from grefel.training.distill import Teacher, check_distillable, distilled_targets
from grefel.training.state import restore_training_state, save_last, seed_everything

# Above this many trained parameters a model is announced as sized for GPUs when trained on a CPU
# (grefel_vgg and the CNNs train at hundreds of images/s on two cores; grefel_vit, 86 M, at about one).
GPU_SIZED_PARAMETERS = 20_000_000


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
    out.mkdir(parents=True, exist_ok=True)    # there from the start, while the data loads


def loader_workers(num_workers: int) -> dict[str, Any]:
    """DataLoader worker options: workers forked from a small fork server, where there is one.

    Workers forked from the trainer itself inherit its heap, gigabytes once training has run (each epoch's
    and each evaluation's workers fork anew), as copy-on-write pages that become each worker's own as the
    trainer reuses its memory: 8 workers of the paper config added ~4.3 GB PSS that way. The server imports
    the data modules once, so the workers forked from it share those pages too. Such workers are the
    server's children, so they watch the trainer themselves (`end_with`) to end with it.
    """
    if num_workers == 0 or "forkserver" not in multiprocessing.get_all_start_methods():
        return {"num_workers": num_workers}
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["grefel.data.dataset", "grefel.data.transforms", "grefel.data.workers"])
    options = {"num_workers": num_workers, "multiprocessing_context": context}
    if hasattr(os, "pidfd_open"):
        options["worker_init_fn"] = partial(end_with, os.getpid())
    return options


def load_split(cfg: DataConfig, role: str):
    """The training (role "train") or validation ("val") dataset of a run."""
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
    mcfg = model.config
    return {
        "preset": cfg.model,
        "model": to_dict(mcfg),
        "class_names": list(CANONICAL_CLASSES[:mcfg.num_classes]),
        "input": {"size": mcfg.input_size, "channels": mcfg.in_chans, "value_range": [0.0, 1.0],
                  "normalisation": {"mean": mcfg.mean, "std": mcfg.std, "applied": "inside the model"}},
        "preprocessing": {
            "color": data_summary["color"], "crop_size": data_summary["image_size"],
            "alignment": "5-point similarity transform onto grefel.alignment.ALIGN_TEMPLATE "
                         "(FERPlus-like tight face crop), then resize to the input size",
            "align_template": ALIGN_TEMPLATE.tolist(),
        },
        "serve": cfg.serve,
        "temperature": 1.0,
        "tta_flip": cfg.tta_flip,
        "training": {"command": command, "epoch": epoch, "data": data_summary, "config": to_dict(cfg)},
        "metrics": {"valid": {k: v for k, v in report.items() if k != "confusion_matrix"}},
        **({"warning": warning} if (warning := collapse_warning(report)) else {}),
    }


def collapse_warning(report: dict[str, Any]) -> str | None:
    """Why a model is no better than guessing, from its validation confusion matrix: every prediction is one
    class, or accuracy is no higher than always answering the most frequent class. None when neither."""
    cm = np.array(report["confusion_matrix"])
    names, support = report["class_names"], cm.sum(1)
    predicted = np.flatnonzero(cm.sum(0))
    majority = int(support.argmax())
    if len(predicted) <= 1:
        only = names[int(predicted[0])] if len(predicted) else "none"
        return f"validation predictions collapse to one class ({only}) for all {int(cm.sum())} samples"
    rate = support[majority] / max(support.sum(), 1)
    if report["accuracy"] <= rate:
        return (f"validation accuracy {report['accuracy']:.1%} is not above the majority-class rate {rate:.1%} "
                f"(always answering {names[majority]})")
    return None


# The config keys that name a pretrained source, and the preset slot each fills (grefel.models.pretrained).
PRETRAINED_KEYS = {"ir50_weights": "ir50", "vit_weights": "vit", "image_init_from": "cnn_image"}


def build_model(cfg: TrainConfig) -> nn.Module:
    """The preset with the starting weights the config names: its shipped pretrained parts, plus the
    sources in ir50_weights / vit_weights / image_init_from, or a whole model file in init_from."""
    given = {key: getattr(cfg, key) for key in PRETRAINED_KEYS if getattr(cfg, key)}
    if cfg.init_from:
        if given:
            raise ConfigError(f"init_from and {', '.join(given)} exclude each other: init_from holds the whole model")
        try:
            return create_model(cfg.model, checkpoint=cfg.init_from, **cfg.model_args)
        except ConfigError as exc:
            raise ConfigError(f"init_from {exc}") from None
    try:
        return create_model(cfg.model, pretrained={PRETRAINED_KEYS[k]: v for k, v in given.items()}, log=print,
                            **cfg.model_args)
    except ConfigError as exc:
        if not given:
            raise
        raise ConfigError(f"{', '.join(given)}: {exc}") from None


def check_classes_fit(name: str, ds, num_classes: int) -> None:
    """A sample of a class beyond the model's head is a config mistake, not something to drop silently."""
    beyond = np.flatnonzero(ds.targets[:, num_classes:].sum(1) > 0)
    if beyond.size:
        raise ConfigError(f"the {name} data has a sample of class "
                          f"{CANONICAL_CLASSES[int(ds.targets[beyond[0]].argmax())]} ({ds.ids[beyond[0]]}) "
                          f"but the model has {num_classes} classes ({', '.join(CANONICAL_CLASSES[:num_classes])})")


def build_frozen_caches(model, datasets: dict[str, Any], cache_dir: str | None, info) -> dict[str, Any]:
    """Frozen maps of every image, computed once; under torchrun rank 0 computes and the
    other ranks wait for the files, then map them."""
    caches: dict[str, Any] = {}
    for turn in ((True,) if not info.enabled else (info.is_main, not info.is_main)):
        if turn:
            caches = {name: FrozenMapCache.load_or_build(model, ds.images, cache_dir,
                                                        log=print if info.is_main else (lambda *_: None))
                      for name, ds in datasets.items()}
        if info.enabled:
            torch.distributed.barrier()
    return caches


def save_best(out: Path, model, info: dict[str, Any], report: dict[str, Any], served_logits, labels,
              class_names: list[str]) -> None:
    """best.safetensors/.json, and the confusion matrix and reliability diagram of that epoch."""
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


def report_step(progress: Progress, step: int, values: dict[str, float]) -> None:
    progress.update(text=f"loss {values['loss']:.4f} acc {values['acc']:.3f} lr {values['lr']:.2e} "
                         f"{values['images_per_s']:.0f} img/s")


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
          command: str = "") -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to OUT/summary.json."""
    device = resolve_device(cfg.device)
    use_cuda = device.type == "cuda"
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
        teacher = None
        if cfg.distill_from and cfg.distill_mode == "static":
            out.mkdir(parents=True, exist_ok=True)
            train_ds.targets = distilled_targets(cfg.distill_from, cfg.distill_weight, train_ds, device,
                                                 out / "teacher_targets.npz", log=print if info.is_main else
                                                 (lambda *_: None))
            check_classes_fit("distilled training", train_ds, mcfg.num_classes)
        elif cfg.distill_from:
            check_distillable(cfg.distill_weight, train_ds.label_mode)
            teacher = Teacher(cfg.distill_from, (mcfg.in_chans, mcfg.input_size), device)
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
        workers = loader_workers(cfg.num_workers)
        train_loader = DataLoader(train_ds, batch_size=cfg.batch_size // info.world_size, sampler=sampler,
                                  collate_fn=collate_samples, drop_last=True, generator=loader_generator,
                                  pin_memory=use_cuda, **workers)
        val_loader = DataLoader(val_ds, batch_size=cfg.eval_batch_size, sampler=ShardSampler(len(val_ds), info),
                                collate_fn=collate_samples, pin_memory=use_cuda, **workers)
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
        if cfg.compile:
            # Compiles what steps and scores; `model` (its weights, what is saved) stays the plain module.
            net = torch.compile(net)
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
            "train_class_counts": train_ds.class_counts()[:mcfg.num_classes].tolist(),
            "image_size": int(train_ds.images.shape[1]), "color": "rgb" if train_ds.images.ndim == 4 else "grey",
        }
        logger = None
        if info.is_main:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            logger = RunLogger(out, to_dict(cfg), cfg.wandb, cfg.wandb_project, run_id)
            if resume:
                logger.truncate(start_epoch - 1)
            total = sum(p.numel() for p in model.parameters())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"training {cfg.model} ({total / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trained) on "
                  f"{len(train_ds)} samples, validating on {len(val_ds)}; {steps_per_epoch} steps/epoch x "
                  f"{cfg.epochs} epochs; {info.world_size} process(es) on {device}; wandb {logger.mode}", flush=True)
            if device.type == "cpu" and trainable > GPU_SIZED_PARAMETERS:
                print(f"note: {cfg.model} is sized for GPUs; on a CPU an epoch can take hours (the progress line "
                      f"gives the speed and the time left). CPU-sized presets: cnn_baseline, grefel_small "
                      f"(`grefel model presets`)", flush=True)
            if note := slow_autocast_note(cfg.amp, device.type):
                print(note, flush=True)
        class_names = list(CANONICAL_CLASSES[:mcfg.num_classes])

        for epoch in range(start_epoch, cfg.epochs + 1):
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            loader_generator.manual_seed(cfg.seed * 100_003 + epoch)
            progress = Progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", unit="steps", stream=sys.stdout,
                                every=cfg.log_every, period=30.0) if info.is_main else None
            stats, step = train_one_epoch(net, criterion, optimizer, scheduler, train_loader, device=device,
                                          step=step, total_steps=total_steps, amp=amp, ema=ema,
                                          grad_clip=cfg.optim.grad_clip, info=info, frozen_cache=caches["train"],
                                          teacher=teacher, teacher_weight=cfg.distill_weight,
                                          on_step=partial(report_step, progress) if progress else None)
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
            atomic_write_json(out / "summary.json", summary)
            logger.finish()
            best_info = json.loads((ckpt_dir / "best.json").read_text())
            if best_info.get("warning"):
                print(f"warning: the best model is no better than guessing: {best_info['warning']}; train longer, "
                      f"on more data, or check the labels", file=sys.stderr, flush=True)
            print(f"done: best {cfg.select_metric} {best['value']:.4f} at epoch {best['epoch']}; "
                  f"model in {ckpt_dir / 'best.safetensors'}", flush=True)
        return summary
    finally:
        shutdown_distributed()
