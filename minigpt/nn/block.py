"""The Transformer block: attention and a feed-forward network, each in a pre-norm residual branch.

    x = x + SelfAttention(norm(x))            (causal in a decoder, bidirectional in an encoder)
    x = x + CrossAttention(norm(x), context)  (only with cross_attention=True: encoder-decoder)
    x = x + FeedForward(norm(x))

Pre-norm (GPT-2's arrangement) keeps the residual path an identity, which trains deep stacks
without warmup tricks; the original Transformer normalised after each addition instead.
"""

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention
from .feedforward import FeedForward
from .norm import make_norm
from .position import RotaryEmbedding


class TransformerBlock(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        cross_attention: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        qkv_bias: bool | None = None,
        norm: str = "layernorm",
        mlp: str = "gelu",
        ff_hidden: int | None = None,
        qk_norm: bool = False,
        qk_norm_affine: bool = False,
        norm_eps: float | None = None,
        head_dim: int | None = None,
    ):
        super().__init__()
        heads = dict(
            n_kv_head=n_kv_head,
            head_dim=head_dim,
            dropout=dropout,
            bias=bias,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            qk_norm_affine=qk_norm_affine,
            **({} if norm_eps is None else dict(norm_eps=norm_eps)),
        )
        self.ln_1 = make_norm(norm, d_model, bias=bias, eps=norm_eps)
        self.attn = MultiHeadAttention(d_model, n_head, **heads)
        if cross_attention:
            self.ln_cross = make_norm(norm, d_model, bias=bias, eps=norm_eps)
            self.cross_attn = MultiHeadAttention(d_model, n_head, **heads)
        else:
            self.cross_attn = None
        self.ln_2 = make_norm(norm, d_model, bias=bias, eps=norm_eps)
        self.mlp = FeedForward(d_model, ff_hidden, activation=mlp, dropout=dropout, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        rope: RotaryEmbedding | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ):
        """x: (B, T, C). mask restricts self-attention, context_mask (B, 1, 1, T_ctx) cross-attention.

        Returns x, or (x, self-attention weights (B, n_head, T, T)) when need_weights.
        """
        if (context is not None) != (self.cross_attn is not None):
            raise ValueError("pass a context exactly when the block was built with cross_attention=True")
        attended = self.attn(
            self.ln_1(x),
            causal=causal,
            mask=mask,
            need_weights=need_weights,
            rope=rope,
            positions=positions,
            cache=cache,
        )
        if need_weights:
            attended, weights = attended
        x = x + attended
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), context, mask=context_mask)
        x = x + self.mlp(self.ln_2(x))
        return (x, weights) if need_weights else x
