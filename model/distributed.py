"""Data-parallel training across processes with torch.distributed (launched by torchrun).

Each process trains on its own share of the batches, and the gradients of
the trainable parameters are averaged across processes after every backward
pass, so all processes keep identical weights. Process 0 evaluates, writes
checkpoints and writes the bundle. Without torchrun (``WORLD_SIZE`` unset or
1) everything runs in the one process and no process group is created.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> DistributedContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        context = cls(rank=dist.get_rank(), world_size=dist.get_world_size())
        logger.info("data-parallel training: process %d of %d", context.rank, context.world_size)
        return context

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= self.world_size

    def agree(self, flag: bool) -> bool:
        """Return process 0's ``flag`` on every process, so all stop at the same step."""
        if not self.enabled:
            return flag
        value = torch.tensor([1 if flag else 0])
        dist.broadcast(value, src=0)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
