"""Multi-head attention: self or cross, causal or masked, with grouped-query heads and a KV cache.

For each query vector q, attention returns a weighted average of value vectors v, the weights
being softmax(q . k / sqrt(d_k)) over the key vectors k:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V                 (Vaswani et al., eq. 1)

Multi-head attention runs n_head such attentions on d_model / n_head-wide slices of learned
projections of the input, concatenates them and projects back (eq. 2 of the paper).

Masks follow torch.nn.functional.scaled_dot_product_attention: a boolean tensor broadcastable to
(B, n_head, T_q, T_k) in which True means "may attend". A query whose every key is masked
gets zero weights and a zero output instead of the NaN that softmax over nothing would give.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .norm import RMSNorm
from .position import RotaryEmbedding


def key_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """Turn a (B, T_k) boolean "this key is a real token" tensor into a (B, 1, 1, T_k) mask."""
    return valid.bool()[:, None, None, :]


def causal_mask(t_q: int, t_k: int, device=None) -> torch.Tensor:
    """(T_q, T_k) mask letting each query see its own position and earlier ones.

    The queries are the last T_q of the T_k positions, which is what a KV cache needs
    (T_q new tokens after T_k - T_q cached ones); with T_q == T_k it is the usual triangle.
    """
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def attention_weights(q, k, mask=None):
    """softmax(q k^T / sqrt(d_k)) with masked keys excluded: (B, h, T_q, T_k), rows sum to 1 or 0."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, T_q, T_k)
    if mask is None:
        return scores.softmax(dim=-1)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # all-masked rows: 0, not NaN


def _as_4d(mask: torch.Tensor, shape: tuple) -> torch.Tensor:
    """mask with leading 1s added, checked to broadcast to shape (B, n_head, T_q, T_k)."""
    if mask.dim() <= 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + mask.shape)
        if all(m in (1, s) for m, s in zip(mask.shape, shape)):
            return mask
    hint = " (for a (B, T) padding mask, pass key_padding_mask(valid))" if mask.dim() <= 4 else ""
    raise ValueError(
        f"attention mask of shape {tuple(mask.shape)} does not broadcast to (B, n_head, T_q, T_k) = {shape}; "
        f"a 2-D mask is (T_q, T_k){hint}"
    )


def all_equal(values: list) -> bool:
    return all(value == values[0] for value in values)


