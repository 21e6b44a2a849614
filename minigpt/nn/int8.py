"""Int8 linear layers for generation on a CPU (what `minigpt sample PATH --quantize int8` uses).

A one-token decode step reads every weight of the model once to produce one token, and on a CPU
that reading, not the arithmetic, is what takes the time (the weights outgrow the caches, so they
come from memory every step). Storing each linear layer's weight as int8 with one scale per output
row reads a quarter of float32's bytes:

    w_int8 = round(w / s),   s = max |w| over the row / 127,   y = (x @ w_int8.T) * s

The error is at most half a step (s / 2) per weight, which moves the loss of a trained model by
a thousandth or less (`minigpt eval PATH --quantize int8` measures it on your model; a 4 x 128 model
of the fast recipe: 1.58954 in float32, 1.59005 with the x86 kernel below). Norms, embeddings
and the KV cache stay as they were. Two kernels multiply by these weights:

- x86 (Linux): minigpt's own (int8_kernel.cpp, built on first use by int8_native.py). Each call rounds
  its rows to int8 too, one scale per row, and sums 8-bit products as integers, as llama.cpp's q8_0 does:
  one instruction per 32 products with VNNI (AVX-512 VNNI, AVX-VNNI), three on AVX2. It is an operation
  of PyTorch's dispatcher (`minigpt::int8_linear`), so a `--compile`d step calls it from its own C++.
  On an AVX-512 EPYC, one row through GPT-2's layers takes 30-36 microseconds a layer and 0.61 ms for
  the output layer, against 37-38 and 0.77 for PyTorch's fbgemm kernel, which minigpt used before; a
  64-row prefill takes about 2.3x fbgemm's time (README, performance).
- elsewhere (ARM, Windows, no C++ compiler): weights only; the product runs in bf16.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .int8_native import VALUES_PER_VECTOR, native_int8_kernel, pack, unpack
from .replace import plain_linear_names, replace_layers

# both kernels read rows in whole vectors (32 int8 values in minigpt's, 16 bf16 in PyTorch's)
ALIGNMENT = VALUES_PER_VECTOR
# above this many rows (a long prompt's prefill), dequantizing once and using bf16 matmuls is faster
MAX_KERNEL_ROWS = 32


class Int8Linear(nn.Module):
    """An nn.Linear whose weight is stored in int8 with one scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps scale > 0
        weight_int8 = torch.round(weight / scale[:, None]).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.native = native_int8_kernel()
        if self.native:
            self.register_buffer("weight_int8", pack(weight_int8))
            self.register_buffer("scale", scale)
            self.register_buffer("bias", bias)
        else:
            self.register_buffer("weight_int8", weight_int8)
            self.register_buffer("scale", scale.to(torch.bfloat16))
            self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            rows = x.reshape(-1, self.in_features).float()
            y = torch.ops.minigpt.int8_linear(rows, self.weight_int8, self.scale, self.bias)
        else:
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16, copy=True)  # a fresh, aligned copy
            if rows.shape[0] <= MAX_KERNEL_ROWS:
                y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
            else:
                y = F.linear(rows, self.weight_int8.to(torch.bfloat16) * self.scale[:, None])
            if self.bias is not None:
                y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)  # a drop-in for the float layer

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer multiplies by, (out, in) in float32: int8 values times their row's scale."""
        weight_int8 = unpack(self.weight_int8, self.out_features) if self.native else self.weight_int8
        return weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        kernel = "minigpt's int8" if self.native else "int8 weights, bf16 product"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace model's linear layers in place by Int8Linear ones (for a model on the CPU).

    Only plain nn.Linear layers whose input width is a multiple of 32 are replaced; others (LoRA
    layers, odd widths) stay in floating point. Returns model, now for inference only.
    """
    names = plain_linear_names(model, lambda linear: linear.in_features % ALIGNMENT == 0)
    replace_layers(model, names, lambda linear, _: Int8Linear(linear))
    return model.requires_grad_(False)
