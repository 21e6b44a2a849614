"""Linear layers laid out for decoding one token at a time on a CPU (sample, chat and serve in float32).

nn.Linear keeps its weight as (out, in) and computes x @ W.T. With one row of x, the CPU's BLAS reads that
transposed weight about half as fast as the same weight stored (in, out), read in memory order: on our
AVX2 machine a 384 x 1536 product of one row took 275 microseconds the first way and 123 the second. A
decode step reads every weight once for a single row, so this layout sets its speed; a prefill of many
rows costs the same either way. The layer is for inference only (its weight is a buffer, not trained).

A product of a few rows is also where the CPU's BLAS leaves cores idle: it runs a one-row product on one
thread. So with more than one torch thread, a few rows are multiplied split by input features: thread
i multiplies features i*n/k .. (i+1)*n/k by the matching rows of the weight (one batched product, which
torch spreads over its threads), and the k partial results add up. On our 2-core AVX2 machine the
weights of a GPT-2 124M decode step took 26 ms one way and 19 ms the other (README, performance).

decode_layout puts every weight of the model in one buffer, in the order a step reads them, on 2 MiB pages
where Linux offers them: the CPU streams one region with 512 times fewer page-table entries to walk. A
124M decode step took 6% less time so (median of 12 interleaved runs, 2 threads, AVX2 EPYC).

    model = decode_layout(model)   # every plain nn.Linear becomes a DecodeLinear, in place

Inside a compiled step (sample and chat --compile) none of this applies: the weights are frozen into the
step, and PyTorch's compiler packs them and writes the one-row products itself (infer/compiled_step.py).
"""

import ctypes
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .replace import plain_linear_names, replace_layers

# Up to this many rows a product is split across threads; above it the BLAS keeps every core busy itself
# and the split's partial results (k x rows x out) would only cost memory. Measured: split wins to 32 rows.
SPLIT_ROWS = 32
HUGE_PAGE = 2 * 2**20  # bytes in an x86 huge page
MADV_HUGEPAGE = 14  # madvise's "back this region with huge pages", from Linux's <sys/mman.h>


class DecodeLinear(nn.Module):
    """An nn.Linear whose weight is stored transposed, (in_features, out_features), for one-row products."""

    def __init__(self, linear: nn.Linear, weight_t: torch.Tensor | None = None):
        """weight_t: where to store the transposed weight (an (in, out) view of a larger buffer), or None for a
        tensor of its own."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if weight_t is None:
            weight_t = torch.empty_like(linear.weight.t(), memory_format=torch.contiguous_format)
        self.register_buffer("weight_t", weight_t.copy_(linear.weight.detach().t()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The weight as nn.Linear has it, (out, in): a view, for code that slices or inspects it."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():
            # compiled (Engine's compile_decode, weights frozen), the plain (out, in) product is what Inductor
            # packs and spreads over threads itself. The copy is made once, while compiling: frozen views of
            # the one buffer gave wrong tokens (torch 2.13; tests/test_compiled_decode.py)
            y = F.linear(rows, self.weight_t.t().contiguous(), self.bias)
        elif (splits := math.gcd(self.in_features, torch.get_num_threads())) > 1 and rows.shape[0] <= SPLIT_ROWS:
            y = split_product(rows, self.weight_t, self.bias, splits)
        else:
            y = rows @ self.weight_t if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def split_product(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, splits: int) -> torch.Tensor:
    """rows @ weight_t (+ bias) as `splits` products over slices of the input features, one per thread."""
    width = weight_t.shape[0] // splits
    row_parts = rows.view(-1, splits, width).transpose(0, 1)  # (splits, rows, width)
    weight_parts = weight_t.view(splits, width, weight_t.shape[1])  # a view: no copy
    y = torch.bmm(row_parts, weight_parts).sum(0)
    return y if bias is None else y.add_(bias)


def decode_layout(model: nn.Module) -> nn.Module:
    """Replace model's plain nn.Linear layers in place by DecodeLinear ones; returns model, for inference.
    Their weights share one buffer, in the order of model.named_modules() (for a GPT, the order a step reads).

    A weight the output layer shares with the token embedding (tied) gets its own transposed copy: one
    more vocabulary x width matrix in memory, for the layer a decode step reads most of. Each layer lets go
    of its old weight as it moves into the buffer (replace.py), and the buffer's pages are only taken up
    as they are written: the model is never in memory twice."""
    names = plain_linear_names(model)
    places = one_buffer([model.get_submodule(name).weight.t() for name in names])
    replace_layers(model, names, lambda linear, i: DecodeLinear(linear, places[i]))
    return model.requires_grad_(False)


def one_buffer(tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Contiguous views, shaped like tensors, of one page-aligned CPU buffer, one after another; Nones where
    the tensors are not all of one dtype on the CPU (each then keeps a buffer of its own)."""
    if not tensors or any(t.device.type != "cpu" or t.dtype != tensors[0].dtype for t in tensors):
        return [None] * len(tensors)
    buffer = page_aligned_empty(sum(t.numel() for t in tensors), tensors[0].dtype)
    views, start = [], 0
    for t in tensors:
        views.append(buffer[start : start + t.numel()].view(t.shape))
        start += t.numel()
    return views


def page_aligned_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 1-D CPU tensor that starts on a huge-page boundary, on huge pages where Linux offers
    them (transparent huge pages in "always" or "madvise" mode). The advice must come before anything is
    written, and is only advice: where it is refused the memory works as any other."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    spare = torch.empty(numel + HUGE_PAGE // itemsize, dtype=dtype)  # room to slide to the next boundary
    start = (-spare.data_ptr()) % HUGE_PAGE // itemsize
    buffer = spare[start : start + numel]
    madvise = getattr(ctypes.CDLL(None), "madvise", None) if sys.platform == "linux" else None
    if madvise is not None:
        madvise(ctypes.c_void_p(buffer.data_ptr()), ctypes.c_size_t(numel * itemsize), MADV_HUGEPAGE)
    return buffer
