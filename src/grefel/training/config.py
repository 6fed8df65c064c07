"""The training config: the `grefel train` YAML presets and `--set` overrides, checked into dataclasses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grefel.config import apply_overrides, from_dict
from grefel.data.source import LABEL_MODES, DataSource
from grefel.data.transforms import AugmentConfig
from grefel.devices import DEVICE_CHOICES
from grefel.engine.loops import AMP_MODES
from grefel.engine.losses import LossConfig
from grefel.engine.optim import OptimConfig
from grefel.errors import ConfigError
from grefel.models import model_config
from grefel.models.model_file import SERVE_CHOICES
from grefel.training.distill import DISTILL_MODES

SELECT_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
# Keys a resumed run may change: they alter no computed number, or (epochs) extend the run on purpose.
RESUMABLE_CHANGES = {"epochs", "num_workers", "eval_batch_size", "compile", "wandb", "wandb_project", "log_every", "threads"}


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
    distill_from: tuple[str, ...] = ()   # model files whose averaged served probabilities on
                                         # the training images are blended into the targets (grefel.training.distill)
    distill_weight: float = 0.5          # target = (1 - w) * label + w * teachers
    distill_mode: str = "static"         # static: teachers on the plain images, once | consistent: on each
                                         # augmented batch the student sees (costs their forward every step)
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
    compile: bool = False                # torch.compile the training and validation forward (see the README)
    frozen_cache: bool = False           # compute the frozen parts' maps once and warp them per step
    threads: int | None = None           # torch intra-op threads (default: torch's choice)
    wandb: str = "auto"                  # auto | online | offline | off
    wandb_project: str = "grefel"
    log_every: int = 50

    def validate(self) -> None:
        model_config(self.model, **self.model_args)
        checks = [("amp", self.amp, AMP_MODES), ("device", self.device, DEVICE_CHOICES),
                  ("serve", self.serve, SERVE_CHOICES), ("select_metric", self.select_metric, SELECT_METRICS),
                  ("wandb", self.wandb, ("auto", "online", "offline", "off")),
                  ("data.label_mode", self.data.label_mode, LABEL_MODES),
                  ("distill_mode", self.distill_mode, DISTILL_MODES),
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
    try:
        cfg = from_dict(TrainConfig, data, where="config")
        cfg.validate()
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}{' with --set overrides' if overrides else ''}: {exc}") from None
    return cfg
