"""The training and evaluation loops, in the torchvision-references style.

`train_one_epoch` and `evaluate` are plain functions over a model, a loader
and the objects they step; `grefel.training` wires them to configs, run
folders and checkpoints.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from grefel.engine.distributed import DistInfo, all_reduce_sum, gather_objects
from grefel.engine.frozen_cache import FrozenMapCache
from grefel.engine.losses import GReFELLoss
from grefel.engine.optim import SAM
from grefel.errors import GrefelError
from grefel.metrics import classification_report, nll

AMP_MODES = ("off", "bf16", "fp16")


class TrainingDiverged(GrefelError):
    """The loss became NaN or infinite."""


@dataclass
class Amp:
    """Mixed precision: bf16 autocast, or fp16 autocast with a GradScaler, or off."""

    mode: str
    device_type: str
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in AMP_MODES:
            raise GrefelError(f"amp = {self.mode!r}: expected one of {', '.join(AMP_MODES)}")
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.mode == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mode == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)


def cpu_has_units(mode: str) -> bool:
    """Whether oneDNN runs `mode` ("bf16" or "fp16") autocast on this CPU in hardware (AVX512-BF16, AMX);
    without such units it emulates it."""
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{mode}_supported", None)
    return check is None or bool(check())


def slow_autocast_note(mode: str, device_type: str) -> str | None:
    """A note for mixed precision that this CPU emulates: cnn_baseline's training step measured 17x slower
    under bf16 than in float32 on an AVX2 CPU (9.8 against 164 images/s, benchmarks/bench_models.py --amp)."""
    if device_type != "cpu" or mode == "off" or cpu_has_units(mode):
        return None
    return (f"note: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no {mode} units, so --amp {mode} runs "
            f"in software, several times slower than float32 here; --amp off is faster")


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def anchors_of(model: nn.Module) -> torch.Tensor | None:
    head = getattr(unwrap(model), "reliability", None)
    return head.anchors if head is not None else None


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x, batch["target"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)


def batches(loader) -> Iterator[Any]:
    """`loader`'s batches, its worker processes started with Ctrl-C held back: a KeyboardInterrupt raised
    while a worker's start-up data is being sent leaves that worker dying with a traceback and the
    half-built iterator failing in its __del__. Held back, it is raised as soon as the workers are up, and
    the iterator shuts them down as usual. (Blocking the signal would not do: any of torch's threads may
    receive it; a Python handler always runs in the main thread.)"""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield from loader
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda number, frame: held.append(number))
    try:
        iterator = iter(loader)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt
    yield from iterator


def train_one_epoch(model: nn.Module, criterion: GReFELLoss, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loader, *, device: torch.device,
                    step: int, total_steps: int, amp: Amp, ema: nn.Module | None = None,
                    grad_clip: float | None = None, info: DistInfo = DistInfo(),
                    frozen_cache: FrozenMapCache | None = None,
                    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None, teacher_weight: float = 0.0,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> tuple[dict[str, float], int]:
    """One pass over `loader`. Returns the epoch's mean loss parts, accuracy and speed, and the next step.

    The trust ramp t = step / total_steps of the reliability head follows the global step.
    With `frozen_cache`, the maps of the model's frozen parts come from the cache, warped like each image.
    With `teacher` (images -> probabilities), each target becomes (1 - teacher_weight) * target +
    teacher_weight * the teacher's probabilities on the same augmented images.
    """
    model.train()
    sums = torch.zeros(6, dtype=torch.float64)  # loss, cls, anchor, center, correct, samples
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in batches(loader):
        x, target, label = to_device(batch, device)
        if teacher is not None:
            with amp.autocast():
                taught = teacher(x)[:, :target.shape[1]].float()                      # (B, C)
            target = (1.0 - teacher_weight) * target.float() + teacher_weight * taught
        trust = min(step / total_steps, 1.0)
        extra = {}
        if frozen_cache is not None:
            maps = frozen_cache.lookup(batch["index"], batch["geometry"])
            extra["frozen_maps"] = [m.to(device, non_blocking=True) for m in maps]

        def forward_backward() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
            with amp.autocast():
                out = model(x, trust=trust, **extra)
                loss, parts = criterion(out, target.float(), anchors_of(model), trust)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at step {step} (epoch step "
                                       f"{step % max(len(loader), 1)}); stopping without saving this epoch")
            amp.scaler.scale(loss).backward()
            return loss, parts, out.corrected

        optimizer.zero_grad(set_to_none=True)
        loss, parts, corrected = forward_backward()
        if isinstance(optimizer, SAM):
            optimizer.first_step()
            optimizer.zero_grad(set_to_none=True)
            forward_backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.second_step()
        else:
            if grad_clip:
                amp.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, grad_clip)
            amp.scaler.step(optimizer)
            amp.scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        n = x.shape[0]
        correct = (corrected.argmax(1) == label).sum().item()
        sums += torch.tensor([loss.item() * n, parts["cls"].item() * n, parts.get("anchor", torch.tensor(0.)).item() * n,
                              parts.get("center", torch.tensor(0.)).item() * n, correct, n], dtype=torch.float64)
        step += 1
        if on_step is not None:
            on_step(step, {"loss": loss.item(), "acc": correct / n, "lr": optimizer.param_groups[0]["lr"],
                           "images_per_s": sums[5].item() * info.world_size / (time.perf_counter() - start)})
    sums = all_reduce_sum(sums, info)
    seconds = time.perf_counter() - start
    count = max(sums[5].item(), 1.0)
    stats = {"train_loss": sums[0].item() / count, "train_loss_cls": sums[1].item() / count,
             "train_loss_anchor": sums[2].item() / count, "train_loss_center": sums[3].item() / count,
             "train_acc": sums[4].item() / count, "images_per_s": sums[5].item() / seconds,
             "epoch_seconds": seconds}
    return stats, step


@dataclass
class Predictions:
    """Per-sample outputs over a whole dataset, in dataset order."""

    index: np.ndarray        # (N,)
    label: np.ndarray        # (N,)
    logits: np.ndarray       # (N, C) primary logits
    primary: np.ndarray      # (N, C) l_p
    corrected: np.ndarray    # (N, C) anchor-corrected distribution (== primary for models without the head)

    def served_logits(self, serve: str, shift: list[float] | None = None) -> np.ndarray:
        """Logits of the served prediction, less a logit adjustment `shift` (one per class); temperature
        scaling acts on these."""
        logits = self.logits if serve == "primary" else np.log(np.clip(self.corrected, 1e-8, None))
        return logits if shift is None else logits - np.asarray(shift, dtype=logits.dtype)


@torch.no_grad()
def predict(model: nn.Module, loader, *, device: torch.device, amp: Amp, tta_flip: bool = False,
            info: DistInfo = DistInfo(), frozen_cache: FrozenMapCache | None = None,
            on_batch: Callable[[], None] | None = None) -> Predictions:
    """Eval-mode outputs for every sample of `loader`'s dataset, gathered from all ranks.

    `tta_flip` averages each image with its mirror: logits for the primary
    prediction, distributions for the corrected one.
    """
    model.eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("index", "label", "logits", "primary", "corrected")}

    def maps(batch, mirror: bool) -> dict[str, list[torch.Tensor]]:
        if frozen_cache is None:
            return {}
        return {"frozen_maps": [m.to(device) for m in frozen_cache.lookup(batch["index"], mirror=mirror)]}

    for batch in batches(loader):
        x, _, label = to_device(batch, device)
        with amp.autocast():
            out = model(x, **maps(batch, False))
            logits, corrected = out.logits.float(), out.corrected.float()
            if tta_flip:
                mirror = model(x.flip(-1), **maps(batch, True))
                logits = (logits + mirror.logits.float()) / 2
                corrected = (corrected + mirror.corrected.float()) / 2
        primary = torch.softmax(logits / unwrap(model).config.tau, -1)
        for key, value in (("index", batch["index"]), ("label", label), ("logits", logits),
                           ("primary", primary), ("corrected", corrected)):
            parts[key].append(value.cpu().numpy())
        if on_batch is not None:
            on_batch()
    local = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    merged = {k: np.concatenate([g[k] for g in gather_objects(local, info) if len(g[k])]) for k in local}
    order = np.argsort(merged["index"], kind="stable")
    return Predictions(**{k: v[order] for k, v in merged.items()})


def evaluate(model: nn.Module, loader, class_names: list[str], *, device: torch.device, amp: Amp,
             serve: str = "primary", temperature: float = 1.0, tta_flip: bool = False,
             info: DistInfo = DistInfo(), frozen_cache: FrozenMapCache | None = None
             ) -> tuple[dict[str, Any], Predictions]:
    """Metrics of the served prediction over the whole dataset, plus primary and corrected accuracy."""
    preds = predict(model, loader, device=device, amp=amp, tta_flip=tta_flip, info=info,
                    frozen_cache=frozen_cache)
    report = metrics_report(preds, class_names, serve, temperature)
    return report, preds


def metrics_report(preds: Predictions, class_names: list[str], serve: str, temperature: float = 1.0,
                   shift: list[float] | None = None) -> dict[str, Any]:
    """Metrics of the served prediction: served logits, less a logit adjustment `shift`, over the temperature."""
    logits = torch.from_numpy(preds.served_logits(serve, shift)).double() / temperature
    probs = torch.softmax(logits, -1).numpy()
    report = classification_report(probs, preds.label, class_names)
    report["serve"] = serve
    report["temperature"] = temperature
    report["primary_accuracy"] = float((preds.primary.argmax(1) == preds.label).mean())
    report["corrected_accuracy"] = float((preds.corrected.argmax(1) == preds.label).mean())
    report["primary_nll"] = nll(preds.primary, preds.label)
    return report
