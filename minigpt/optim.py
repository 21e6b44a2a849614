"""Optimizers and the learning-rate schedule.

AdamW decays matrices only: biases and norm gains are few and decaying them only hurts. With
optimizer=muon, the hidden 2-D matrices (attention and MLP weights) are trained by Muon, which
orthogonalises each update, and embeddings, the LM head, norms and biases by AdamW (Muon is
meant for hidden layers only).
"""

import math

import torch

from .config import TrainConfig


def build_optimizers(model, train: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizers = []
    if train.optimizer == "muon":
        hidden = [p for n, p in params if p.dim() == 2 and n.startswith("transformer.h.")]
        optimizers.append(torch.optim.Muon(hidden, lr=train.muon_lr, weight_decay=train.weight_decay))
        params = [(n, p) for n, p in params if not (p.dim() == 2 and n.startswith("transformer.h."))]
    groups = [
        {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters instead of several per tensor
    optimizers.append(
        torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=device.type == "cuda")
    )
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def lr_multiplier(step: int, train: TrainConfig) -> float:
    """The schedule as a fraction of the peak rate: linear warmup, then cosine / linear decay to
    min_lr_ratio, or for wsd a constant rate and a linear decay over the last decay_fraction."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    floor = train.min_lr_ratio
    if train.schedule == "wsd":
        decay_start = train.max_steps * (1 - train.decay_fraction)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1.0, train.max_steps - decay_start)
    else:
        progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    progress = min(progress, 1.0)
    if train.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - floor) * progress


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
