"""The Hugging Face architectures minigpt reads and writes, one table each, used in both directions.

An Architecture says which config.json keys are our GPTConfig fields, what the rest of our config is
for it, which values of their other keys we reproduce (anything else is refused by name), and how
their tensors correspond to ours: several of theirs may be one of ours, concatenated along the
output dimension (Llama's q, k, v projections are our fused c_attn; gate and up are our c_fc).
A parameter their layout has and our model lacks is written at the value that changes nothing: zero
biases (GPT-2 without biases is GPT-2 whose biases are 0) and unit gains (a QK-norm without gains).
"""

from dataclasses import dataclass, field, fields

import torch

from ..errors import MinigptError
from ..model import GPT, GPTConfig

BLOCK = "transformer.h."  # our blocks' tensors start with this, then the block's index


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's "model_type"
    hf_class: str  # config.json's "architectures" entry when we write one
    fields: dict[str, str]  # our GPTConfig field -> their config key, copied as is
    fixed: dict[str, object]  # the rest of our config; a model to export must have these values
    accepted: dict[str, tuple]  # their key -> the values we reproduce (the first is written on export)
    layer_prefix: str  # their name for block i, with {i}
    layer: dict[str, tuple[str, ...]]  # our tensor within a block -> theirs, concatenated along dim 0
    top: dict[str, str]  # our tensors outside the blocks -> theirs
    defaults: dict[str, object] = field(default_factory=dict)  # our field -> value when their key is absent
    # our field -> (their key, {our value: their values, the first written on export}); absent key: first entry
    translated: dict[str, tuple[str, dict[object, tuple]]] = field(default_factory=dict)
    transposed: tuple[str, ...] = ()  # ours stored (in, out) on their side (GPT-2's Conv1D layers)
    skipped: tuple[str, ...] = ()  # name endings of their buffers that hold nothing to load
    code: tuple[str, ...] = ()  # modeling files of this package that the folder carries (trust_remote_code)

    # ---- config.json <-> GPTConfig -----------------------------------------------------------------

    def to_config(self, hf: dict) -> GPTConfig:
        """Our config for their config.json, or MinigptError naming a key whose value we do not reproduce."""
        hf = _flatten_rope_and_layers(hf)
        for key, values in self.accepted.items():
            if key in hf and hf[key] not in values:
                raise self._unsupported(key, hf[key], values)
        values = dict(self.defaults)
        values.update({ours: hf[theirs] for ours, theirs in self.fields.items() if hf.get(theirs) is not None})
        for ours, (key, table) in self.translated.items():
            ours_for = {their_value: our_value for our_value, theirs in table.items() for their_value in theirs}
            their_value = hf.get(key, next(iter(ours_for)))
            if their_value not in ours_for:
                raise self._unsupported(key, their_value, ours_for)
            values[ours] = ours_for[their_value]
        return GPTConfig(**values, **self.fixed)

    def _unsupported(self, key: str, value, supported) -> MinigptError:
        return MinigptError(
            f"{self.model_type} config has {key}={value!r}, which minigpt does not support "
            f"(supported: {' or '.join(repr(v) for v in supported)})"
        )

    def cannot_express(self, config: GPTConfig) -> list[str]:
        """The settings of config this architecture has no way to write, as 'field=value' strings."""
        canonical = _canonical(config)
        fixed = [f"{name}={canonical[name]!r}" for name, value in self.fixed.items() if canonical[name] != value]
        return fixed + [
            f"{name}={canonical[name]!r}"
            for name, (_, table) in self.translated.items()
            if canonical[name] not in table
        ]

    def from_model(self, model: GPT) -> dict:
        """Their config.json for model (whose config this architecture can express)."""
        hf = {"model_type": self.model_type, "architectures": [self.hf_class]}
        hf.update({key: values[0] for key, values in self.accepted.items()})
        hf.update({theirs: _resolved(model, ours) for ours, theirs in self.fields.items()})
        hf.update({key: table[getattr(model.config, ours)][0] for ours, (key, table) in self.translated.items()})
        return hf

    # ---- tensors -----------------------------------------------------------------------------------

    def their_names(self, ours: str) -> tuple[str, ...]:
        if ours.startswith(BLOCK):
            index, rest = ours.removeprefix(BLOCK).split(".", 1)
            return tuple(self.layer_prefix.format(i=index) + name for name in self.layer[rest])
        return (self.top[ours],)

    def import_tensors(self, theirs: dict, model: GPT, source) -> dict:
        """A state dict for model from their tensors."""
        theirs = {k: v for k, v in theirs.items() if not k.endswith(self.skipped)}
        tied = model.config.tie_weights
        loaded = {}
        for name, expected in model.state_dict().items():
            if name == "lm_head.weight" and tied:
                continue
            sources = self.their_names(name)
            missing = [s for s in sources if s not in theirs]
            if missing:
                raise MinigptError(f"{source} lacks the tensor {missing[0]!r} that its config.json implies")
            parts = [theirs.pop(s) for s in sources]
            parts = [p.t() if name.endswith(self.transposed) else p for p in parts]
            loaded[name] = torch.cat(parts) if len(parts) > 1 else parts[0]
            if loaded[name].shape != expected.shape:
                raise MinigptError(
                    f"{source}: {' + '.join(sources)} has shape {tuple(loaded[name].shape)} but its config.json "
                    f"implies {tuple(expected.shape)}"
                )
        if tied:
            theirs.pop(self.their_names("lm_head.weight")[0], None)  # some tied checkpoints store the copy anyway
            loaded["lm_head.weight"] = loaded["transformer.wte.weight"]
        if theirs:
            raise MinigptError(f"{source} holds {sorted(theirs)[0]!r}, which its config.json does not account for")
        return loaded

    def export_tensors(self, ours: dict, config: GPTConfig) -> dict:
        """Their tensors (contiguous, on the CPU) from our state dict."""
        out = {}
        for name, tensor in self._with_neutral_parameters(ours, config).items():
            if name == "lm_head.weight" and config.tie_weights:
                continue
            targets = self.their_names(name)
            parts = tensor.split(_part_sizes(config, tensor.shape[0], len(targets))) if len(targets) > 1 else [tensor]
            for target, part in zip(targets, parts):
                out[target] = (part.t() if name.endswith(self.transposed) else part).detach().contiguous().cpu()
        return out

    def _with_neutral_parameters(self, ours: dict, config: GPTConfig) -> dict:
        """ours plus the parameters their layout has and our model lacks: zero biases, sized as their
        weight's rows, and unit gains (the only gains our model may lack are QK-norm's)."""
        layout = [*self.top, *(f"{BLOCK}{i}.{name}" for i in range(config.n_layer) for name in self.layer)]
        filled = dict(ours)
        for name in layout:
            if name not in ours and name.endswith(".bias"):
                filled[name] = torch.zeros(ours[name.removesuffix("bias") + "weight"].shape[0])
            elif name not in ours:
                filled[name] = torch.ones(config.head_size)
        return filled


