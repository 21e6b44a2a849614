"""GGUF export: the file read back with gguf's reader holds llama.cpp's names, shapes, values and metadata."""

import json

import numpy as np
import pytest
import torch

from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

gguf = pytest.importorskip("gguf")

LLAMA = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_weights=False)


def _model(vocab_size: int, **overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64, **overrides)
    return GPT(config).eval()


def _read(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    return reader, tensors


def _field(reader, key):
    return reader.get_field(key).contents()


def test_gpt2_architecture_metadata_and_values(tmp_path):
    from minigpt.formats.gguf import save_gguf

    tokenizer = BPETokenizer.train("bpe:300", ["hello world, hello there " * 20])
    model = _model(320)  # a vocabulary padded beyond the tokenizer's
    save_gguf(model, tokenizer, tmp_path / "m.gguf", outtype="f32")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "gpt2"
    assert _field(reader, "gpt2.context_length") == 32
    assert _field(reader, "gpt2.block_count") == 2
    assert _field(reader, "gpt2.attention.head_count") == 4
    assert _field(reader, "gpt2.feed_forward_length") == 256
    assert _field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    n = tokenizer.vocab_size
    assert (
        len(tokens) == 320 and tokens[n - 1] == "<|endoftext|>" and tokens[n:] == [f"[PAD{i}]" for i in range(n, 320)]
    )
    assert tokens[:3] == ["Ā", "ā", "Ă"] and tokens[32] == "Ġ"  # bytes 0, 1, 2 and the space
    assert _field(reader, "tokenizer.ggml.eos_token_id") == n - 1
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    # gguf lists shapes innermost first: a (out, in) matrix reads back as [in, out]
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [64, 192]
    state = model.state_dict()
    for name, ours in [
        ("blk.1.attn_qkv.weight", "transformer.h.1.attn.c_attn.weight"),
        ("blk.1.ffn_down.bias", "transformer.h.1.mlp.c_proj.bias"),
        ("position_embd.weight", "transformer.wpe.weight"),
        ("output_norm.bias", "transformer.ln_f.bias"),
    ]:
        np.testing.assert_array_equal(tensors[name].data.reshape(state[ours].shape), state[ours].numpy())


def test_gpt2_vocabulary_is_gpt2s_tokens_and_merges():
    from minigpt.formats.vocab import byte_level_vocab

    vocab = byte_level_vocab(load_tokenizer("gpt2"))
    assert len(vocab.tokens) == 50257 and vocab.tokens[262] == "Ġthe" and vocab.tokens[50256] == "<|endoftext|>"
    assert vocab.special == {50256}
    assert vocab.merges[:3] == ["Ġ t", "Ġ a", "h e"]  # GPT-2's merges.txt begins so
    # the same merges in Hugging Face's BPE split text exactly as tiktoken does
    from tokenizers import Tokenizer, models, pre_tokenizers

    bpe = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab.tokens)}, [tuple(m.split()) for m in vocab.merges]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = "Gazed at the unbelievably   long-winded naïve café owner's 12345 résumé — twice!\n\tOK"
    assert bpe.encode(text).ids == load_tokenizer("gpt2").encode(text)


def test_llama_architecture_interleaves_rotary_rows(tmp_path):
    from minigpt.formats.gguf import save_gguf

    tokenizer = BPETokenizer.train("bpe:300", ["hello world, hello there " * 20])
    model = _model(tokenizer.vocab_size, **LLAMA)
    save_gguf(model, tokenizer, tmp_path / "m.gguf", outtype="f32")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.dimension_count") == 16
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    hidden = model.transformer.h[0].mlp.c_proj.in_features
    assert _field(reader, "llama.feed_forward_length") == hidden
    c_attn = model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    k = tensors["blk.0.attn_k.weight"].data.reshape(32, 64)
    # head 0 of k starts at row 64 of c_attn: its feature j pairs with j + 8, and llama.cpp wants them adjacent
    np.testing.assert_array_equal(k[0], c_attn[64].numpy())
    np.testing.assert_array_equal(k[1], c_attn[64 + 8].numpy())
    np.testing.assert_array_equal(k[2], c_attn[65].numpy())
    c_fc = model.state_dict()["transformer.h.0.mlp.c_fc.weight"]
    np.testing.assert_array_equal(tensors["blk.0.ffn_up.weight"].data.reshape(hidden, 64), c_fc[hidden:].numpy())
    np.testing.assert_array_equal(tensors["output.weight"].data.reshape(-1, 64), model.lm_head.weight.detach().numpy())
    assert len(_field(reader, "tokenizer.ggml.merges")) >= tokenizer.vocab_size - 257  # one or more per token


