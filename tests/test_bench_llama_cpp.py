"""minigpt bench --llama-cpp: one line when llama-cpp-python is missing; the table; and, where llama.cpp is
installed, a small model run through both sides (minigpt/bench/llama_cpp.py)."""

import sys

import pytest
import torch

from minigpt.bench import llama_cpp
from minigpt.device import cpu_features


def test_missing_llama_cpp_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    assert llama_cpp.bench_llama_cpp() is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped" in err and "pip install llama-cpp-python" in err


def test_weights_read_per_token_and_the_table():
    model, tokenizer = llama_cpp.benchmark_model(llama_cpp.MODELS["6x384 char (shakespeare_char shape)"])
    assert tokenizer.vocab_size == 65
    layer = 12 * 384 * 384  # attention 4 C^2 and MLP 8 C^2, no biases
    assert llama_cpp.decode_weights(model) == 6 * layer + 65 * 384  # and the tied output layer, once
    side = {"weights": "f32", "ms_per_token": 2.0, "tokens_per_s": 500.0, "bandwidth_use": 0.25}
    row = {"model": "m", "threads": 2, "new_tokens": 8, "llama.cpp": side, "minigpt": {**side, "ms_per_token": 3.0}}
    table = llama_cpp.llama_cpp_table([{"copy_bandwidth_gb_s": 10.0}, row])
    assert "| m | f32 / f32 | 2 | 2.00 (500/s, 25%) | 3.00 (500/s, 25%) | 1.50x |" in table
    assert llama_cpp.copy_bandwidth(megabytes=8, repeats=2) > 1e8


def test_cpu_features_name_the_units_that_decide_speed():
    assert set(cpu_features()) == {"AVX2", "AVX-512", "AVX-512 BF16", "AMX"}


def test_both_sides_decode_a_small_model(monkeypatch):
    pytest.importorskip("llama_cpp")
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=128, bias=False)
    monkeypatch.setattr(llama_cpp, "MODELS", {"small": shape})
    before = torch.get_num_threads()
    results = llama_cpp.bench_llama_cpp(new_tokens=4, threads=(1,))
    assert torch.get_num_threads() == before
    assert [(r["llama.cpp"]["weights"], r["minigpt"]["weights"]) for r in results[1:]] == [
        ("f32", "float32"),
        ("q8_0", "int8"),
    ]
    assert all(r[side]["ms_per_token"] > 0 for r in results[1:] for side in ("llama.cpp", "minigpt"))
