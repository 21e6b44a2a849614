"""FSDP2 (train.parallel: fsdp): torch.distributed.fsdp.fully_shard on each block and on the root, so
that each of N processes holds 1/N of the parameters, gradients and optimizer state.

An FSDP checkpoint is a usual checkpoint folder (model.safetensors with the whole model, gathered, so
that sample, eval and export load it as any other) plus shards/, written by torch.distributed.checkpoint:
each process's shard of the weights and the optimizer state, which resuming reads back exactly.
"""

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from ..checkpoint import SHARDS, model_state, save_checkpoint
from ..errors import MinigptError
from ..run import RunRecord

try:  # FSDP2's public home since torch 2.6, newer than minigpt's floor: only FSDP runs need it
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:
    MixedPrecisionPolicy = fully_shard = None
FSDP_TORCH = "2.6"

STAGING = ".shards-"  # shards being written, moved into the checkpoint folder when it is saved


def shard_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Shard the model in place across the default process group: each block is one unit of gathering
    (so only one block is whole at a time), the root holds the rest (embeddings, final norm, head).

    Build the optimizer after this: it must see the sharded parameters. On GPUs under bf16 the gathered
    weights are bf16 and gradients are reduced in fp32; the shards (the master weights) stay fp32.
    """
    if fully_shard is None:
        raise MinigptError(
            f"train.parallel=fsdp needs torch {FSDP_TORCH} or newer (torch.distributed.fsdp.fully_shard); this "
            f"is torch {torch.__version__}: upgrade torch, or use train.parallel=ddp"
        )
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and dtype == torch.bfloat16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def local_numel(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    """Numbers this process holds of parameters and optimizer state (its shards, under FSDP)."""

    def size(tensor: torch.Tensor) -> int:
        return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).numel()

    params = {id(p): size(p) for p in model.parameters()}  # a tied weight counts once
    states = sum(
        size(value)
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    )
    return sum(params.values()) + states


def save_sharded_checkpoint(
    out_dir: Path,
    record: RunRecord,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    state: dict,
    tokenizer,
    *,
    keep: int,
) -> None:
    """Every process calls this: the shards of weights and optimizer state go through
    torch.distributed.checkpoint, the gathered weights into model.safetensors; process 0 then writes
    the checkpoint folder atomically (save_checkpoint) with the shards inside it.

    state is the rest of what resuming needs (gradient scaler, RNG states), without the optimizer.
    """
    staging = Path(out_dir) / "checkpoints" / f"{STAGING}{record.step:07d}"
    if dist.get_rank() == 0:
        for stale in staging.parent.glob(f"{STAGING}*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    model_shards, optimizer_shards = get_state_dict(model, optimizers)
    dcp.save({"model": model_shards, "optimizer": optimizer_shards}, checkpoint_id=staging)
    # collective: every process sends its shards, process 0 receives the whole model on the CPU
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        weights = model_state(model, whole)
        save_checkpoint(out_dir, record, model, state, tokenizer, keep=keep, weights=weights, shards=staging)


def load_sharded_checkpoint(folder: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every process calls this: read its shards of weights and optimizer state from a checkpoint folder."""
    shards = Path(folder) / SHARDS
    if not shards.is_dir():
        raise MinigptError(
            f"checkpoint {folder} has no {SHARDS}/ (it was not written with train.parallel=fsdp); "
            "resume it with the train.parallel it was trained with"
        )
    model_shards, optimizer_shards = get_state_dict(model, optimizers)
    state = {"model": model_shards, "optimizer": optimizer_shards}
    dcp.load(state, checkpoint_id=shards)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
