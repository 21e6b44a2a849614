"""A minigpt model for transformers: `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

minigpt writes this file beside the weights of a model that no standard transformers class expresses
(ReLU^2, QK-norm, rotary positions with LayerNorm, logit soft-capping, ...), with an auto_map in
config.json that points transformers here. It is self-contained, torch and transformers only, so the
folder works where minigpt is not installed. The config holds minigpt's own model settings (its
GPTConfig fields) and the tensors keep minigpt's names, so minigpt reads the folder back as it is.

    token embedding (+ learned or sinusoidal positions)
    -> n_layer pre-norm blocks: x + attention(norm(x)), then x + mlp(norm(x))
    -> final norm -> LM head (logits optionally soft-capped: cap * tanh(logits / cap))

Attention may have fewer key/value heads than query heads (grouped-query), an RMSNorm on each query
and key head (QK-norm) and rotary positions; the KV cache is transformers' own (generate() passes it).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5 passes and returns the KV cache as `cache`; earlier releases call it `past_key_values`
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# minigpt's model settings with its defaults (None: derived from the others, as in the modules below)
SETTINGS = dict(
    vocab_size=50257,
    block_size=1024,  # the longest context
    n_layer=12,
    n_head=12,
    n_embd=768,
    n_kv_head=None,  # key/value heads; None: n_head
    dropout=0.0,
    bias=True,  # biases in Linear layers and LayerNorms
    pos_encoding="learned",  # learned | sinusoidal | rope
    norm="layernorm",  # layernorm | rmsnorm
    mlp="gelu",  # gelu (tanh form) | gelu_exact | relu | relu2 | swiglu
    tie_weights=True,  # the LM head is the token embedding
    qk_norm=False,
    zero_init_proj=False,  # training only
    logit_softcap=None,
    rope_base=10000.0,
    norm_eps=None,  # None: 1e-5 for layernorm, 1e-6 for rmsnorm and QK-norm
    mlp_hidden=None,  # None: 4 n_embd, or 2/3 of that rounded up to a multiple of 8 for swiglu
    head_dim=None,  # None: n_embd / n_head
    qkv_bias=None,  # biases on the query/key/value projection; None: as `bias`
    qk_norm_affine=False,  # a learned gain in the QK-norm
)


class MinigptConfig(PretrainedConfig):
    model_type = "minigpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
    }

    def __init__(self, **kwargs):
        for name, default in SETTINGS.items():
            setattr(self, name, kwargs.pop(name, default))
        kwargs.pop("tie_word_embeddings", None)  # transformers' name for tie_weights, which decides
        super().__init__(tie_word_embeddings=self.tie_weights, **kwargs)


def _swiglu(h):
    gate, value = h.chunk(2, dim=-1)  # c_fc writes [gate | value]
    return F.silu(gate) * value


ACTIVATIONS = {
    "gelu": lambda h: F.gelu(h, approximate="tanh"),
    "gelu_exact": F.gelu,
    "relu": F.relu,
    "relu2": lambda h: F.relu(h).square(),
    "swiglu": _swiglu,
}


class LayerNorm(nn.Module):
    def __init__(self, dim, eps, bias):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, gain=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(config, dim):
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps or 1e-6)
    return LayerNorm(dim, config.norm_eps or 1e-5, config.bias)


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def head_dim(config):
    return config.head_dim or config.n_embd // config.n_head


def rotate(x, cos, sin):
    """RoPE as minigpt pairs features: i of the first half of a head with i of the second half."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def sinusoids(positions, dim, base=10000.0):
    """The fixed encodings of positions (B, T): sin at even features, cos at odd ones; (B, T, dim)."""
    inv_freq = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions[..., None].float() * inv_freq
    table = torch.zeros(*positions.shape, dim, device=positions.device)
    table[..., 0::2] = angles.sin()
    table[..., 1::2] = angles[..., : dim // 2].cos()
    return table


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head or config.n_head
        self.head_dim = head_dim(config)
        self.dropout = config.dropout
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        # one fused projection: [queries | keys | values]
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            eps = config.norm_eps or 1e-6
            self.q_norm = RMSNorm(self.head_dim, eps, gain=config.qk_norm_affine)
            self.k_norm = RMSNorm(self.head_dim, eps, gain=config.qk_norm_affine)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, rope, mask, cache):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split([self.n_head * self.head_dim, *[self.n_kv_head * self.head_dim] * 2], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # every key and value so far
        if self.n_kv_head != self.n_head:  # each group of query heads shares one key/value head
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,  # no mask: a text without cache or padding
        )
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, -1)))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        gated = config.mlp == "swiglu"
        hidden = config.mlp_hidden or (_round_up(8 * config.n_embd // 3, 8) if gated else 4 * config.n_embd)
        self.activation = ACTIVATIONS[config.mlp]
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if gated else hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.ln_1(x), rope, mask, cache)
        return x + self.mlp(self.ln_2(x))


class MinigptForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MinigptConfig
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}  # when tie_word_embeddings

    def __init__(self, config):
        super().__init__(config)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=make_norm(config, config.n_embd),
            )
        )
        if config.pos_encoding == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, embeddings):
        self.transformer.wte = embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, embeddings):
        self.lm_head = embeddings

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, use_cache=None, **kwargs):
        """input_ids (B, T) continue the text in the cache, if any; attention_mask (B, cached + T) marks
        real tokens 1 and padding 0 (padding is never attended to and takes up no position)."""
        c = self.config
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None and use_cache:
            cache = DynamicCache()
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > c.block_size:
            raise ValueError(f"{past + T} tokens are more than this model's context of {c.block_size}")
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        elif position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)

        x = self.transformer.wte(input_ids)
        if c.pos_encoding == "learned":
            x = x + self.transformer.wpe(position_ids)
        elif c.pos_encoding == "sinusoidal":
            x = x + sinusoids(position_ids, c.n_embd).to(x.dtype)
        x = self.transformer.drop(x)
        rope = None
        if c.pos_encoding == "rope":
            dim = head_dim(c)
            inv_freq = c.rope_base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=x.device) / dim)
            angles = (position_ids[..., None].float() * inv_freq)[:, None]  # (B, 1, T, head_dim / 2)
            rope = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        mask = self._mask(attention_mask, T, past, x.device)
        for block in self.transformer.h:
            x = block(x, rope, mask, cache)
        logits = self.lm_head(self.transformer.ln_f(x))
        if c.logit_softcap:
            logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)

        loss = None
        if labels is not None:  # labels are input_ids (-100: ignored): position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE: cache})

    @staticmethod
    def _mask(attention_mask, T, past, device):
        """(B, 1, T, past + T) booleans, True where a query may see a key; None for the plain causal case."""
        if attention_mask is None and (past == 0 or T == 1):
            return None  # scaled_dot_product_attention's is_causal, or one new token that sees everything
        seen = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)[None, None]
        if attention_mask is not None:
            seen = seen & attention_mask[:, None, None, :].bool()
        return seen | ~seen.any(dim=-1, keepdim=True)  # a padding query that sees nothing: anything, unused
