"""GPT and GPTConfig: loss, initialisation, generation with and without the KV cache."""

import math

import pytest
import torch
from helpers import naive_generate

from minigpt import GPT, GPTConfig
from minigpt.errors import MinigptError


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


VARIANTS = [
    dict(),
    dict(pos_encoding="sinusoidal"),
    dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    dict(pos_encoding="rope", n_kv_head=2, qk_norm=True, mlp="relu2", tie_weights=False, logit_softcap=15.0),
]


def test_loss_at_initialisation_is_that_of_a_uniform_guess():
    model = tiny(vocab_size=500, n_embd=64)
    idx = torch.randint(0, 500, (4, 24))
    targets = torch.randint(0, 500, (4, 24))
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 24, 500)
    assert loss.item() == pytest.approx(math.log(500), abs=0.05)


def test_targets_of_minus_100_are_ignored():
    model = tiny()
    idx = torch.randint(0, 50, (2, 10))
    targets = torch.randint(0, 50, (2, 10))
    partial = targets.clone()
    partial[:, 5:] = -100
    logits, loss = model(idx, partial)
    expected = torch.nn.functional.cross_entropy(logits[:, :5].reshape(-1, 50), targets[:, :5].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert model(idx)[1] is None


def test_residual_projections_get_the_scaled_initialisation():
    model = tiny(n_layer=8, n_embd=128, vocab_size=1000)
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    zero = tiny(zero_init_proj=True)
    assert zero.transformer.h[1].mlp.c_proj.weight.abs().sum() == 0


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) or "gpt2")
def test_greedy_generation_with_the_cache_equals_full_recomputation(variant):
    model = tiny(**variant)
    prompt = torch.randint(0, 50, (3, 5))
    cached = model.generate(prompt, 19, temperature=0)  # fills the context exactly: 24 tokens
    recomputed = naive_generate(model, prompt, 19)
    assert cached.shape == (3, 24)
    assert torch.equal(cached, recomputed)


def test_generation_past_block_size_crops_the_context():
    model = tiny(pos_encoding="learned")
    prompt = torch.randint(0, 50, (2, 30))  # already longer than block_size 24
    out = model.generate(prompt, 40, temperature=0)
    assert out.shape == (2, 70) and torch.equal(out[:, :30], prompt)
    # the newest block_size tokens of the prompt decide the first token, as without a cache
    assert torch.equal(out[:, 30], naive_generate(model, prompt, 1)[:, 30])


def test_the_same_seed_gives_the_same_samples():
    model = tiny()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    runs = [model.generate(prompt, 15, top_k=10, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_gpt2_parameter_names_and_size():
    names = set(tiny().state_dict())
    for name in (
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.1.ln_1.weight",
        "transformer.h.1.attn.c_attn.weight",
        "transformer.h.1.attn.c_proj.bias",
        "transformer.h.1.ln_2.bias",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ):
        assert name in names
    gpt2 = GPT(GPTConfig())  # GPT-2 small: 124,439,808 parameters, as published for Hugging Face's "gpt2"
    assert gpt2.num_params() == 124_439_808
    n = gpt2.num_params(exclude_embeddings=True)
    assert gpt2.flops_per_token(1024) == 6 * (n + 768 * 50257) + 12 * 12 * 768 * 1024


def test_config_validation_names_the_problem():
    with pytest.raises(MinigptError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        GPT(GPTConfig(n_embd=30, n_head=4))
    with pytest.raises(MinigptError, match=r"n_kv_head \(3\) must divide n_head \(4\)"):
        GPT(GPTConfig(n_embd=32, n_head=4, n_kv_head=3))
    with pytest.raises(MinigptError, match="pos_encoding 'alibi' is not one of learned, sinusoidal, rope"):
        GPT(GPTConfig(pos_encoding="alibi"))


def test_attention_maps_have_one_causal_map_per_layer():
    model = tiny()
    maps = model.attention_maps(torch.randint(0, 50, (1, 6)))
    assert len(maps) == 2 and maps[0].shape == (1, 4, 6, 6)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(1, 4, 6))
    assert maps[0][0, :, 0, 1:].abs().sum() == 0


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    model = tiny(qk_norm=True)
    idx = torch.randint(0, 50, (2, 12))
    before = model(idx)[0]
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[: 2 * 32] *= 7.0  # queries and keys only (n_kv_head = n_head here)
            block.attn.c_attn.bias[: 2 * 32] *= 7.0
    torch.testing.assert_close(model(idx)[0], before, atol=1e-4, rtol=1e-4)


def test_logit_softcap_bounds_the_logits_and_untied_heads_are_separate():
    capped = tiny(logit_softcap=2.0, tie_weights=False)
    with torch.no_grad():
        capped.lm_head.weight.normal_(0, 10.0)  # logits far beyond the cap
    idx = torch.randint(0, 50, (2, 12))
    logits = capped(idx)[0]
    capped.config.logit_softcap = None
    raw = capped(idx)[0]
    assert raw.abs().max() > 10 and logits.abs().max() <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    assert capped.lm_head.weight.data_ptr() != capped.transformer.wte.weight.data_ptr()
    tied = tiny()
    assert tied.lm_head.weight is tied.transformer.wte.weight


def test_generation_with_a_context_of_one_token():
    model = tiny(block_size=1)
    out = model.generate(torch.zeros(2, 1, dtype=torch.long), 5, temperature=0)
    assert out.shape == (2, 6)
    assert torch.equal(out, naive_generate(model, torch.zeros(2, 1, dtype=torch.long), 5))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) or "gpt2")
def test_padded_rows_give_the_hidden_states_of_unpadded_ones(variant):
    model = tiny(**variant)
    short, long = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 12))
    pad = torch.zeros(1, 5, dtype=torch.long)
    alone = [model(row, return_hidden=True) for row in (short, long)]
    assert alone[0].shape == (1, 7, 32)
    for side in ("left", "right"):
        padded = torch.cat([pad, short] if side == "left" else [short, pad], dim=1)
        valid = torch.ones(1, 12, dtype=torch.bool)
        valid[:, slice(0, 5) if side == "left" else slice(7, 12)] = False
        hidden = model(
            torch.cat([padded, long]), attention_mask=torch.cat([valid, torch.ones_like(valid)]), return_hidden=True
        )
        torch.testing.assert_close(hidden[0][valid[0]], alone[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[1], alone[1][0], atol=1e-5, rtol=1e-5)
    logits, _ = model(long)
    torch.testing.assert_close(model._logits(alone[1]), logits)  # the LM head (and soft cap) on the hidden states
    with pytest.raises(ValueError, match="attention_mask must have idx's shape"):
        model(long, attention_mask=torch.ones(1, 11, dtype=torch.bool))
