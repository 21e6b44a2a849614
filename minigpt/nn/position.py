"""Positional encodings: how a Transformer knows the order of its tokens.

Attention by itself is blind to order (permute the tokens and the outputs permute with them),
so position must be added to the token vectors or folded into queries and keys:

- LearnedPositionalEmbedding: one trained vector per position, added to the tokens (GPT-2).
- SinusoidalPositionalEncoding: fixed sines and cosines of geometric wavelengths, added to the
  tokens ("Attention Is All You Need", section 3.5).
- RotaryEmbedding: rotates each pair of query/key features by an angle proportional to the
  position, so that q . k depends only on the distance between tokens (RoPE, Su et al. 2021).
"""

import math

import torch
from torch import nn


def _positions(
    table: torch.Tensor, seq_len: int, offset: int | torch.Tensor, positions: torch.Tensor | None
) -> torch.Tensor:
    """Rows of table (max_len, ...) for positions offset .. offset + seq_len - 1: (seq_len, ...).

    With a (B,) tensor of offsets (rows of a ragged KV cache at different positions) or a (B, T) tensor
    of positions (a left-padded batch), every row gets its own: (B, seq_len, ...). Past max_len is an
    error that says so.
    """
    if positions is None and isinstance(offset, torch.Tensor):
        positions = offset[:, None] + torch.arange(seq_len, device=offset.device)
    # not in a compiled decode step, which cannot look at the positions it is given: its caller checks them
    if not torch.compiler.is_compiling():
        last = offset + seq_len - 1 if positions is None else int(positions.max()) if positions.numel() else 0
        if last >= table.shape[0]:
            raise ValueError(
                f"position {last} is beyond max_len={table.shape[0]} of this positional encoding; "
                f"build it with a larger max_len (a GPT's block_size) or feed at most {table.shape[0]} tokens"
            )
    return table[offset : offset + seq_len] if positions is None else table[positions]


class LearnedPositionalEmbedding(nn.Module):
    """A trained (max_len, d_model) table; row t is added to the token at position t."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_len, d_model))

    def forward(
        self, seq_len: int, offset: int | torch.Tensor = 0, *, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (seq_len, d_model) encodings of positions offset .. offset + seq_len - 1, or (B, T, d_model)
        ones for a (B,) tensor of per-row offsets or a (B, T) tensor of positions."""
        return _positions(self.weight, seq_len, offset, positions)


class SinusoidalPositionalEncoding(nn.Module):
    """PE(t, 2i) = sin(t / 10000^(2i/d)), PE(t, 2i+1) = cos(t / 10000^(2i/d)); nothing is learned."""

    def __init__(self, max_len: int, d_model: int, base: float = 10000.0):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        inv_freq = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
        # not persistent: the table is a pure function of the shape, so checkpoints need not carry it
        self.register_buffer("table", table, persistent=False)

    def forward(
        self, seq_len: int, offset: int | torch.Tensor = 0, *, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _positions(self.table, seq_len, offset, positions)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, applied to queries and keys inside attention.

    Feature i of the first half of a head is paired with feature i of the second half, and the pair
    is rotated by angle t * base^(-2i/head_dim) at position t. Rotating q at t and k at s gives a
    dot product that depends only on t - s.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(
        self, x: torch.Tensor, offset: int | torch.Tensor = 0, *, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotate x of shape (B, n_head, T, head_dim) whose first token sits at position `offset` (an int,
        or a (B,) tensor when each row starts elsewhere), or whose tokens sit at a (B, T) tensor's positions."""
        cos = _positions(self.cos, x.shape[-2], offset, positions).to(x.dtype)  # (T, hs/2) or (B, T, hs/2)
        sin = _positions(self.sin, x.shape[-2], offset, positions).to(x.dtype)
        if cos.dim() == 3:  # one set of angles per row, shared by the heads
            cos, sin = cos[:, None], sin[:, None]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
