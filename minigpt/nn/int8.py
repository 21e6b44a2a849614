"""Weight-only int8 linear layers for generation on a CPU (what `minigpt sample PATH --quantize int8` uses).

A one-token decode step reads every weight of the model once to produce one token, and on a CPU
that reading, not the arithmetic, is what takes the time (the weights outgrow the caches, so they
come from memory every step). Storing each linear layer's weight as int8 with one scale per output
row reads a quarter of float32's bytes:

    w_int8 = round(w / s),   s = max |w| over the row / 127,   y = (x @ w_int8.T) * s

The error is at most half a step (s / 2) per weight, which moves the loss of a trained model by
about a thousandth (`minigpt eval PATH --quantize int8` measures it on your model). Activations,
norms, embeddings and the KV cache stay as they were; the product itself runs in bf16.
"""

import torch
import torch.nn.functional as F
from torch import nn

# PyTorch's CPU int8 kernel reads the input in 16-value vectors with aligned loads: narrower rows crash it
ALIGNMENT = 16
# above this many rows (a long prompt's prefill), dequantizing once and using bf16 matmuls is faster
MAX_KERNEL_ROWS = 32


class Int8Linear(nn.Module):
    """An nn.Linear whose weight is stored in int8 with one bf16 scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps scale > 0
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16, copy=True)  # a fresh, aligned copy
        if rows.shape[0] <= MAX_KERNEL_ROWS:
            y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        else:
            y = F.linear(rows, self.weight_int8.to(torch.bfloat16) * self.scale[:, None])
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)  # a drop-in for the float layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace model's linear layers in place by Int8Linear ones (for a model on the CPU).

    Only plain nn.Linear layers whose input width is a multiple of 16 are replaced; others (LoRA
    layers, odd widths) stay in floating point. Returns model, now for inference only.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.in_features % ALIGNMENT == 0:
                setattr(parent, name, Int8Linear(child))
    return model.requires_grad_(False)
