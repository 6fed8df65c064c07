"""The training engine: the epoch loops, losses, optimizers, the frozen-map cache, DDP and run logging.

`grefel.training` wires these to configs, run folders and checkpoints; `grefel.evaluation` scores with
`predict`.
"""

from grefel.engine.loops import (
           AMP_MODES,
           Amp,
           Predictions,
           TrainingDiverged,
           evaluate,
           metrics_report,
           predict,
           train_one_epoch,
           unwrap,
)

__all__ = ["AMP_MODES", "Amp", "Predictions", "TrainingDiverged", "evaluate", "metrics_report", "predict",
           "train_one_epoch", "unwrap"]
