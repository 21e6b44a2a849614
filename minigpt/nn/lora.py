"""LoRA: a linear layer whose frozen weight W is adapted by a trainable low-rank product B @ A.

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T        A: (rank, in), B: (out, rank)

B starts at zero, so a fresh adapter leaves the layer's output exactly as it was, and only
A and B (rank * (in + out) numbers instead of in * out) need gradients and optimizer state.
`merge()` folds the product into W for inference at the plain layer's cost; `unmerge()` takes
it out again. `adapter_on = False` switches an unmerged adapter off: the layer is its base again
(DPO's reference model, without a second copy of the weights).

LoRALinear is an nn.Linear (same `weight` and `bias`, so state dicts and code that looks for
nn.Linear keep working); `LoRALinear.from_linear(layer, rank)` adapts an existing layer of any model.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(
                f"LoRA rank must be between 1 and min(in_features, out_features) = "
                f"{min(in_features, out_features)}, got {rank}"
            )
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        self.adapter_on = True
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A like a fresh nn.Linear's weight, B zero: the adapter starts as an exact no-op."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0) -> "LoRALinear":
        """An adapter around `layer`'s own weight and bias tensors (shared, not copied)."""
        w = layer.weight
        lora = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            device=w.device,
            dtype=w.dtype,
        )
        lora.weight = layer.weight
        lora.bias = layer.bias
        return lora

    def delta_weight(self) -> torch.Tensor:
        """The (out, in) matrix the adapter adds to the weight."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged or not self.adapter_on:
            return out
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the weight (inference at the plain layer's cost)."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged adapter back out of the weight (up to rounding)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the adapter merged in (the weight tensor is shared)."""
        self.merge()
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight, layer.bias = self.weight, self.bias
        return layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"