def _flatten_rope_and_layers(hf: dict) -> dict:
    """Refuse per-layer attention kinds and RoPE variants; read rope_theta wherever this transformers put it."""
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise MinigptError(f"config has layer_types {sorted(layer_types)}; minigpt supports full_attention only")
    rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5 nests RoPE settings here
    kind = rope.pop("rope_type", rope.pop("type", "default"))
    if kind != "default":
        raise MinigptError(f"config has rope_parameters.rope_type={kind!r}; minigpt supports plain RoPE (default)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise MinigptError("config has rope_parameters.partial_rotary_factor; minigpt rotates whole heads only")
    return {"rope_theta": rope.get("rope_theta", 10000.0), **hf}


def _part_sizes(config: GPTConfig, total: int, n_parts: int) -> list[int]:
    """How one of our fused tensors splits into theirs: queries, keys, values; or equal parts."""
    if n_parts == 3:
        queries = config.n_head * (total // (config.n_head + 2 * (config.n_kv_head or config.n_head)))
        return [queries, (total - queries) // 2, (total - queries) // 2]
    return [total // n_parts] * n_parts


def _canonical(config: GPTConfig) -> dict:
    """config's fields with the ones that merely restate a default set to None, so equal models compare equal."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    for name, default in [("n_kv_head", config.n_head), ("head_dim", config.n_embd // config.n_head)]:
        if values[name] == default:
            values[name] = None
    if values["qkv_bias"] == config.bias:
        values["qkv_bias"] = None
    if config.qk_norm:
        values["qk_norm_affine"] = True  # a norm without gains is one whose gains are all 1: written as such
    return values


def _resolved(model: GPT, name: str):
    """The value a field has in the built model (a None default made concrete), read off its blocks."""
    block = model.transformer.h[0]
    concrete = {
        "n_kv_head": lambda: block.attn.n_kv_head,
        "head_dim": lambda: block.attn.head_dim,
        "mlp_hidden": lambda: block.mlp.c_proj.in_features,
        "norm_eps": lambda: model.transformer.ln_f.eps,
    }
    return concrete[name]() if name in concrete else getattr(model.config, name)


GPT2 = Architecture(
    model_type="gpt2",
    hf_class="GPT2LMHeadModel",
    fields=dict(
        vocab_size="vocab_size",
        block_size="n_positions",
        n_layer="n_layer",
        n_head="n_head",
        n_embd="n_embd",
        mlp_hidden="n_inner",
        norm_eps="layer_norm_epsilon",
        tie_weights="tie_word_embeddings",
    ),
    fixed=dict(  # any biases: those our model lacks are written as zeros
        pos_encoding="learned",
        norm="layernorm",
        n_kv_head=None,
        head_dim=None,
        qk_norm=False,
        logit_softcap=None,
    ),
    accepted=dict(
        scale_attn_weights=(True,),
        scale_attn_by_inverse_layer_idx=(False,),
    ),
    layer_prefix="transformer.h.{i}.",
    layer={
        name: (name,)
        for name in (
            *("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"),
            *("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias"),
            *("mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"),
        )
    },
    top={
        name: name
        for name in (
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "transformer.ln_f.weight",
            "transformer.ln_f.bias",
        )
    }
    | {"lm_head.weight": "lm_head.weight"},
    transposed=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
    skipped=(".attn.bias", ".attn.masked_bias"),  # causal-mask buffers
    # GELU's tanh approximation, as GPT-2 used (their default), or the exact erf form ("gelu" to them);
    # ReLU and ReLU^2 by their own names
    translated=dict(
        mlp=(
            "activation_function",
            dict(gelu=("gelu_new", "gelu_pytorch_tanh"), gelu_exact=("gelu",), relu=("relu",), relu2=("relu2",)),
        )
    ),
)


def _llama_family(model_type: str, hf_class: str, fixed: dict, accepted: dict, layer: dict) -> Architecture:
    """Llama and its descendants: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases by default.

    Their RoPE pairs feature i with feature i + head_dim / 2 (the checkpoints are stored that way),
    which is how our RotaryEmbedding pairs them too, so no weight needs permuting.
    """
    return Architecture(
        model_type=model_type,
        hf_class=hf_class,
        fields=dict(
            vocab_size="vocab_size",
            block_size="max_position_embeddings",
            n_layer="num_hidden_layers",
            n_head="num_attention_heads",
            n_embd="hidden_size",
            n_kv_head="num_key_value_heads",
            head_dim="head_dim",
            mlp_hidden="intermediate_size",
            norm_eps="rms_norm_eps",
            rope_base="rope_theta",
            tie_weights="tie_word_embeddings",
        ),
        fixed=dict(
            pos_encoding="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
            qkv_bias=None,
            qk_norm=False,
            qk_norm_affine=False,
            logit_softcap=None,
        )
        | fixed,
        accepted=dict(hidden_act=("silu",), rope_scaling=(None,), mlp_bias=(False,)) | accepted,
        defaults=dict(tie_weights=False),  # transformers' default for these classes
        layer_prefix="model.layers.{i}.",
        layer={
            "ln_1.weight": ("input_layernorm.weight",),
            "attn.c_attn.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
            "attn.c_proj.weight": ("self_attn.o_proj.weight",),
            "ln_2.weight": ("post_attention_layernorm.weight",),
            "mlp.c_fc.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),  # [gate | value], as our swiglu
            "mlp.c_proj.weight": ("mlp.down_proj.weight",),
        }
        | layer,
        top={
            "transformer.wte.weight": "model.embed_tokens.weight",
            "transformer.ln_f.weight": "model.norm.weight",
            "lm_head.weight": "lm_head.weight",
        },
        skipped=("rotary_emb.inv_freq",),  # a buffer that older checkpoints saved
    )


NO_SLIDING_WINDOW = dict(use_sliding_window=(False,))
LLAMA = _llama_family("llama", "LlamaForCausalLM", {}, dict(attention_bias=(False,)), {})
QWEN2 = _llama_family(
    "qwen2",
    "Qwen2ForCausalLM",
    dict(qkv_bias=True),
    NO_SLIDING_WINDOW,
    {"attn.c_attn.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")},
)
QWEN3 = _llama_family(
    "qwen3",
    "Qwen3ForCausalLM",
    dict(qk_norm=True, qk_norm_affine=True),
    NO_SLIDING_WINDOW | dict(attention_bias=(False,)),
    {"attn.q_norm.weight": ("self_attn.q_norm.weight",), "attn.k_norm.weight": ("self_attn.k_norm.weight",)},
)
ARCHITECTURES = (GPT2, LLAMA, QWEN2, QWEN3)