def test_qk_norm_is_qwen3_and_char_vocab_merges_multibyte_characters(tmp_path):
    from minigpt.formats.gguf import save_gguf

    tokenizer = CharTokenizer(["a", "b", "é", "—"], with_eot=True)
    save_gguf(_model(8, qk_norm=True, **LLAMA), tokenizer, tmp_path / "m.gguf")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "qwen3"
    np.testing.assert_array_equal(tensors["blk.0.attn_q_norm.weight"].data, np.ones(16, dtype=np.float32))
    assert _field(reader, "tokenizer.ggml.tokens") == [
        "a",
        "b",
        "Ã©",
        "âĢĶ",
        "<|endoftext|>",
        "[PAD5]",
        "[PAD6]",
        "[PAD7]",
    ]
    assert _field(reader, "tokenizer.ggml.merges") == ["Ã ©", "â Ģ", "âĢ Ķ"]
    assert list(_field(reader, "tokenizer.ggml.token_type")) == [1, 1, 1, 1, 3, 5, 5, 5]


def test_gpt2_without_biases_gets_zero_biases_and_exact_gelu_a_note(tmp_path):
    """shakespeare_char's model: GPT-2 without biases, with the exact GELU (llama.cpp's is the tanh form)."""
    from minigpt.formats.gguf import export_note, save_gguf

    model = _model(8, bias=False, mlp="gelu_exact")
    save_gguf(model, CharTokenizer(list("abcdefg"), with_eot=True), tmp_path / "m.gguf", outtype="f32")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "gpt2"
    for name, size in [("blk.0.attn_qkv.bias", 192), ("blk.1.ffn_up.bias", 256), ("output_norm.bias", 64)]:
        np.testing.assert_array_equal(tensors[name].data, np.zeros(size, dtype=np.float32))
    assert "tanh form" in export_note(model.config)
    assert export_note(GPTConfig()) is None


def test_relu2_with_rotary_positions_is_arcee(tmp_path):
    """ReLU^2 without a gate: llama.cpp's arcee, whose RoPE pairs neighbours as llama's does."""
    from minigpt.formats.gguf import save_gguf

    model = _model(8, **dict(LLAMA, mlp="relu2"))
    save_gguf(model, CharTokenizer(list("abcdefg"), with_eot=True), tmp_path / "m.gguf", outtype="f32")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "arcee"
    assert _field(reader, "arcee.feed_forward_length") == 256
    assert _field(reader, "arcee.rope.dimension_count") == 16
    assert "blk.0.ffn_gate.weight" not in tensors
    state = model.state_dict()
    np.testing.assert_array_equal(
        tensors["blk.0.ffn_up.weight"].data.reshape(256, 64), state["transformer.h.0.mlp.c_fc.weight"].numpy()
    )
    q = tensors["blk.0.attn_q.weight"].data.reshape(64, 64)
    np.testing.assert_array_equal(q[1], state["transformer.h.0.attn.c_attn.weight"][8].numpy())  # 0 pairs with 8


