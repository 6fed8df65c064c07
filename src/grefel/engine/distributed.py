"""torchrun / DistributedDataParallel support: process group, samplers, reductions.

`grefel train` under `torchrun --nproc_per_node N -m grefel train ...` reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment; without them everything
here degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class EpochSampler(Sampler[int]):
    """Shuffled (or class-balanced) indices that depend only on (seed, epoch), sharded by rank.

    Every rank draws the same global order and takes every world_size-th index,
    so a resumed run and a run on another number of processes see the same
    samples per global batch. The order is padded by wrapping so each rank gets
    the same count.
    """

    def __init__(self, num_samples: int, seed: int, info: DistInfo = DistInfo(),
                 weights: torch.Tensor | None = None):
        self.num_samples, self.seed, self.info, self.weights = num_samples, seed, info, weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return torch.randperm(self.num_samples, generator=g)

    def __len__(self) -> int:
        return -(-self.num_samples // self.info.world_size)

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        padded = torch.cat([order, order[: len(self) * self.info.world_size - len(order)]])
        return iter(padded[self.info.rank::self.info.world_size].tolist())


class ShardSampler(Sampler[int]):
    """Evaluation: rank r reads indices r, r+W, ... with no padding, so the gathered
    predictions cover the dataset exactly once."""

    def __init__(self, num_samples: int, info: DistInfo = DistInfo()):
        self.indices = list(range(info.rank, num_samples, info.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's object, in rank order (a one-element list without torchrun)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
