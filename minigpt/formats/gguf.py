"""Write a model as one GGUF file, the format llama.cpp and Ollama run.

    save_gguf(model, tokenizer, "out/model.gguf", outtype="f16")

llama.cpp builds each architecture from its own code, so a minigpt config is written as the
architecture it equals, or refused naming the settings that would export:
    gpt2   learned positions, LayerNorm, GELU; biases (a model without them gets zero ones)
    llama  rotary positions, RMSNorm, SwiGLU, grouped-query attention, tied or untied head
    qwen3  the same with QK-norm
    arcee  rotary positions, RMSNorm, ReLU^2, no biases
llama.cpp's GELU is the tanh form: a model with the exact (erf) form exports with a note, its logits
there differing slightly (scripts/check_llama_cpp.py measures by how much).
The tokenizer goes in as llama.cpp's "gpt2" (byte-level BPE) tokenizer model, with the vocabulary
and merges of formats/vocab.py; a Hugging Face tokenizer's chat template as its Jinja text.

Tensors are stored f32, f16 or q8_0 (8-bit blocks of 32 with one scale each); vectors (norms,
biases) stay f32 as llama.cpp expects, and a matrix whose rows do not split into blocks of 32 falls
back to f16.
"""

from pathlib import Path

import numpy as np
import torch

from ..errors import MinigptError
from ..tokenizers import HFTokenizer
from .vocab import byte_level_vocab

OUTTYPES = ("f32", "f16", "q8_0")
ROPE = dict(pos_encoding=("rope",), norm=("rmsnorm",), logit_softcap=(None,))
# What each llama.cpp architecture runs: setting -> the values it takes (the first is what a refusal
# suggests); settings not listed take any value. n_kv_head and head_dim are None when they restate
# the default (n_head; n_embd / n_head), qkv_bias is resolved to True or False.
GGUF_ARCHITECTURES = {
    "gpt2": dict(
        pos_encoding=("learned",),
        norm=("layernorm",),
        mlp=("gelu", "gelu_exact"),
        qk_norm=(False,),
        n_kv_head=(None,),
        head_dim=(None,),
        logit_softcap=(None,),
    ),
    "llama": dict(ROPE, mlp=("swiglu",), qk_norm=(False,)),
    "qwen3": dict(ROPE, mlp=("swiglu",), qk_norm=(True,), bias=(False,)),
    "arcee": dict(ROPE, mlp=("relu2",), qk_norm=(False,), bias=(False,), qkv_bias=(False,)),
}
ROTATE_NEIGHBOURS = ("llama", "arcee")  # llama.cpp's "normal" RoPE: pairs features 2j and 2j+1


def gguf_architecture(config) -> str:
    """The llama.cpp architecture a config equals, or MinigptError naming the settings that would export."""
    settings = _settings(config)
    changes = {
        arch: [(name, values[0]) for name, values in needs.items() if settings[name] not in values]
        for arch, needs in GGUF_ARCHITECTURES.items()
    }
    fewest = min(len(c) for c in changes.values())
    if fewest == 0:
        return next(arch for arch, c in changes.items() if not c)
    closest = [arch for arch, c in changes.items() if len(c) == fewest]
    refused = sorted({f"{name}={_yaml(settings[name])}" for arch in closest for name, _ in changes[arch]})
    ways = " or ".join(
        " ".join(f"model.{name}={_yaml(value)}" for name, value in changes[arch]) + f" (llama.cpp's {arch})"
        for arch in closest
    )
    raise MinigptError(
        f"gguf export cannot express {' with '.join(refused)}: no llama.cpp architecture has that; "
        f"it would export with {ways}"
    )


def export_note(config) -> str | None:
    """What a user of the GGUF file of config must know, or None."""
    if config.mlp == "gelu_exact":
        return (
            "llama.cpp computes GELU in its tanh form and this model the exact (erf) form, so its logits "
            "there differ slightly (python scripts/check_llama_cpp.py PATH measures by how much)"
        )
    return None


def _settings(config) -> dict:
    """config's fields as GGUF_ARCHITECTURES names them."""
    return {
        **vars(config),
        "n_kv_head": None if config.n_kv_head in (None, config.n_head) else config.n_kv_head,
        "head_dim": None if config.head_size * config.n_head == config.n_embd else config.head_dim,
        "qkv_bias": config.bias if config.qkv_bias is None else config.qkv_bias,
    }