@pytest.mark.parametrize("outtype, kind", [("f16", "F16"), ("q8_0", "Q8_0")])
def test_smaller_types_stay_close(tmp_path, outtype, kind):
    from minigpt.formats.gguf import save_gguf

    tokenizer = BPETokenizer.train("bpe:300", ["some text to learn from " * 20])
    model = _model(tokenizer.vocab_size, **LLAMA)
    save_gguf(model, tokenizer, tmp_path / "m.gguf", outtype=outtype)
    _, tensors = _read(tmp_path / "m.gguf")
    out = tensors["blk.0.attn_output.weight"]
    assert out.tensor_type.name == kind
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"  # vectors stay f32
    # ffn_down's rows (176 wide) do not split into q8_0's blocks of 32: f16 instead
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F16"
    values = gguf.quants.dequantize(out.data, out.tensor_type).reshape(64, 64)
    expected = model.state_dict()["transformer.h.0.attn.c_proj.weight"].numpy()
    assert np.abs(values - expected).max() < (1e-4 if outtype == "f16" else 2e-3)
    assert np.abs(values - expected).max() > 0  # really rounded


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pos_encoding="sinusoidal"), r"pos_encoding=sinusoidal: .* model.pos_encoding=learned \(llama.cpp's gpt2"),
        (dict(mlp="relu2"), r"mlp=relu2: .* model.mlp=gelu \(llama.cpp's gpt2\)$"),
        (dict(logit_softcap=30.0), "logit_softcap=30.0: .* model.logit_softcap=null"),
        (dict(LLAMA, norm="layernorm"), r"norm=layernorm: .* model.norm=rmsnorm \(llama.cpp's llama\)$"),
        (dict(n_kv_head=4), "n_kv_head=4: .* model.n_kv_head=null"),
        (
            dict(LLAMA, qk_norm=True, bias=True),
            r"bias=true with qk_norm=true: .* model.qk_norm=false \(llama.cpp's llama\) or model.bias=false",
        ),
        (  # the quickstart's model: ReLU^2 and QK-norm, each of which llama.cpp runs without the other
            dict(LLAMA, mlp="relu2", qk_norm=True, n_kv_head=None),
            r"mlp=relu2 with qk_norm=true: .* model.mlp=swiglu \(llama.cpp's qwen3\) or model.qk_norm=false "
            r"\(llama.cpp's arcee\)",
        ),
    ],
)
def test_inexpressible_configs_are_refused_naming_the_settings_that_would_export(overrides, message):
    from minigpt.formats.gguf import gguf_architecture

    with pytest.raises(MinigptError, match=f"^gguf export cannot express {message}"):
        gguf_architecture(GPTConfig(**overrides))


def test_qwen2_style_attention_biases_and_wide_heads(tmp_path):
    from minigpt.formats.gguf import save_gguf

    tokenizer = CharTokenizer(list("abc"), with_eot=False)
    model = _model(3, **LLAMA, qkv_bias=True, head_dim=32, mlp_hidden=96)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.bias.normal_()  # biases start at zero: make them tell rows apart
    save_gguf(model, tokenizer, tmp_path / "m.gguf", outtype="f32")
    reader, tensors = _read(tmp_path / "m.gguf")
    assert _field(reader, "llama.attention.key_length") == 32
    assert _field(reader, "llama.feed_forward_length") == 96
    assert "blk.0.attn_output.bias" not in tensors and "blk.0.ffn_up.bias" not in tensors
    bias = model.state_dict()["transformer.h.0.attn.c_attn.bias"].numpy()
    q_bias = tensors["blk.0.attn_q.bias"].data
    assert q_bias.shape == (4 * 32,)
    np.testing.assert_array_equal(q_bias[:4], bias[[0, 16, 1, 17]])  # head 0's halves interleaved


def test_a_hugging_face_gpt2_tokenizer_and_its_chat_template_go_along(tmp_path):
    from minigpt.formats.gguf import save_gguf
    from minigpt.formats.hf_tokenizer import to_hf_tokenizer
    from minigpt.formats.vocab import byte_level_vocab
    from minigpt.tokenizers import HFTokenizer

    bpe = BPETokenizer.train("bpe:300", ["hello world, hello there " * 20])
    converted = to_hf_tokenizer(bpe, max_length=32)
    template = "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}"
    tokenizer = HFTokenizer(converted.tokenizer_json, {**converted.config, "chat_template": template})
    assert byte_level_vocab(tokenizer) == byte_level_vocab(bpe)
    save_gguf(_model(bpe.vocab_size), tokenizer, tmp_path / "m.gguf")
    reader, _ = _read(tmp_path / "m.gguf")
    assert _field(reader, "tokenizer.chat_template") == template
    sentencepiece_like = HFTokenizer(
        json.dumps(
            {
                **json.loads(converted.tokenizer_json),
                "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
            }
        ),
        {},
    )
    with pytest.raises(MinigptError, match="splits text with Metaspace"):
        byte_level_vocab(sentencepiece_like)
