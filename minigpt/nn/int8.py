"""Int8 linear layers for generation on a CPU (what `minigpt sample PATH --quantize int8` uses).

A one-token decode step reads every weight of the model once to produce one token, and on a CPU
that reading, not the arithmetic, is what takes the time (the weights outgrow the caches, so they
come from memory every step). Storing each linear layer's weight as int8 with one scale per output
row reads a quarter of float32's bytes:

    w_int8 = round(w / s),   s = max |w| over the row / 127,   y = (x @ w_int8.T) * s

The error is at most half a step (s / 2) per weight, which moves the loss of a trained model by
a few thousandths (`minigpt eval PATH --quantize int8` measures it on your model; the fast recipe's
1.6538 became 1.6562 with the x86 kernel below and 1.6538 with the bf16 one). Norms, embeddings
and the KV cache stay as they were. Two kernels multiply by these weights:

- x86 (PyTorch's fbgemm kernels, in every x86 build): each call also rounds its input to 7-bit
  integers (one scale per call; 7 bits, since AVX2's 8-bit multiply-add can overflow its 16-bit
  sums with 8) and multiplies in integers, as llama.cpp's q8_0 does with its 8-bit blocks. On our
  AVX2 machine the matmuls of a GPT-2 124M decode step took 16 ms against 34 for the kernel below, and
  a 64-row prefill 75 ms against 1,123 (bf16 has no hardware there and is emulated).
- elsewhere (ARM, builds without them): weights only; the product runs in bf16.

Under `--compile` the x86 kernel is one opaque operation of the compiled step (`minigpt::int8_linear`,
below): the compiler cannot see into fbgemm's packed weights, so it calls out to the kernel and compiles
everything between two such calls. The bf16 kernel is an ordinary PyTorch operation the compiler takes as
it is.
"""

import itertools
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .replace import plain_linear_names, replace_layers

# PyTorch's CPU int8 kernel reads the input in 16-value vectors with aligned loads: narrower rows crash it
ALIGNMENT = 16
# above this many rows (a long prompt's prefill), dequantizing once and using bf16 matmuls is faster
MAX_KERNEL_ROWS = 32
# AVX2's u8 x s8 multiply-add sums pairs into 16 bits: inputs rounded to 7 bits cannot overflow it
REDUCE_RANGE = True


def x86_int8_kernels() -> bool:
    """Whether this PyTorch multiplies int8 matrices with its x86 kernels (fbgemm), the faster path here.

    PyTorch 2.13 deprecates the quantized tensors these kernels take (pytorch issue 184982): a release
    without them gets the bf16 kernel, the same weights and nearly the same numbers."""
    return (
        torch.backends.quantized.engine in ("x86", "fbgemm")
        and hasattr(torch, "_make_per_channel_quantized_tensor")
        and hasattr(torch.ops.quantized, "linear_prepack")
        and hasattr(torch.ops.quantized, "linear_dynamic")
    )


# The layers a compiled step calls by number (minigpt::int8_linear): held weakly, so a model let go is freed.
TRACED_LAYERS: "weakref.WeakValueDictionary[int, Int8Linear]" = weakref.WeakValueDictionary()
_layer_numbers = itertools.count()


# Defined with torch.library's own calls rather than its custom_op decorator: a compiled step calls this
# from C++ for every layer, and the decorator's wrappers cost about 5 microseconds a call more (the 6 x 384
# model's compiled int8 step: 0.90 against 1.05 ms a token).
_operations = torch.library.Library("minigpt", "DEF")
_operations.define("int8_linear(Tensor rows, int layer) -> Tensor")


def traced_int8_linear(rows: torch.Tensor, layer: int) -> torch.Tensor:
    """minigpt::int8_linear: the x86 int8 product of layer number `layer` (TRACED_LAYERS) with rows (n,
    in_features), one operation a compiled step calls: fbgemm's packed weights are no tensors, and
    torch.export takes tensors."""
    return TRACED_LAYERS[layer].x86_product(rows)


def _traced_int8_linear_shape(rows: torch.Tensor, layer: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], TRACED_LAYERS[layer].out_features)


_operations.impl("int8_linear", traced_int8_linear, "CPU")
torch.library.register_fake("minigpt::int8_linear", _traced_int8_linear_shape, lib=_operations)


class Int8Linear(nn.Module):
    """An nn.Linear whose weight is stored in int8 with one scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps scale > 0
        weight_int8 = torch.round(weight / scale[:, None]).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        # the x86 kernels' own layout of weight, scales and bias, in a tuple: torch.export stands a fake in for
        # every TorchScript object a module holds as an attribute, and fbgemm's packed weights have no fake
        self.packed: tuple = ()
        if x86_int8_kernels():
            zero_points = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # the deprecation above, once per layer: the fallback is in place
                warnings.simplefilter("ignore", UserWarning)
                quantized = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), zero_points, 0)
            self.packed = (torch.ops.quantized.linear_prepack(quantized, bias),)
        else:
            self.register_buffer("weight_int8", weight_int8)
            self.register_buffer("scale", scale.to(torch.bfloat16))
            self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            rows = x.reshape(-1, self.in_features).float()
            if torch.compiler.is_compiling():  # traced for a compiled step: one call out, by the layer's number
                number = next(_layer_numbers)
                TRACED_LAYERS[number] = self
                y = torch.ops.minigpt.int8_linear(rows, number)
            else:
                y = self.x86_product(rows)
        else:
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16, copy=True)  # a fresh, aligned copy
            if rows.shape[0] <= MAX_KERNEL_ROWS:
                y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
            else:
                y = F.linear(rows, self.weight_int8.to(torch.bfloat16) * self.scale[:, None])
            if self.bias is not None:
                y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)  # a drop-in for the float layer

    def x86_product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n, in_features) in float32 times the weight, plus the bias, by the x86 kernel."""
        return torch.ops.quantized.linear_dynamic(rows, self.packed[0], REDUCE_RANGE)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer multiplies by, (out, in) in float32: int8 values times their row's scale."""
        if self.packed:
            return torch.ops.quantized.linear_unpack(self.packed[0])[0].dequantize()
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        kernel = "x86 int8" if self.packed else "int8 weights, bf16 product"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace model's linear layers in place by Int8Linear ones (for a model on the CPU).

    Only plain nn.Linear layers whose input width is a multiple of 16 are replaced; others (LoRA
    layers, odd widths) stay in floating point. Returns model, now for inference only.
    """
    names = plain_linear_names(model, lambda linear: linear.in_features % ALIGNMENT == 0)
    replace_layers(model, names, lambda linear, _: Int8Linear(linear))
    return model.requires_grad_(False)