class KVCache:
    """Keys and values of the tokens seen so far, so that generating one more token costs one position.

    Storage grows with use, in steps of `chunk` positions up to max_len (the most the model may see):
    a short chat with a model of a long context holds a short cache. Appending writes in place.
    With ragged=True every row keeps its own length (`lengths`), so sequences at different
    positions can decode in one batch (continuous batching): each row writes at its own position,
    and `mask` tells attention which keys each of its queries may see. While every row has the
    same length (one sequence, or samples of one prompt) it works as a plain cache: no mask.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        *,
        device=None,
        dtype=None,
        ragged: bool = False,
        chunk: int = 256,
    ):
        self.max_len, self.chunk = max_len, chunk
        shape = (batch_size, n_kv_head, min(chunk, max_len), head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions in use: every row's length, or the longest row's when ragged
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device) if ragged else None
        self.row_lengths = [0] * batch_size if ragged else None  # the same, on the host: no device sync
        # every row at the same position (always so for a plain cache): a flag kept up to date where the
        # lengths change, not a look at each length at every step
        self.uniform = True
        self.mask = None
        self.parent = None  # the cache a view of the first rows (rows()) writes through to

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def offset(self) -> int | torch.Tensor:
        """The position of the next token: an int, or a (B,) tensor of per-row positions when ragged."""
        if self.uniform:
            return self.length
        return self.lengths

    def reserve(self, end: int) -> None:
        """Make room for positions up to end (exclusive), growing the storage in chunks."""
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot store position {end - 1}")
        if end <= self.capacity:
            return
        self._grow(2, min(self.max_len, -(-end // self.chunk) * self.chunk))

    def _grow(self, dim: int, size: int) -> None:
        """Enlarge the key and value storage to `size` along dim (2: positions, 0: rows), zeros in the new part."""
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:dim], size, *old.shape[dim + 1 :]))
            new.narrow(dim, 0, old.shape[dim]).copy_(old)
            setattr(self, name, new)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v of shape (B, n_kv_head, T, hs); return all keys and values so far."""
        T = k.shape[2]
        if not self.uniform:
            return self._append_ragged(k, v)
        start = self.offset
        end = start + T
        self.reserve(end)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        self.mask = None
        if self.row_lengths is not None:
            self.lengths.fill_(end)
            self._set_row_lengths([end] * len(self.row_lengths))
        return self.k[:, :, :end], self.v[:, :, :end]

    def _append_ragged(self, k, v):
        B, T = k.shape[0], k.shape[2]
        end = self.length + T
        positions = self.lengths[:, None] + torch.arange(T, device=k.device)  # (B, T)
        rows = torch.arange(B, device=k.device)[:, None]
        tracked = self.row_lengths is not None  # False in a compiled step (over()): its caller moves the lengths on
        if tracked:
            self.reserve(end)
            self._set_row_lengths([n + T for n in self.row_lengths])
        # indexed writes (B, T, h, hs), which a compiled step does in place (a scatter_ there copied the caches)
        self.k[rows, :, positions] = k.transpose(1, 2)
        self.v[rows, :, positions] = v.transpose(1, 2)
        if tracked:
            self.lengths += T
        self.length = end
        # query t of row b sits at positions[b, t] and sees keys 0 .. positions[b, t]
        self.mask = torch.arange(end, device=k.device) <= positions[:, None, :, None]  # (B, 1, T, end)
        return self.k[:, :, :end], self.v[:, :, :end]

    def grow_rows(self, rows: int) -> None:
        """Room for `rows` rows in this ragged cache (a batch that grew); the rows it holds keep their
        keys and values, the new ones hold nothing."""
        added = rows - len(self.row_lengths)
        self._grow(0, rows)
        self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(added)])
        self.row_lengths = self.row_lengths + [0] * added
        self.uniform = all_equal(self.row_lengths)

    def rows(self, n: int) -> "KVCache":
        """A ragged cache over the first n rows, sharing this one's storage: appends land here too, so
        reserve() room for them on this cache first (a view cannot grow its parent's storage)."""
        view = object.__new__(KVCache)
        view.max_len, view.chunk = self.capacity, self.chunk
        view.k, view.v, view.lengths = self.k[:n], self.v[:n], self.lengths[:n]
        view.row_lengths = self.row_lengths[:n]
        view.length = max(view.row_lengths, default=0)
        view.uniform = all_equal(view.row_lengths)
        view.mask, view.parent = None, self
        return view

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor, length: int, lengths: torch.Tensor | None = None) -> "KVCache":
        """A cache over existing key and value storage (B, n_kv_head, capacity, hs) whose first `length`
        positions are in use, or with lengths (B,) each row's first lengths[b] (length: the longest): what
        a compiled decode step builds around the tensors it is given. Appends write in place; the lengths
        stay as they are given."""
        cache = object.__new__(cls)
        cache.max_len, cache.chunk = k.shape[2], k.shape[2]
        cache.k, cache.v, cache.lengths, cache.row_lengths = k, v, lengths, None
        cache.length, cache.uniform, cache.mask, cache.parent = length, lengths is None, None, None
        return cache

    def advance(self, n: int, steps: int) -> None:
        """The first n rows of this ragged cache hold `steps` more positions each (written by a compiled step)."""
        lengths = self.lengths if n == len(self.row_lengths) else self.lengths[:n]  # no view when it is every row
        lengths += steps
        self._set_row_lengths([length + steps for length in self.row_lengths[:n]] + self.row_lengths[n:])

    def _set_row_lengths(self, row_lengths: list[int]) -> None:
        self.row_lengths = row_lengths
        self.length = max(row_lengths) if row_lengths else 0
        self.uniform = all_equal(row_lengths)
        if self.parent is not None:  # a view: its parent's rows moved on too
            self.parent._set_row_lengths(row_lengths + self.parent.row_lengths[len(row_lengths) :])

    def copy_row(self, row: int, source: "KVCache", source_row: int = 0) -> None:
        """Make row `row` of this ragged cache hold what row `source_row` of `source` holds."""
        length = source.row_lengths[source_row] if source.row_lengths is not None else source.length
        self.reserve(length)
        self.k[row, :, :length] = source.k[source_row, :, :length]
        self.v[row, :, :length] = source.v[source_row, :, :length]
        self.lengths[row] = length
        self._set_row_lengths(self.row_lengths[:row] + [length] + self.row_lengths[row + 1 :])

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on: its text continues differently (a plain cache, or every
        row of a ragged one; speculative decoding cuts back the guesses the model did not keep)."""
        self.length = min(self.length, length)
        if self.row_lengths is not None:
            self.lengths.clamp_(max=length)
            self._set_row_lengths([min(n, length) for n in self.row_lengths])

    def clear_row(self, row: int) -> None:
        """Row `row` of this ragged cache holds nothing now (its sequence left)."""
        self.lengths[row] = 0
        self._set_row_lengths(self.row_lengths[:row] + [0] + self.row_lengths[row + 1 :])

    def take_row(self, row: int) -> "KVCache":
        """A plain one-row cache holding a copy of what row `row` holds (a sequence that keeps its cache)."""
        length = self.row_lengths[row] if self.row_lengths is not None else self.length
        single = KVCache(1, self.k.shape[1], self.max_len, self.k.shape[3], device=self.k.device, dtype=self.k.dtype)
        single.reserve(length)
        single.k[0, :, :length] = self.k[row, :, :length]
        single.v[0, :, :length] = self.v[row, :, :length]
        single.length = length
        return single


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused input projection, like torch.nn.MultiheadAttention.

    c_attn maps d_model to [queries | keys | values] (n_head + 2 n_kv_head heads of d_model / n_head
    features); c_proj is the output projection W_O. Self-attention projects x three ways at once;
    cross-attention takes queries from x and keys/values from `context` with the same weights.
    n_kv_head < n_head gives grouped-query attention: each group of n_head / n_kv_head query heads
    shares one key/value head. qk_norm applies RMSNorm to each query and key head (stabilises training),
    with a learned gain per feature shared by all heads when qk_norm_affine (Qwen3).
    head_dim defaults to d_model / n_head; some models (Qwen3) use wider heads, and then c_attn and
    c_proj work on n_head * head_dim features. qkv_bias (default: bias) puts biases on the query, key
    and value projections alone (Qwen2 has them there and nowhere else).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        qkv_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_affine: bool = False,
        norm_eps: float = 1e-6,
        head_dim: int | None = None,
    ):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if head_dim is None and d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        if n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"n_kv_head ({n_kv_head}) must divide n_head ({n_head})")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = d_model // n_head if head_dim is None else head_dim
        self.dropout = dropout
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.c_attn = nn.Linear(d_model, (n_head + 2 * n_kv_head) * self.head_dim, bias=qkv_bias)
        self.c_proj = nn.Linear(n_head * self.head_dim, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        norm = dict(eps=norm_eps, elementwise_affine=qk_norm_affine)
        self.q_norm = RMSNorm(self.head_dim, **norm) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, **norm) if qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        rope: RotaryEmbedding | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ):
        """x: (B, T_q, C) queries; context: (B, T_k, C) keys/values source (None: x itself).

        Returns y of shape (B, T_q, C), or (y, weights) with weights (B, n_head, T_q, T_k) if need_weights.
        rope rotates queries and keys by position (self-attention only), by default 0, 1, ... after the
        cached ones, or by a (B, T) positions tensor (a padded batch); cache keeps earlier keys/values.
        """
        B, T_q, _ = x.shape
        q, k, v = self._project(x, context)  # (B, h, T_q, hs), (B, h_kv, T_k, hs) twice
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        offset = cache.offset if cache is not None else 0
        if rope is not None:
            q, k = rope(q, offset, positions=positions), rope(k, offset, positions=positions)
        if cache is not None:
            k, v = cache.append(k, v)
            if cache.mask is not None:  # rows at different positions: the cache knows who sees what
                mask = cache.mask if mask is None else mask.bool() & cache.mask
                causal = False
        if self.n_kv_head != self.n_head:  # give every query head its group's key/value head
            repeats = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)

        T_k = k.shape[2]
        if causal and T_q > 1 and (mask is not None or need_weights or T_q != T_k):
            mask = causal_mask(T_q, T_k, x.device) if mask is None else mask.bool() & causal_mask(T_q, T_k, x.device)
            causal = False  # now carried by the mask
        if mask is not None:
            mask = _as_4d(mask.bool(), (B, self.n_head, T_q, T_k))
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:  # the explicit path, step by step
            weights = attention_weights(q, k, mask)
            y = F.dropout(weights, dropout_p) @ v
        else:  # the fused path: flash / memory-efficient kernels where the device has them
            # bool(): a plain flag even when the length is symbolic (torch.onnx.export, torch.export)
            y = self._fused_attention(q, k, v, mask, bool(causal and T_q > 1), dropout_p)
        y = y.transpose(1, 2).reshape(B, T_q, -1)  # (B, h, T_q, hs) -> (B, T_q, h * hs): concatenate heads
        y = self.resid_dropout(self.c_proj(y))
        if mask is not None:  # a query that may see no key at all gets exactly zero, not c_proj's bias
            y = y.masked_fill((~mask.any(dim=-1)).all(dim=1)[..., None], 0.0)
        return (y, weights) if need_weights else y

    def _project(self, x, context):
        """Split c_attn into its query and key/value parts and apply them; returns heads first."""
        B, T_q, _ = x.shape
        d_q = self.n_head * self.head_dim
        if context is None:
            q, kv = self.c_attn(x).split([d_q, self.c_attn.out_features - d_q], dim=-1)
        else:
            weight, bias = self.c_attn.weight, self.c_attn.bias
            q = F.linear(x, weight[:d_q], None if bias is None else bias[:d_q])
            kv = F.linear(context, weight[d_q:], None if bias is None else bias[d_q:])
        k, v = kv.chunk(2, dim=-1)
        T_k = k.shape[1]
        q = q.view(B, T_q, self.n_head, self.head_dim).transpose(1, 2)
        k = k.reshape(B, T_k, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.reshape(B, T_k, self.n_kv_head, self.head_dim).transpose(1, 2)
        return q, k, v

    @staticmethod
    def _fused_attention(q, k, v, mask, is_causal, dropout_p):
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # PyTorch's CPU attention kernels are slower in bf16 than in float32 (the backward above
            # all), while the matmuls around them gain from bf16: run attention itself in float32.
            with torch.autocast("cpu", enabled=False):
                y = MultiHeadAttention._fused_attention(q.float(), k.float(), v.float(), mask, is_causal, dropout_p)
            return y.to(q.dtype)
        if not dropout_p and q.shape[2] == 1 and torch.compiler.is_compiling():
            # one query (a compiled decode step): products and sums Inductor fuses into one loop over the
            # cache, 28 microseconds a layer against 72 for the flash kernel (6 x 384, AVX2). Written as
            # q @ k.T, Inductor would match it back to that kernel
            scores = (q * k).sum(-1) / math.sqrt(q.shape[-1])  # (B, h, T_k)
            if mask is not None:  # (B, 1, 1, T_k): rows at different positions, each sees at least itself
                scores = scores.masked_fill(~mask[:, :, 0], float("-inf"))
            return (scores.softmax(-1)[..., None] * v).sum(-2, keepdim=True)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)
        # a query with no visible key would come out NaN: let it see everything, then zero it
        has_key = mask.any(dim=-1, keepdim=True)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, dropout_p=dropout_p)
        return y.masked_fill(~has_key, 0.0)
