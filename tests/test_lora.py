"""LoRA: the LoRALinear block on its own, and adapters on a GPT."""

import pytest
import torch
from torch import nn

from minigpt import GPT, GPTConfig
from minigpt.errors import MinigptError
from minigpt.lora import (
    LoRASettings,
    adapter_state,
    apply_lora,
    count_parameters,
    load_adapter_state,
    merge_lora,
    store_frozen_weights_in,
)
from minigpt.nn import LoRALinear


def _tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32) | overrides
    return GPT(GPTConfig(**config)).eval()


def _train_adapters(model, steps=5):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    model.train()
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_lora_linear_works_in_any_model_and_merges():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    x = torch.randn(5, 12)
    before = net(x)
    net[0] = LoRALinear.from_linear(net[0], rank=4, alpha=8)
    assert torch.equal(net(x), before)  # B starts at zero: an exact no-op
    nn.init.normal_(net[0].lora_b)
    adapted = net(x)
    assert not torch.allclose(adapted, before)
    net[0].merge()
    torch.testing.assert_close(net(x), adapted, atol=1e-5, rtol=1e-5)
    net[0].unmerge()
    torch.testing.assert_close(net(x), adapted, atol=1e-5, rtol=1e-5)
    assert isinstance(net[0], nn.Linear) and net[0].lora_a.shape == (4, 12) and net[0].lora_b.shape == (20, 4)


def test_lora_linear_rank_must_fit_the_layer():
    with pytest.raises(ValueError, match="between 1 and min"):
        LoRALinear(8, 3, rank=4)


def test_fresh_adapters_give_the_base_logits_exactly():
    model = _tiny_gpt()
    idx = torch.randint(0, 40, (2, 16))
    base = model(idx)[0]
    adapted = apply_lora(model, LoRASettings(rank=4))
    assert len(adapted) == 2 * 4  # attention and MLP projections of both blocks
    assert torch.equal(model(idx)[0], base)


def test_only_adapters_train_and_base_weights_stay_bit_identical():
    model = _tiny_gpt()
    base = {name: t.clone() for name, t in model.state_dict().items()}
    apply_lora(model, LoRASettings(rank=4, alpha=8))
    trainable, total = count_parameters(model)
    assert trainable == sum(t.numel() for t in adapter_state(model).values()) and trainable < total / 5
    _train_adapters(model)
    after = model.state_dict()
    assert all(torch.equal(after[name], t) for name, t in base.items())
    assert any(t.abs().sum() > 0 for name, t in adapter_state(model).items() if name.endswith("lora_b"))


def test_frozen_weights_stored_in_bf16_give_autocasts_very_numbers():
    model = _tiny_gpt()
    apply_lora(model, LoRASettings(rank=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_()  # adapters that do something, so their gradients depend on the base
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(2))

    def logits_and_gradients():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = logits_and_gradients()
    store_frozen_weights_in(model, torch.bfloat16)
    after = logits_and_gradients()
    frozen = [m.weight for m in model.modules() if isinstance(m, LoRALinear)]
    assert frozen and all(w.dtype == torch.bfloat16 for w in frozen)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert torch.equal(before[0], after[0])
    assert all(torch.equal(before[1][n], after[1][n]) for n in before[1])


def test_merged_and_unmerged_agree():
    model = _tiny_gpt()
    apply_lora(model, LoRASettings(rank=4, alpha=8))
    _train_adapters(model)
    idx = torch.randint(0, 40, (2, 16))
    unmerged = model(idx)[0]
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(idx)[0], unmerged, atol=1e-5, rtol=0)
    assert set(model.state_dict()) == set(_tiny_gpt().state_dict())  # a plain GPT again


def test_adapter_state_round_trips_and_is_small():
    model = _tiny_gpt(n_embd=64)
    apply_lora(model, LoRASettings(rank=2))
    _train_adapters(model)
    state = adapter_state(model)
    fresh = _tiny_gpt(n_embd=64)
    apply_lora(fresh, LoRASettings(rank=2))
    load_adapter_state(fresh, state, "test")
    idx = torch.randint(0, 40, (2, 16))
    assert torch.equal(fresh(idx)[0], model(idx)[0])
    full = sum(t.numel() for t in model.state_dict().values())
    assert sum(t.numel() for t in state.values()) < 0.1 * full


def test_targets_that_match_nothing_and_rank_too_large_are_one_line_errors():
    with pytest.raises(MinigptError, match=r"targets \['q_proj'\] match no Linear layer.*h.0.attn.c_attn"):
        apply_lora(_tiny_gpt(), LoRASettings(rank=4, targets=["q_proj"]))
    with pytest.raises(MinigptError, match="rank 64 is larger than layer transformer.h.0.attn.c_attn.*at most 32"):
        apply_lora(_tiny_gpt(), LoRASettings(rank=64))
    with pytest.raises(MinigptError, match="shares the token embedding"):
        apply_lora(_tiny_gpt(), LoRASettings(rank=4, targets=["lm_head"]))


def test_patterns_select_layers():
    model = _tiny_gpt()
    adapted = apply_lora(model, LoRASettings(rank=2, targets=["h.0.*"]))
    assert sorted(adapted) == [f"transformer.h.0.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_lora_checkpoint_state_restores_the_trained_model_with_added_rows():
    from minigpt.lora import lora_checkpoint_state, restore_lora
    from minigpt.train.init_from import grow_vocabulary

    base = _tiny_gpt()
    model = grow_vocabulary(_tiny_gpt(), 44)  # four chat tokens beyond the base's 40
    settings = LoRASettings(rank=2)
    apply_lora(model, settings)
    _train_adapters(model)
    state = lora_checkpoint_state(model, base_vocab_size=40)
    assert state["added_rows.transformer.wte.weight"].shape == (4, 32)
    idx = torch.tensor([[1, 41, 2, 43]])
    expected = model(idx)[0]
    restored = restore_lora(grow_vocabulary(base, 44), settings, state, "test")
    torch.testing.assert_close(restored(idx)[0], expected, atol=1e-5, rtol=0)
