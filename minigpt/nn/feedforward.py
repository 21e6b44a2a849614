"""The position-wise feed-forward network: the same two-layer MLP applied to every token."""

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate="tanh")


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    return F.relu(h).square()


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """h holds [gate | value] halves: silu(gate) * value."""
    gate, value = h.chunk(2, dim=-1)
    return F.silu(gate) * value


# The activation a name stands for, looked up once when a FeedForward is built.
ACTIVATIONS = {"gelu": gelu_tanh, "gelu_exact": F.gelu, "relu": F.relu, "relu2": relu_squared, "swiglu": swiglu}
GATED = ("swiglu",)  # activations that consume two halves of c_fc's output


class FeedForward(nn.Module):
    """c_proj(act(c_fc(x))), with dropout on the output.

    activation:
      gelu   - GPT-2 (tanh approximation, as GPT-2 was trained with)
      gelu_exact - x * Phi(x) with the exact normal CDF (nanoGPT, BERT); on CPUs several times
               faster than the tanh form, forward and backward
      relu   - the original Transformer: max(0, x W1 + b1) W2 + b2
      relu2  - relu(.)^2, which learns faster in small GPTs (Primer, So et al. 2021)
      swiglu - silu(x Wg) * (x Wv): a gated unit; c_fc produces both halves (Shazeer 2020)
    hidden defaults to 4 * d_model, or two thirds of that for swiglu so the parameter count matches.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int | None = None,
        *,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        gated = activation in GATED
        if hidden is None:
            hidden = _round_up(8 * d_model // 3, 8) if gated else 4 * d_model
        self.activation = ACTIVATIONS[activation]
        self.c_fc = nn.Linear(d_model, 2 * hidden if gated else hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
