"""The GPT: token embedding -> positional encoding -> n_layer causal Transformer blocks -> norm -> LM head.

With the default config this is GPT-2, parameter names included (minigpt.formats.hf reads and writes
Hugging Face folders; the model itself knows no file format). The other options are the modern
small-GPT recipe: rotary positions, RMSNorm, ReLU^2 / SwiGLU, QK-norm, grouped-query
attention, untied embeddings, zero-initialised projections and logit soft-capping.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MinigptError
from .infer.engine import Engine
from .infer.sampling import PYTHON_NAMES, SamplingParams, check_sampling
from .nn import (
    ACTIVATIONS,
    NORMS,
    KVCache,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    key_padding_mask,
    make_norm,
)

# Positions added to the token embeddings, by name; "rope" instead rotates queries and keys inside attention.
ADDED_POSITIONS = {"learned": LearnedPositionalEmbedding, "sinusoidal": SinusoidalPositionalEncoding}
POS_ENCODINGS = (*ADDED_POSITIONS, "rope")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the longest context the model sees
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # fewer key/value heads than n_head: grouped-query attention
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms
    pos_encoding: str = "learned"  # learned | sinusoidal | rope
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | gelu_exact | relu | relu2 | swiglu
    tie_weights: bool = True  # the LM head reuses the token embedding matrix
    qk_norm: bool = False
    zero_init_proj: bool = False  # start each residual branch at zero, so every block begins as identity
    logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    rope_base: float = 10000.0
    norm_eps: float | None = None  # epsilon of every norm; None: 1e-5 for layernorm, 1e-6 for rmsnorm
    mlp_hidden: int | None = None  # feed-forward width; None: 4 n_embd (two thirds of that for swiglu)
    head_dim: int | None = None  # features per attention head; None: n_embd / n_head
    qkv_bias: bool | None = None  # biases on the query/key/value projection; None: as `bias` says
    qk_norm_affine: bool = False  # a learned gain in the QK-norm (Qwen3)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def estimated_params(self) -> int:
        """The parameter count of GPT(self), from the shapes alone (biases and norm gains included, so
        within a fraction of a percent): what a model costs is known before building it."""
        c, hd = self.n_embd, self.head_size
        heads = self.n_head + 2 * (self.n_kv_head or self.n_head)
        hidden = self.mlp_hidden or (4 * c if self.mlp != "swiglu" else 8 * c // 3)
        attention = c * heads * hd + self.n_head * hd * c
        mlp = (3 if self.mlp == "swiglu" else 2) * c * hidden
        per_layer = attention + mlp + 4 * c + (heads * hd + c + hidden + c if self.bias else 0)
        tables = self.vocab_size * c * (1 if self.tie_weights else 2)
        positions = self.block_size * c if self.pos_encoding == "learned" else 0
        return self.n_layer * per_layer + tables + positions + 2 * c

    def validate(self) -> None:
        """Raise MinigptError for a combination that cannot build a model."""
        checks = [
            (self.vocab_size >= 1, f"vocab_size must be at least 1, got {self.vocab_size}"),
            (self.block_size >= 1, f"block_size must be at least 1, got {self.block_size}"),
            (self.n_layer >= 1, f"n_layer must be at least 1, got {self.n_layer}"),
            (
                self.n_head >= 1 and self.n_embd >= 1,
                f"n_head and n_embd must be positive, got {self.n_head}, {self.n_embd}",
            ),
            (
                self.head_dim is not None or self.n_embd % max(self.n_head, 1) == 0,
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / max(self.n_head, 1)))} or set head_dim",
            ),
            (self.head_dim is None or self.head_dim >= 1, f"head_dim must be at least 1 or null, got {self.head_dim}"),
            (
                self.n_kv_head is None or (self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0),
                f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}), or be null for n_head",
            ),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (
                self.pos_encoding in POS_ENCODINGS,
                f"pos_encoding {self.pos_encoding!r} is not one of {', '.join(POS_ENCODINGS)}",
            ),
            (self.norm in NORMS, f"norm {self.norm!r} is not one of {', '.join(NORMS)}"),
            (self.mlp in ACTIVATIONS, f"mlp {self.mlp!r} is not one of {', '.join(ACTIVATIONS)}"),
            (
                self.pos_encoding != "rope" or (self.head_dim or self.n_embd // max(self.n_head, 1)) % 2 == 0,
                f"rope needs an even head size, got {self.head_dim or self.n_embd / max(self.n_head, 1):g}",
            ),
            (self.norm_eps is None or self.norm_eps > 0, f"norm_eps must be positive or null, got {self.norm_eps}"),
            (
                self.pos_encoding != "rope" or (math.isfinite(self.rope_base) and self.rope_base > 1),
                f"rope_base must be a number above 1 (10000 is usual), got {self.rope_base}",
            ),
            (
                self.mlp_hidden is None or self.mlp_hidden >= 1,
                f"mlp_hidden must be at least 1 or null, got {self.mlp_hidden}",
            ),
            (
                self.logit_softcap is None or self.logit_softcap > 0,
                f"logit_softcap must be positive or null, got {self.logit_softcap}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise MinigptError(message)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),
                drop=nn.Dropout(c.dropout),
                h=nn.ModuleList(
                    TransformerBlock(
                        c.n_embd,
                        c.n_head,
                        n_kv_head=c.n_kv_head,
                        dropout=c.dropout,
                        bias=c.bias,
                        norm=c.norm,
                        mlp=c.mlp,
                        qkv_bias=c.qkv_bias,
                        qk_norm=c.qk_norm,
                        qk_norm_affine=c.qk_norm_affine,
                        head_dim=c.head_dim,
                        ff_hidden=c.mlp_hidden,
                        norm_eps=c.norm_eps,
                    )
                    for _ in range(c.n_layer)
                ),
                ln_f=make_norm(c.norm, c.n_embd, bias=c.bias, eps=c.norm_eps),
            )
        )
        if c.pos_encoding in ADDED_POSITIONS:
            self.transformer.wpe = ADDED_POSITIONS[c.pos_encoding](c.block_size, c.n_embd)
        self.rope = RotaryEmbedding(c.head_size, c.block_size, c.rope_base) if c.pos_encoding == "rope" else None
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's initialisation, the one place weights are set.

        Every Linear and Embedding weight ~ N(0, 0.02), biases 0, norms 1. The projections that write
        into the residual stream (attn.c_proj, mlp.c_proj) get std 0.02 / sqrt(2 n_layer), since
        2 n_layer of them add up along the residual path; with zero_init_proj they start at 0.
        The output layer is that of a uniform prediction, so the loss starts near ln(vocab_size).
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("c_proj"):
                    if self.config.zero_init_proj:
                        nn.init.zeros_(module.weight)
                    else:
                        nn.init.normal_(module.weight, mean=0.0, std=residual_std)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Embedding, LearnedPositionalEmbedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif hasattr(module, "weight") and isinstance(module.weight, nn.Parameter) and module.weight.dim() == 1:
                nn.init.ones_(module.weight)  # LayerNorm / RMSNorm gains
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if not self.config.tie_weights and self.config.zero_init_proj:
            nn.init.zeros_(self.lm_head.weight)

    # ---- forward -----------------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: list[KVCache] | None = None,
        attention_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
        only_last: bool = False,
    ):
        """idx: (B, T) token ids. Returns (logits (B, T, vocab), loss or None).

        loss is the mean cross-entropy over targets, ignoring positions whose target is -100.
        cache (make_cache's list of per-layer KV caches) holds the keys and values of the text so far:
        idx continues that text, and the cache takes idx's keys and values too (generation).
        only_last gives the logits of the last position alone, (B, 1, vocab): what choosing the next
        token needs, without a (T, vocab) matrix for a long prompt.
        attention_mask (B, T) marks real tokens True and padding False, on either side: padding is never
        attended to and takes up no position, so a row's real tokens get what they would get unpadded
        (give padded positions the target -100). return_hidden returns instead the final hidden states
        (B, T, n_embd), after the last norm and before the LM head, for heads of your own.
        """
        x = self._hidden_states(idx, cache, attention_mask=attention_mask)
        if return_hidden:
            if targets is not None:
                raise ValueError("return_hidden gives hidden states, not a loss: pass targets=None")
            return x
        logits = self._logits(x[:, -1:] if only_last else x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def _hidden_states(self, idx, caches=None, attention_mask=None, weights_of: range | None = None):
        """Run embeddings and blocks; with caches, idx continues the text the caches hold.

        weights_of: return instead the self-attention weights of these layers, running no block above them."""
        B, T = idx.shape
        offset = caches[0].offset if caches else 0  # an int, or per-row positions for a ragged cache
        longest = (caches[0].length if caches else 0) + T
        if longest > self.config.block_size:
            raise ValueError(f"sequence of {longest} tokens is longer than block_size {self.config.block_size}")
        mask = positions = None
        if attention_mask is not None:
            if attention_mask.shape != idx.shape:
                raise ValueError(f"attention_mask must have idx's shape {tuple(idx.shape)}, got {attention_mask.shape}")
            valid = attention_mask.bool()
            mask = key_padding_mask(valid)  # (B, 1, 1, T); the blocks add the causal part
            positions = (valid.cumsum(dim=1) - 1).clamp(min=0)  # each real token's index among its row's real tokens
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(T, offset, positions=positions)
        x = self.transformer.drop(x)
        all_weights = []
        for i, block in enumerate(self.transformer.h):
            cache = caches[i] if caches else None
            if weights_of is None or i not in weights_of:
                x = block(x, causal=True, mask=mask, rope=self.rope, positions=positions, cache=cache)
                continue
            x, weights = block(x, causal=True, mask=mask, rope=self.rope, positions=positions, need_weights=True)
            all_weights.append(weights)
            if i == weights_of[-1]:
                return all_weights
        return self.transformer.ln_f(x)

    def _logits(self, x):
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, layer: int | None = None) -> list[torch.Tensor]:
        """Self-attention weights for idx (B, T): a list of (B, n_head, T, T), one per layer, or with layer
        (negative counts from the top) that layer's alone, the blocks above it not run."""
        n = self.config.n_layer
        return self._hidden_states(idx, weights_of=range(n) if layer is None else range(layer % n, layer % n + 1))

    # ---- generation --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        It runs on the generation engine (minigpt/infer/engine.py), as every command does. temperature
        0 is greedy. When a row outgrows block_size, it goes on from its newest block_size // 2 tokens.
        """
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, on_full="slide", ignore_eos=True)
        check_sampling(params, PYTHON_NAMES)
        engine = Engine(self, max_batch=idx.shape[0], device=idx.device)
        rows = [engine.submit(row, params, generator=generator) for row in idx.tolist()]
        for _ in engine.drive(rows):
            pass
        failed = [row.error for row in rows if row.finish_reason == "error"]
        if failed:
            raise RuntimeError(f"generation failed: {failed[0]}")
        return torch.cat([idx, torch.tensor([row.tokens for row in rows], dtype=idx.dtype, device=idx.device)], dim=1)

    def make_cache(
        self, batch_size: int, *, max_len: int | None = None, ragged: bool = False, device=None
    ) -> list[KVCache]:
        """One KV cache per layer for forward(cache=...), growing with use up to max_len positions
        (default and ceiling: block_size); ragged ones let each row sit at its own position."""
        c = self.config
        device = torch.device(device) if device is not None else self.transformer.wte.weight.device
        dtype = self.transformer.wte.weight.dtype  # not lm_head's: that one may be quantized
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        max_len = min(max_len or c.block_size, c.block_size)
        return [
            KVCache(
                batch_size, c.n_kv_head or c.n_head, max_len, c.head_size, device=device, dtype=dtype, ragged=ragged
            )
            for _ in range(c.n_layer)
        ]

    # ---- size and cost -----------------------------------------------------------------------------

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (shared tensors once); optionally without the position/token tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer and isinstance(self.transformer.wpe, LearnedPositionalEmbedding):
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N for the matmuls with the weights plus
        12 n_layer d_attn T for attention scores and weighted sums, d_attn = n_head head_size (usually
        n_embd) (Kaplan et al.; PaLM appendix B)."""
        c = self.config
        n = self.num_params(exclude_embeddings=True)
        if c.tie_weights:
            n += c.n_embd * c.vocab_size  # the shared matrix still does a matmul as the LM head
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * (seq_len or c.block_size)
