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

    model = decode_layout(model)   # every plain nn.Linear becomes a DecodeLinear, in place
"""

import math

import torch
from torch import nn

# Up to this many rows a product is split across threads; above it the BLAS keeps every core busy itself
# and the split's partial results (k x rows x out) would only cost memory. Measured: split wins to 32 rows.
SPLIT_ROWS = 32


class DecodeLinear(nn.Module):
    """An nn.Linear whose weight is stored transposed, (in_features, out_features), for one-row products."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The weight as nn.Linear has it, (out, in): a view, for code that slices or inspects it."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        splits = math.gcd(self.in_features, torch.get_num_threads())
        if splits > 1 and rows.shape[0] <= SPLIT_ROWS:
            y = self._split_product(rows, splits)
        else:
            y = rows @ self.weight_t if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)

    def _split_product(self, rows: torch.Tensor, splits: int) -> torch.Tensor:
        """rows @ weight_t (+ bias) as `splits` products over slices of the input features, one per thread."""
        width = self.in_features // splits
        row_parts = rows.view(-1, splits, width).transpose(0, 1)  # (splits, rows, width)
        weight_parts = self.weight_t.view(splits, width, self.out_features)  # a view: no copy
        y = torch.bmm(row_parts, weight_parts).sum(0)
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def decode_layout(model: nn.Module) -> nn.Module:
    """Replace model's plain nn.Linear layers in place by DecodeLinear ones; returns model, for inference.

    A weight the output layer shares with the token embedding (tied) gets its own transposed copy: one
    more vocabulary x width matrix in memory, for the layer a decode step reads most of."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, DecodeLinear(child))
    return model.requires_grad_(False)
