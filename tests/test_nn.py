"""The blocks of minigpt.nn, checked against PyTorch's own modules and against their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minigpt.nn import (
    FeedForward,
    KVCache,
    LayerNorm,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    causal_mask,
    key_padding_mask,
    make_norm,
)

torch.manual_seed(0)


def paired_attention(d_model=16, n_head=4):
    """Our attention and torch.nn.MultiheadAttention holding the same weights."""
    ours = MultiHeadAttention(d_model, n_head).eval()
    theirs = nn.MultiheadAttention(d_model, n_head, batch_first=True).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
        theirs.in_proj_weight.copy_(ours.c_attn.weight)
        theirs.in_proj_bias.copy_(ours.c_attn.bias)
        theirs.out_proj.weight.copy_(ours.c_proj.weight)
        theirs.out_proj.bias.copy_(ours.c_proj.bias)
    return ours, theirs


@pytest.mark.parametrize("case", ["self", "causal", "padding", "cross", "cross_padding"])
def test_attention_matches_torch_multihead_attention(case):
    ours, theirs = paired_attention()
    x = torch.randn(3, 7, 16)
    context = torch.randn(3, 5, 16) if case.startswith("cross") else None
    kv = x if context is None else context
    t_k = kv.shape[1]
    valid = torch.ones(3, t_k, dtype=torch.bool)
    valid[0, -2:] = False  # the first sequence has two padding positions
    valid[2, -1:] = False
    mask = key_padding_mask(valid) if case.endswith("padding") else None
    causal = case == "causal"

    y, w = ours(x, context, causal=causal, mask=mask, need_weights=True)
    y_fast = ours(x, context, causal=causal, mask=mask)
    ref_y, ref_w = theirs(
        x,
        kv,
        kv,
        need_weights=True,
        average_attn_weights=False,
        attn_mask=~causal_mask(7, 7) if causal else None,  # torch: True = blocked
        key_padding_mask=~valid if mask is not None else None,
    )
    torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_fast, ref_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)
    assert w.shape == (3, 4, 7, t_k)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 7))


def test_fused_and_explicit_paths_agree_with_arbitrary_masks_and_grouped_heads():
    attn = MultiHeadAttention(32, 8, n_kv_head=2).eval()
    x = torch.randn(2, 9, 32)
    mask = torch.rand(2, 8, 9, 9) > 0.3
    for kwargs in (dict(), dict(causal=True), dict(mask=mask), dict(mask=mask, causal=True)):
        explicit, _ = attn(x, need_weights=True, **kwargs)
        torch.testing.assert_close(attn(x, **kwargs), explicit, atol=1e-6, rtol=1e-5)


def test_query_with_every_key_masked_gives_zeros_not_nan():
    attn = MultiHeadAttention(16, 4)
    x = torch.randn(2, 4, 16, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, :, 2] = False  # query 2 of sequence 1 may see nothing
    for need_weights in (False, True):
        out = attn(x, mask=mask, need_weights=need_weights)
        y = out[0] if need_weights else out
        assert torch.equal(y[1, 2], torch.zeros(16))
        assert y[0, 2].abs().sum() > 0
        assert not y.isnan().any()
        if need_weights:
            assert torch.equal(out[1][1, :, 2], torch.zeros(4, 4))
        y.sum().backward()
        assert not x.grad.isnan().any()


def test_grouped_query_attention_equals_full_attention_with_shared_key_value_heads():
    gqa = MultiHeadAttention(24, 6, n_kv_head=2).eval()
    mha = MultiHeadAttention(24, 6).eval()
    hs = 4
    q_w, k_w, v_w = gqa.c_attn.weight.split([24, 8, 8])
    q_b, k_b, v_b = gqa.c_attn.bias.split([24, 8, 8])

    def expand(t):
        return t.view(2, hs, *t.shape[1:]).repeat_interleave(3, dim=0).reshape(24, *t.shape[1:])

    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([q_w, expand(k_w), expand(v_w)]))
        mha.c_attn.bias.copy_(torch.cat([q_b, expand(k_b), expand(v_b)]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(gqa(x, causal=True), mha(x, causal=True), atol=1e-6, rtol=1e-5)
    assert gqa.c_attn.weight.shape == (24 + 2 * 8, 24)


def test_causal_attention_ignores_the_future():
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)
    torch.testing.assert_close(attn(x, causal=True)[:, :4], attn(changed, causal=True)[:, :4])
    assert not torch.allclose(attn(x)[:, :4], attn(changed)[:, :4])  # without causal it does look ahead


@pytest.mark.parametrize("use_rope", [False, True])
def test_kv_cache_gives_the_same_outputs_one_token_at_a_time(use_rope):
    attn = MultiHeadAttention(16, 4, n_kv_head=2).eval()
    rope = RotaryEmbedding(4, 16) if use_rope else None
    x = torch.randn(2, 7, 16)
    full = attn(x, causal=True, rope=rope)
    cache = KVCache(2, 2, 16, 4)
    first = attn(x[:, :3], causal=True, rope=rope, cache=cache)  # a prompt of 3, then one at a time
    steps = [attn(x[:, t : t + 1], causal=True, rope=rope, cache=cache) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-6, rtol=1e-5)
    assert cache.length == 7


def test_sinusoidal_encoding_follows_the_paper_formula():
    pe = SinusoidalPositionalEncoding(50, 8)
    t, i = 7, 2  # position 7, pair 2 -> features 4 and 5
    angle = t / 10000 ** (2 * i / 8)
    assert pe(50)[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert pe(50)[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    torch.testing.assert_close(pe(3, offset=5), pe(8)[5:])
    assert list(pe.state_dict()) == []  # nothing learned, nothing saved


def test_rotary_dot_products_depend_only_on_relative_position():
    rope = RotaryEmbedding(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(t, s):
        return (rope(q, offset=t) * rope(k, offset=s)).sum().item()

    assert score(10, 3) == pytest.approx(score(40, 33), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 9), abs=1e-3)
    torch.testing.assert_close(rope(q, 0), q)  # position 0 is no rotation
    torch.testing.assert_close(rope(q, 5).norm(), q.norm())  # rotations keep length


def test_learned_positions_are_a_table_lookup():
    wpe = LearnedPositionalEmbedding(10, 4)
    nn.init.normal_(wpe.weight)
    torch.testing.assert_close(wpe(3, offset=2), wpe.weight[2:5])


def test_relu_feedforward_is_the_original_transformer_formula():
    ff = FeedForward(6, 12, activation="relu")
    x = torch.randn(2, 3, 6)
    w1, b1, w2, b2 = ff.c_fc.weight, ff.c_fc.bias, ff.c_proj.weight, ff.c_proj.bias
    torch.testing.assert_close(ff(x), torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2)


def test_feedforward_activations():
    x = torch.randn(4, 8)
    relu2 = FeedForward(8, activation="relu2")
    torch.testing.assert_close(relu2(x), relu2.c_proj(F.relu(relu2.c_fc(x)) ** 2))
    gelu = FeedForward(8, activation="gelu")
    h = gelu.c_fc(x)
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(gelu(x), gelu.c_proj(tanh_gelu))
    swiglu = FeedForward(8, 16, activation="swiglu")
    gate, value = swiglu.c_fc(x).chunk(2, dim=-1)
    torch.testing.assert_close(swiglu(x), swiglu.c_proj(F.silu(gate) * value))
    assert swiglu.c_fc.out_features == 32
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        FeedForward(8, activation="tanh")


def test_norms_match_their_definitions():
    x = torch.randn(3, 10) * 4 + 2
    ln = LayerNorm(10)
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    ref = nn.LayerNorm(10)
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), ref(x))
    assert LayerNorm(10, bias=False).bias is None
    rms = RMSNorm(10)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_transformer_block_as_encoder_decoder_and_decoder():
    encoder = TransformerBlock(16, 4, norm="rmsnorm", mlp="swiglu")
    decoder = TransformerBlock(16, 4, cross_attention=True)
    src, tgt = torch.randn(2, 9, 16), torch.randn(2, 5, 16)
    memory = encoder(src)
    out = decoder(tgt, memory, causal=True, context_mask=key_padding_mask(torch.ones(2, 9, dtype=torch.bool)))
    assert memory.shape == (2, 9, 16) and out.shape == (2, 5, 16)
    changed = memory.clone()
    changed[:, 0] += 1
    assert not torch.allclose(decoder(tgt, changed, causal=True), out)  # cross-attention reads the context
    out, weights = decoder(tgt, memory, causal=True, need_weights=True)
    assert weights.shape == (2, 4, 5, 5) and weights[0, 0, 0, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="context"):
        decoder(tgt)
    with pytest.raises(ValueError, match="context"):
        encoder(src, memory)


def test_bad_head_counts_are_refused():
    with pytest.raises(ValueError, match="divisible by n_head"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="must divide n_head"):
        MultiHeadAttention(12, 6, n_kv_head=4)


def test_variant_names_are_resolved_to_functions_and_classes_when_a_block_is_built():
    from minigpt.nn.feedforward import ACTIVATIONS

    ff = FeedForward(8, activation="relu2")
    assert callable(ff.activation) and ff.activation is ACTIVATIONS["relu2"]
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ff(x), ff.c_proj(torch.relu(ff.c_fc(x)).square()))
    assert isinstance(make_norm("rmsnorm", 8), RMSNorm) and isinstance(make_norm("layernorm", 8), LayerNorm)
    assert make_norm("rmsnorm", 8, eps=1e-3).eps == 1e-3 and make_norm("layernorm", 8).eps == 1e-5


@pytest.mark.parametrize("make", [lambda: LearnedPositionalEmbedding(8, 4), lambda: SinusoidalPositionalEncoding(8, 4)])
def test_added_positional_encodings_past_max_len_say_so(make):
    encoding = make()
    assert encoding(8).shape == (8, 4) and encoding(2, offset=6).shape == (2, 4)
    with pytest.raises(ValueError, match="position 8 is beyond max_len=8"):
        encoding(3, offset=6)
    with pytest.raises(ValueError, match="beyond max_len=8"):
        encoding(9)
    positions = torch.tensor([[0, 0, 1], [0, 1, 2]])
    torch.testing.assert_close(encoding(3, positions=positions)[1], encoding(3))


def test_a_padding_mask_of_the_wrong_shape_points_to_key_padding_mask():
    attention = MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [False, False, True, True, True]])
    with pytest.raises(ValueError, match=r"key_padding_mask\(valid\)"):
        attention(x, mask=valid)
    masked = attention(x, mask=key_padding_mask(valid))
    torch.testing.assert_close(masked[1, 2:], attention(x[1:, 2:])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_rope", [False, True])
def test_ragged_kv_cache_decodes_rows_at_different_positions_like_each_row_alone(use_rope):
    attn = MultiHeadAttention(16, 4, n_kv_head=2).eval()
    rope = RotaryEmbedding(4, 16) if use_rope else None
    x = torch.randn(2, 9, 16)
    alone = [attn(x[b : b + 1, : 5 + 3 * b], causal=True, rope=rope) for b in range(2)]  # 5 and 8 tokens
    batch = KVCache(3, 2, 16, 4, ragged=True)
    for b, length in enumerate((4, 7)):  # prefill each prompt alone, then give it a row
        single = KVCache(1, 2, 16, 4)
        attn(x[b : b + 1, :length], causal=True, rope=rope, cache=single)
        batch.copy_row(b, single)
    cache = batch.rows(2)
    assert cache.offset.tolist() == [4, 7] and cache.length == 7
    step = attn(torch.stack([x[0, 4], x[1, 7]])[:, None], causal=True, rope=rope, cache=cache)  # one token each
    torch.testing.assert_close(step[0, 0], alone[0][0, -1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(step[1, 0], alone[1][0, -1], atol=1e-6, rtol=1e-5)
    assert batch.lengths.tolist() == [5, 8, 0]  # the view wrote into the shared storage
    batch.copy_row(0, batch, 1)  # a finished row 0 makes room: row 1 moves down
    assert batch.lengths[0] == 8 and torch.equal(batch.k[0, :, :8], batch.k[1, :, :8])
    kept = batch.k.clone()
    batch.grow_rows(5)  # a batch that grew: the rows it held keep theirs, the new ones hold nothing
    assert batch.k.shape[0] == 5 and torch.equal(batch.k[:3], kept) and not batch.k[3:].any()
    assert batch.lengths.tolist() == batch.row_lengths == [8, 8, 0, 0, 0]


def test_positions_take_per_row_offsets():
    pe, rope = SinusoidalPositionalEncoding(20, 8), RotaryEmbedding(8, 20)
    rows = pe(3, offset=torch.tensor([2, 5]))
    torch.testing.assert_close(rows[1], pe(3, offset=5))
    q = torch.randn(2, 1, 3, 8)
    rotated = rope(q, torch.tensor([2, 5]))
    torch.testing.assert_close(rotated[1:], rope(q[1:], 5))
