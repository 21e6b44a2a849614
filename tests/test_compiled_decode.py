"""sample and chat --compile: decode steps through torch.compile give the tokens eager steps give, compile
once and once more when the cache length turns symbolic (not at every token), and where compiling fails
the engine says so in a line and decodes eagerly."""

import copy

import torch
from torch._dynamo.utils import counters

from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams
from minigpt.model import GPT, GPTConfig
from minigpt.nn import decode_layout


def laid_out_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    return decode_layout(model)


def test_a_compiled_decode_step_gives_the_eager_tokens_and_does_not_compile_at_every_token():
    torch.set_num_threads(2)  # the split products run inside the compiled step (tests/conftest.py restores)
    torch._dynamo.reset()
    counters.clear()
    model, prompt = laid_out_model(), [1, 2, 3, 4, 5]
    params = SamplingParams(max_tokens=30, temperature=0)
    eager = list(Engine(model, max_batch=1).generate(prompt, params))
    compiled = list(Engine(model, max_batch=1, compile_decode=True).generate(prompt, params))
    assert compiled == eager and len(eager) == 30
    assert 1 <= counters["stats"]["unique_graphs"] <= 2


def test_where_compiling_fails_the_engine_says_so_and_decodes_eagerly(monkeypatch, capsys):
    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    model, prompt = laid_out_model(), [7, 8, 9]
    params = SamplingParams(max_tokens=10, temperature=0)
    eager = list(Engine(copy.deepcopy(model), max_batch=1).generate(prompt, params))
    assert list(Engine(model, max_batch=1, compile_decode=True).generate(prompt, params)) == eager
    err = capsys.readouterr().err
    assert err.count("compiling the decode step failed") == 1 and "decoding without it" in err
