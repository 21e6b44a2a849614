"""Data parallelism across torchrun's processes: what DDP and FSDP runs share in the training step.

    train.parallel: ddp    every process keeps all weights, gradients and optimizer state; gradients are
                           averaged after backward. Fastest while the model and AdamW fit on one device.
    train.parallel: fsdp   each process holds 1/N of the weights, gradients and optimizer state, and a
                           block's weights are gathered only while it runs: for models that do not fit
                           (minigpt/fsdp.py shards the model and saves and loads its checkpoints).

This module imports nothing beyond torch itself (FSDP's modules take seconds to import: minigpt/fsdp.py is
imported only by FSDP runs), so it checks for FSDP by duck typing.
"""

from contextlib import contextmanager

import torch


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