def _yaml(value) -> str:
    """value as a command-line override writes it: true, null, 30.0, swiglu."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise MinigptError(f"unknown gguf type {outtype!r}; accepted: {', '.join(OUTTYPES)}")


def save_gguf(model, tokenizer, path: str | Path, *, outtype: str = "f16", name: str = "minigpt") -> Path:
    """Write model and tokenizer to the GGUF file path; returns it."""
    import gguf

    check_outtype(outtype)
    arch = gguf_architecture(model.config)
    vocab = byte_level_vocab(tokenizer)
    c = model.config
    if len(vocab.tokens) > c.vocab_size:
        raise MinigptError(f"the tokenizer has {len(vocab.tokens)} tokens but the model only {c.vocab_size}")
    attn, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[outtype]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(mlp.c_proj.in_features)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(attn.n_kv_head)
    writer.add_key_length(attn.head_dim)
    writer.add_value_length(attn.head_dim)
    writer.add_vocab_size(c.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(model.transformer.ln_f.eps)
    else:
        writer.add_layer_norm_rms_eps(model.transformer.ln_f.eps)
        writer.add_rope_freq_base(c.rope_base)
        writer.add_rope_dimension_count(attn.head_dim)
    _add_tokenizer(writer, vocab, tokenizer, c.vocab_size)
    for tensor_name, tensor in _tensors(model, arch):
        _add_tensor(writer, tensor_name, tensor, outtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_tokenizer(writer, vocab, tokenizer, vocab_size: int) -> None:
    import gguf

    # rows of the embedding beyond the tokenizer (a vocabulary padded for speed) get placeholder names
    padding = [f"[PAD{i}]" for i in range(len(vocab.tokens), vocab_size)]
    types = [
        gguf.TokenType.CONTROL if i in vocab.special else gguf.TokenType.NORMAL for i in range(len(vocab.tokens))
    ] + [gguf.TokenType.UNUSED] * len(padding)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre_tokenizer)
    writer.add_token_list(vocab.tokens + padding)
    writer.add_token_types(types)
    # llama.cpp requires merges, and gguf cannot write an empty list (a char vocabulary of one-byte
    # characters has none): then one merge of bytes 0xC0 and 0xC1, which never occur in UTF-8 text
    writer.add_token_merges(vocab.merges or ["\u00c0 \u00c1"])
    if tokenizer.eot_token is not None:
        # GPT-2's convention: one end-of-text token that also starts a document
        writer.add_bos_token_id(tokenizer.eot_token)
        writer.add_eos_token_id(tokenizer.eot_token)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    template = tokenizer.config.get("chat_template") if isinstance(tokenizer, HFTokenizer) else None
    if isinstance(template, str):  # the Jinja text llama.cpp's chat mode applies
        writer.add_chat_template(template)


def _tensors(model, arch: str):
    """(GGUF name, tensor) pairs in llama.cpp's names; matrices in PyTorch's (out, in) layout."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    c = model.config
    if arch == "gpt2":  # llama.cpp's gpt2 requires every bias: a layer without one is one whose bias is 0
        tables = ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight")  # no biases to have
        for name in [n for n in state if n.endswith(".weight") and n not in tables]:
            state.setdefault(name.removesuffix("weight") + "bias", torch.zeros(state[name].shape[0]))
    yield "token_embd.weight", state["transformer.wte.weight"]
    if arch == "gpt2":
        yield "position_embd.weight", state["transformer.wpe.weight"]
    for i, block in enumerate(model.transformer.h):
        p = f"transformer.h.{i}."
        names = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_proj": "attn_output", "mlp.c_proj": "ffn_down"}
        if arch == "gpt2":
            names["attn.c_attn"] = "attn_qkv"
        if c.mlp != "swiglu":
            names["mlp.c_fc"] = "ffn_up"
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                if f"{p}{ours}.{kind}" in state:
                    yield f"blk.{i}.{theirs}.{kind}", state[f"{p}{ours}.{kind}"]
        if arch != "gpt2":
            yield from _split_attention(block.attn, state, p, i, permute=arch in ROTATE_NEIGHBOURS)
        if c.mlp == "swiglu":
            for kind in ("weight", "bias"):
                if f"{p}mlp.c_fc.{kind}" in state:  # SwiGLU's fused input: [gate | up]
                    gate, up = state[f"{p}mlp.c_fc.{kind}"].chunk(2, dim=0)
                    yield f"blk.{i}.ffn_gate.{kind}", gate
                    yield f"blk.{i}.ffn_up.{kind}", up
        if arch == "qwen3":  # llama.cpp's QK-norm always has a gain: ones where ours has none
            for ours, theirs in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
                gain = state.get(f"{p}attn.{ours}.weight", torch.ones(block.attn.head_dim))
                yield f"blk.{i}.{theirs}.weight", gain
    yield "output_norm.weight", state["transformer.ln_f.weight"]
    if "transformer.ln_f.bias" in state:
        yield "output_norm.bias", state["transformer.ln_f.bias"]
    if not c.tie_weights:  # a tied head is left out: llama.cpp then reuses token_embd
        yield "output.weight", state["lm_head.weight"]


def _split_attention(attn, state: dict, prefix: str, i: int, permute: bool):
    """c_attn's fused [q | k | v] as llama.cpp's attn_q, attn_k, attn_v.

    Our rotary embedding pairs feature j of a head with feature j + head_dim/2; llama.cpp's llama
    and arcee pair neighbours 2j and 2j+1, so there the rows of q and k are interleaved to match.
    """
    sizes = [attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim, attn.n_kv_head * attn.head_dim]
    for kind in ("weight", "bias"):
        if f"{prefix}attn.c_attn.{kind}" not in state:
            continue
        q, k, v = state[f"{prefix}attn.c_attn.{kind}"].split(sizes, dim=0)
        if permute:
            q, k = _interleave_halves(q, attn.n_head), _interleave_halves(k, attn.n_kv_head)
        yield f"blk.{i}.attn_q.{kind}", q
        yield f"blk.{i}.attn_k.{kind}", k
        yield f"blk.{i}.attn_v.{kind}", v


def _interleave_halves(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Within each head, reorder rows [a0..a(h-1), b0..b(h-1)] to [a0, b0, a1, b1, ...]."""
    head_dim = rows.shape[0] // n_heads
    split = rows.reshape(n_heads, 2, head_dim // 2, *rows.shape[1:])
    return split.transpose(1, 2).reshape(rows.shape)


def _add_tensor(writer, name: str, tensor: torch.Tensor, outtype: str) -> None:
    import gguf

    data = tensor.contiguous().numpy().astype(np.float32)
    if data.ndim == 1 or outtype == "f32":
        writer.add_tensor(name, data)
    elif outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q8 = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))
