"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

One scalar T divides the logits. It changes confidences but never the argmax,
so accuracy is untouched. Fit T on held-out (validation) logits: on training
data the network is over-confident by construction and T would be too small.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from grefel.errors import DataError

# The NLL can keep falling without end: every sample already right (T -> 0) or
# logits carrying no label signal (T -> inf). The fit stops at these bounds
# instead of returning 0 or inf.
T_MIN, T_MAX = 1e-2, 1e2
# Soft targets are vote proportions or softmax outputs, possibly bfloat16.
_ROW_SUM_ATOL = 1e-2


def _logits(logits: Any) -> torch.Tensor:
    z = torch.as_tensor(logits).detach().cpu()
    if z.ndim != 2 or z.shape[0] == 0 or not z.is_floating_point():
        raise DataError(f"logits: expected a non-empty floating (N, C) tensor, "
                        f"got {z.dtype} of shape {tuple(z.shape)}")
    bad = torch.nonzero(~torch.isfinite(z).all(dim=1))
    if len(bad):
        raise DataError(f"logits: row {int(bad[0])} contains NaN or inf")
    return z.double()


def _targets(labels: Any, num_rows: int, num_classes: int) -> torch.Tensor:
    """(N,) int64 class indices, or (N, C) float64 target distributions."""
    y = torch.as_tensor(labels).detach().cpu()
    if y.shape[0:1] != (num_rows,):
        raise DataError(f"labels: expected {num_rows} rows to match the logits, got shape {tuple(y.shape)}")
    if y.ndim == 1:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"labels: expected integer class indices, got {y.dtype}")
        bad = torch.nonzero((y < 0) | (y >= num_classes))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"labels: class index {int(y[i])} at position {i} is outside 0..{num_classes - 1}")
        return y.long()
    if y.ndim == 2 and y.shape[1] == num_classes and y.is_floating_point():
        y = y.double()
        bad = torch.nonzero(~torch.isfinite(y).all(dim=1) | (y < 0).any(dim=1)
                            | ((y.sum(dim=1) - 1).abs() > _ROW_SUM_ATOL))
        if len(bad):
            raise DataError(f"labels: soft target row {int(bad[0])} is not a probability distribution")
        return y
    raise DataError(f"labels: expected ({num_rows},) class indices or ({num_rows}, {num_classes}) "
                    f"probabilities, got {y.dtype} of shape {tuple(y.shape)}")


def _nll(z: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(z / temperature, dim=1)  # (N, C)
    if target.ndim == 1:
        return F.nll_loss(log_p, target)
    return -(target * log_p).sum(dim=1).mean()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 that minimises the mean NLL of softmax(logits / T) against `labels`.

    `labels` are (N,) class indices or (N, C) target distributions (soft NLL,
    e.g. FERPlus vote proportions). Optimises log T with LBFGS in float64;
    the result lies in [T_MIN, T_MAX].
    """
    z = _logits(logits)
    target = _targets(labels, z.shape[0], z.shape[1])
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bounds = (math.log(T_MIN), math.log(T_MAX))
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # Past a bound the clamp makes the loss flat, so LBFGS stops there.
        loss = _nll(z, target, log_t.clamp(*bounds).exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    # exp(log(T_MAX)) is 100.00000000000004: clamp after exp so a bound is returned exactly.
    return min(max(float(log_t.detach().exp()), T_MIN), T_MAX)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last dimension, in the logits' dtype."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be a finite number > 0, got {temperature}")
    z = torch.as_tensor(logits)
    if not z.is_floating_point():
        raise DataError(f"logits: expected a floating tensor, got {z.dtype}")
    return torch.softmax(z / temperature, dim=-1)
