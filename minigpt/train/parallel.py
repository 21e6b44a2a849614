"""Data parallelism across torchrun's processes: starting them, and what DDP and FSDP runs share.

    rank, world_size, local_rank = init_distributed("auto")    # (0, 1, 0) without torchrun
    loss = mean_over_ranks(loss, world_size)                   # what every rank agrees to log

    train.parallel: ddp    every process keeps all weights, gradients and optimizer state; gradients are
                           averaged after backward. Fastest while the model and AdamW fit on one device.
    train.parallel: fsdp   each process holds 1/N of the weights, gradients and optimizer state, and a
                           block's weights are gathered only while it runs: for models that do not fit
                           (minigpt/train/fsdp.py shards the model and saves and loads its checkpoints).

This module imports nothing beyond torch itself (FSDP's modules take seconds to import: fsdp.py is
imported only by FSDP runs), so it checks for FSDP by duck typing. Every helper is a no-op for a
single process.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def init_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this
    is a single process. NCCL joins the processes on GPUs, gloo on CPUs."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if uses_cuda(device):
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if uses_cuda(device) else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def uses_cuda(device: str) -> bool:
    """Whether a run configured with this device name trains on CUDA GPUs."""
    return device in ("auto", "cuda") and torch.cuda.is_available()


@contextmanager
def no_gradient_sync(model: torch.nn.Module):
    """Accumulate this micro-step's gradients locally: DDP skips its all-reduce, FSDP its reduce-scatter."""
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to max_norm; returns the norm before clipping as a plain tensor
    (under FSDP the norm is computed over every shard, then made whole on each process)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP


def gather_from_ranks(value, world_size: int) -> list:
    """Every rank's value (any picklable object), in rank order: a list of one for a single process."""
    if world_size == 1:
        return [value]
    values = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    """The mean of a one-element tensor over every rank, as a float (on a GPU, a sync)."""
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size
    return value.item()


def any_rank(flag: bool, device: torch.device, world_size: int) -> bool:
    """True on every rank when it is true on at least one."""
    if world_size == 1:
        return flag
    agreed = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return bool(agreed.item())


def max_over_ranks(value: float, device: torch.device, world_size: int) -> float:
    """The largest of every rank's value (the slowest clock, say)."""
    if world_size == 1:
        return value
    largest = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest.item()
