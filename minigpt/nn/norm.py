"""Normalisation layers: LayerNorm (GPT-2, optional bias) and RMSNorm (LLaMA and most newer models)."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """Normalise each vector to zero mean and unit variance, then scale (and shift, if bias).

    PyTorch's own LayerNorm cannot drop just the bias, which GPT variants without biases want.
    """

    def __init__(self, d_model: int, *, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Divide each vector by its root mean square, then scale: LayerNorm without centring."""

    def __init__(self, d_model: int, *, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(kind: str, d_model: int, *, bias: bool = True, eps: float | None = None) -> nn.Module:
    """Build the norm a config names: 'layernorm' or 'rmsnorm'; eps None keeps the norm's own default.

    RMSNorm has no bias (it does not centre), so bias applies to LayerNorm only.
    """
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")
    options = {} if eps is None else {"eps": eps}
    if kind == "layernorm":
        options["bias"] = bias
    return NORMS[kind](d_model, **options)
