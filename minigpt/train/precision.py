"""dtype=auto on a CPU with bf16 units: the faster of float32 and bf16 for this model, by timing it.

    dtype = faster_cpu_dtype(model, batch_size=12, device=torch.device("cpu"), world_size=1)

bf16 pays for wide matmuls but can lose on narrow ones, so which is faster depends on the model's
width and the CPU (device.time_dtypes measures it). GPUs and explicit dtypes are never timed.
"""

import torch
import torch.distributed as dist

from ..device import autocast, time_dtypes

DTYPE_TIMING_TOKENS = 2048  # tokens a timed pass runs on: a wide model's whole batch would take a minute


def faster_cpu_dtype(model, batch_size: int, device: torch.device, world_size: int = 1) -> torch.dtype:
    """Time a forward and backward pass of the model on rows of the run's shape (batch_size rows of
    block_size, at most DTYPE_TIMING_TOKENS tokens) in float32 and in bf16; the faster, as every
    process agrees. Nothing of the run changes: the batch is made up, gradients and RNG are put back."""
    block, vocab = model.config.block_size, model.config.vocab_size
    rows = max(1, min(batch_size, DTYPE_TIMING_TOKENS // block))
    x = torch.randint(0, vocab, (rows, block), generator=torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()

    def forward_backward(dtype: torch.dtype) -> None:
        with autocast(device, dtype):
            _, loss = model(x, x)
        loss.backward()

    seconds = time_dtypes(forward_backward, (torch.float32, torch.bfloat16))
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    times = torch.tensor([seconds[torch.float32], seconds[torch.bfloat16]])
    if world_size > 1:
        dist.all_reduce(times)
    return torch.float32 if times[0] <= times[1] else torch.bfloat16
