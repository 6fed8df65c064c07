"""Learning-rate schedules and their state across a resume."""

from __future__ import annotations

import math

import pytest
import torch

from grefel.engine.optim import OptimConfig, build_optimizer, build_scheduler, load_scheduler_state

STEPS_PER_EPOCH = 10


def lrs(scheduler, optimizer, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def fresh(epochs: int, schedule: str = "cosine"):
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=1.0, schedule=schedule, warmup_epochs=1.0, min_lr_ratio=0.0)
    optimizer = build_optimizer(model, cfg)
    return optimizer, build_scheduler(optimizer, cfg, STEPS_PER_EPOCH, epochs)


def test_cosine_warms_up_linearly_then_decays_to_the_floor():
    optimizer, scheduler = fresh(epochs=3)
    seen = lrs(scheduler, optimizer, 3 * STEPS_PER_EPOCH)
    assert seen[:STEPS_PER_EPOCH] == pytest.approx([(i + 1) / STEPS_PER_EPOCH for i in range(STEPS_PER_EPOCH)])
    after = seen[STEPS_PER_EPOCH:]
    assert after[0] == pytest.approx(1.0) and all(a > b for a, b in zip(after, after[1:]))
    assert after[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))


def test_resume_with_more_epochs_follows_the_longer_schedule():
    optimizer, scheduler = fresh(epochs=2)
    lrs(scheduler, optimizer, 2 * STEPS_PER_EPOCH)
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()

    optimizer, scheduler = fresh(epochs=4)             # the resumed run asks for 4 epochs
    optimizer.load_state_dict(saved_optimizer)
    load_scheduler_state(scheduler, saved_scheduler)
    resumed = lrs(scheduler, optimizer, 2 * STEPS_PER_EPOCH)

    optimizer, scheduler = fresh(epochs=4)             # what an uninterrupted 4-epoch run does
    expected = lrs(scheduler, optimizer, 4 * STEPS_PER_EPOCH)[2 * STEPS_PER_EPOCH:]
    assert resumed[1:] == pytest.approx(expected[1:])  # the first lr is the one stored with the optimizer
    assert resumed[1] > 0.5                            # the 2-epoch schedule was at its floor here


class TwoBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image_backbone = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 2)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_image_lr_scale_applies_to_the_image_branch_only_through_the_schedule(scale):
    model = TwoBranches()
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1.0, min_lr_ratio=0.0, image_lr_scale=scale)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, STEPS_PER_EPOCH, 3)
    image = {id(p) for p in model.image_backbone.parameters()}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())   # every parameter, once
    for _ in range(2 * STEPS_PER_EPOCH):
        base = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            in_image = {id(p) in image for p in group["params"]}
            assert len(in_image) == 1 or scale == 1.0                     # scaled groups hold one branch
            assert group["lr"] == pytest.approx(base * (scale if in_image == {True} else 1.0))
        optimizer.step()
        scheduler.step()


def test_image_lr_scale_must_be_positive():
    from grefel.errors import ConfigError
    with pytest.raises(ConfigError, match="optim.image_lr_scale"):
        OptimConfig(image_lr_scale=0.0)
