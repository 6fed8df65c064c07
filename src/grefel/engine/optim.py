"""Optimizers, the learning-rate schedule and weight EMA for the training engine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from grefel.errors import ConfigError


@dataclass
class OptimConfig:
    name: str = "adamw"               # adamw | adam | sam (SAM around AdamW, the POSTER++ recipe)
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    sam_rho: float = 0.05
    schedule: str = "cosine"          # cosine | exponential | constant
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01        # cosine floor, as a fraction of lr
    gamma: float = 0.98               # exponential decay per epoch (POSTER++: 0.98)
    grad_clip: float | None = 5.0     # max global gradient norm; null disables
    image_lr_scale: float = 1.0       # lr multiplier for the model's image branch (`image_backbone`): below 1
                                      # when it starts pretrained, so the fresh fusion and heads do not wreck it
    ema: bool = False
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "adam", "sam"):
            raise ConfigError(f"optim.name = {self.name!r}: expected adamw, adam or sam")
        if self.schedule not in ("cosine", "exponential", "constant"):
            raise ConfigError(f"optim.schedule = {self.schedule!r}: expected cosine, exponential or constant")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr = {self.lr!r}: expected a positive number")
        if not self.image_lr_scale > 0:
            raise ConfigError(f"optim.image_lr_scale = {self.image_lr_scale!r}: expected a positive number")


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021) around a base optimizer.

    Usage per step: loss.backward(); opt.first_step(); (second forward) loss.backward(); opt.second_step().
    """

    def __init__(self, params: Iterable, base: type[torch.optim.Optimizer], rho: float = 0.05, **kwargs):
        if rho <= 0:
            raise ConfigError(f"optim.sam_rho = {rho!r}: expected a positive number")
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self) -> None:
        grads = [p.grad.norm(2) for g in self.param_groups for p in g["params"] if p.grad is not None]
        scale_base = 1.0 / (torch.stack(grads).norm(2) + 1e-12)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * group["rho"] * scale_base
                p.add_(e_w)
                self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def second_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))
        self.base_optimizer.step()

    def step(self, closure=None):  # noqa: D102 - SAM needs two passes; the engine calls first/second_step
        raise RuntimeError("SAM.step needs two forward passes: call first_step() and second_step()")

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """No weight decay on biases, norms, tokens, position embeddings, LayerScale and anchors; the image
    branch's groups (if `image_lr_scale` != 1) get lr * image_lr_scale. Group 0 always has the base lr."""
    image_ids = {id(p) for p in model.image_backbone.parameters()} \
        if cfg.image_lr_scale != 1.0 and hasattr(model, "image_backbone") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {(i, d): [] for i in (False, True) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "relative_position_bias_table", "anchors"))
        groups[(id(p) in image_ids, not skip)].append(p)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
                     "lr": cfg.lr * (cfg.image_lr_scale if image else 1.0)}
                    for (image, decay), params in groups.items() if params or not image]
    if cfg.name == "sam":
        return SAM(param_groups, torch.optim.AdamW, rho=cfg.sam_rho, lr=cfg.lr, betas=cfg.betas)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(param_groups, lr=cfg.lr, betas=cfg.betas)


@dataclass
class LRSchedule:
    """Multiplier of the base lr at a global step: linear warm-up, then cosine / exponential / constant."""

    schedule: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    gamma: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "exponential":
            return self.gamma ** ((step - self.warmup_steps) / self.steps_per_epoch)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = LRSchedule(cfg.schedule, steps_per_epoch, steps_per_epoch * epochs,
                          round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio, cfg.gamma)
    target = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer
    return torch.optim.lr_scheduler.LambdaLR(target, schedule)


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Restore the step count but keep the schedule built from the current config: LambdaLR would
    otherwise copy the saved LRSchedule fields back, so a resume with more epochs kept the old length."""
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})


@dataclass
class EmaUpdate:
    """EMA step with the usual warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n updates,
    so early averages are not dominated by the random initial weights."""

    decay: float

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged) -> None:
        if not ema_params[0].is_floating_point():  # integer buffers (BN's num_batches_tracked) are copied
            torch._foreach_copy_(ema_params, params)
            return
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """Exponential moving average of weights and buffers (BN statistics follow the EMA too)."""
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=EmaUpdate(decay), use_buffers=True)
