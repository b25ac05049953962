"""Distributed data parallel under ``torchrun``: initialised only when ``WORLD_SIZE > 1``.

One process per GPU; rank 0 alone logs, draws progress bars and writes checkpoints. Without
torchrun (or with one process) everything here is a no-op and the code runs single-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment; join the process group only when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # Rank 0 alone runs the pruning search and the held-out evaluations while the other ranks
        # wait at a barrier: minutes, longer than the collectives' default timeout allows on NCCL.
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(hours=2))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(model: nn.Module, info: DistInfo, sync_bn: bool = True) -> nn.Module:
    """Move to the device; under DDP wrap it (BatchNorm synced across GPUs with ``sync_bn``;
    SyncBatchNorm has no CPU kernel, so CPU/gloo runs keep per-process statistics)."""
    model = model.to(info.device)
    if not info.distributed:
        return model
    if info.device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index])


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP wrapper (what checkpoints store)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def average_gradients(module: nn.Module, info: DistInfo) -> None:
    """Under DDP, average ``module``'s gradients over ranks as DDP does the model's: for trainable
    parameters outside the wrapped model (a loss's learnable weights)."""
    if not info.distributed:
        return
    for p in module.parameters():
        p.register_hook(lambda g: _all_reduce_mean(g, info.world_size))


def _all_reduce_mean(grad: torch.Tensor, world_size: int) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / world_size


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Under DDP, give every rank rank 0's buffers (BatchNorm statistics): DDP sends them at the start
    of each forward, so after the last one each rank holds statistics of its own last batch."""
    if not info.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def mean_across_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average logged scalars over ranks so rank 0 logs the global value."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
