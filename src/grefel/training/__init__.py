"""Training runs: the config schema (`config`), the run itself (`run`) and its resumable state (`state`)."""

from grefel.training.config import DataConfig, TrainConfig, load_config
from grefel.training.run import build_model, train

__all__ = ["DataConfig", "TrainConfig", "build_model", "load_config", "train"]
