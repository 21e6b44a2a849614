"""Float linear layers laid out (in, out) for one-token decoding on a CPU: same numbers, used by sample/chat/serve."""

import copy
import gc
import weakref

import pytest
import torch
from helpers import naive_generate, save_untrained_run
from torch import nn

from minigpt.infer.engine import Engine
from minigpt.infer.ready import ModelChoice, load_for_generation
from minigpt.infer.sampling import SamplingParams
from minigpt.model import GPT, GPTConfig
from minigpt.nn import DecodeLinear, Int8Linear, decode_layout
from minigpt.nn.decode_layout import HUGE_PAGE
from minigpt.tokenizers import CharTokenizer


@pytest.mark.parametrize("threads", [1, 2, 3])  # 2 and 3 split the 48 input features across threads
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 48), (3, 7, 48), (5, 48), (40, 48)])  # 40 rows: past SPLIT_ROWS
def test_a_decode_linear_computes_what_its_linear_does(threads, bias, shape):
    torch.set_num_threads(threads)  # tests/conftest.py puts the thread count back
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    layer = DecodeLinear(linear)
    x = torch.randn(shape)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-6)
    assert layer.weight_t.shape == (48, 80) and layer.weight_t.is_contiguous()
    assert torch.equal(layer.weight, linear.weight)  # the (out, in) view code may slice


@pytest.mark.parametrize("tied", [True, False])
def test_a_laid_out_model_generates_what_the_model_does(tied):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32, tie_weights=tied)).eval()
    laid_out = decode_layout(copy.deepcopy(model))
    assert not any(type(m) is nn.Linear for m in laid_out.modules())
    assert not any(p.requires_grad for p in laid_out.parameters())
    idx = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(laid_out(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
    tokens = list(Engine(laid_out, max_batch=1).generate(idx[0].tolist(), SamplingParams(max_tokens=20, temperature=0)))
    assert tokens == naive_generate(model, idx[:1], 20)[0, 9:].tolist()
    assert torch.equal(laid_out.transformer.wte.weight, model.transformer.wte.weight)  # the embedding is untouched


def test_a_laid_out_model_keeps_its_weights_in_one_page_aligned_buffer_in_the_order_a_step_reads_them():
    model = decode_layout(GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval())
    layers = [m for m in model.modules() if isinstance(m, DecodeLinear)]
    names = [name for name, m in model.named_modules() if isinstance(m, DecodeLinear)]
    assert names[:4] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]
    assert names[-1] == "lm_head"
    first = layers[0].weight_t.data_ptr()
    assert first % HUGE_PAGE == 0
    offset = first
    for layer in layers:  # each weight right after the one before it
        assert layer.weight_t.data_ptr() == offset and layer.weight_t.is_contiguous()
        offset += layer.weight_t.numel() * layer.weight_t.element_size()


def test_each_layer_lets_go_of_its_old_weight_as_it_moves_into_the_buffer(monkeypatch):
    model = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32, tie_weights=False)).eval()
    old = [weakref.ref(m.weight) for m in model.modules() if type(m) is nn.Linear]
    alive_at_each_layer, build = [], DecodeLinear.__init__

    def build_counting(self, linear, weight_t=None):
        gc.collect()
        alive_at_each_layer.append(sum(ref() is not None for ref in old))
        build(self, linear, weight_t)

    monkeypatch.setattr(DecodeLinear, "__init__", build_counting)
    decode_layout(model)
    assert alive_at_each_layer == list(range(len(old), 0, -1))  # never two copies of the whole model


def test_sample_chat_and_serve_get_the_layout_in_float32_on_a_cpu_and_int8_keeps_its_own(tmp_path):
    torch.manual_seed(0)
    tokenizer = CharTokenizer(list("abcdefgh \n"), with_eot=True)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    run = save_untrained_run(tmp_path / "run", model, tokenizer)
    ready = load_for_generation(ModelChoice(str(run), device="cpu", dtype="float32"))
    assert isinstance(ready.model.lm_head, DecodeLinear)
    ready = load_for_generation(ModelChoice(str(run), device="cpu", dtype="float32", quantize="int8"))
    assert isinstance(ready.model.transformer.h[0].mlp.c_fc, Int8Linear)
