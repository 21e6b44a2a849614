"""minigpt bench --llama-cpp: one line when llama-cpp-python is missing; the table; and, where llama.cpp is
installed, a small model run through both sides (minigpt/bench/llama_cpp.py)."""

import sys
import types

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
    row = {"model": "m", "threads": 2, "new_tokens": 8, "rounds": 3}
    row |= {"llama.cpp": side, "minigpt": {**side, "ms_per_token": 3.0}}
    table = llama_cpp.llama_cpp_table([{"copy_bandwidth_gb_s": 10.0}, row])
    assert "8 tokens after the same prompt, each side's best of 3 rounds" in table
    assert "| m | f32 / f32 | 2 | 2.00 (500/s, 25%) | 3.00 (500/s, 25%) | 1.50x | - | - |" in table
    row["minigpt --compile"] = {**side, "ms_per_token": 1.0, "compile_s": 31.4}
    table = llama_cpp.llama_cpp_table([{"copy_bandwidth_gb_s": 10.0}, row])
    assert "| 1.50x | 1.00 (31 s) | 0.50x |" in table
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


def test_the_sides_take_turns_and_each_keeps_its_best_round(monkeypatch):
    class Llama:  # stands in for llama-cpp-python's: the decode functions below are stand-ins too
        def __init__(self, *args, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama))
    monkeypatch.setattr(llama_cpp, "MODELS", {"small": dict(n_layer=1, n_head=2, n_embd=32, block_size=64, bias=False)})
    calls, theirs, ours = [], iter([5.0, 3.0, 4.0] * 2), iter([2.0, 6.0, 1.5] * 2)
    compiled = iter([9.0, 1.0, 2.5, 1.2] * 2)

    def ours_decode(engine, ids, new_tokens):
        calls.append("compiled" if engine.compiled else "minigpt")
        return next(compiled if engine.compiled else ours)

    monkeypatch.setattr(llama_cpp, "llama_cpp_decode", lambda *args: calls.append("llama.cpp") or next(theirs))
    monkeypatch.setattr(llama_cpp, "minigpt_decode", ours_decode)
    results = llama_cpp.bench_llama_cpp(new_tokens=2, threads=(1,), rounds=3)
    # f32, then q8_0/int8: each compiling first (untimed), then three rounds in turns
    assert calls == (["compiled"] + ["llama.cpp", "minigpt", "compiled"] * 3) * 2
    assert [(r["llama.cpp"]["ms_per_token"], r["minigpt"]["ms_per_token"]) for r in results[1:]] == [(3.0, 1.5)] * 2
    assert [r["minigpt --compile"]["ms_per_token"] for r in results[1:]] == [1.0, 1.0]
    calls.clear()
    theirs, ours = iter([1.0] * 6), iter([1.0] * 6)  # the stand-ins read these names when called
    llama_cpp.bench_llama_cpp(new_tokens=2, threads=(1,), rounds=3, compiled_models=("another model",))
    assert "compiled" not in calls and len(calls) == 12  # --quick compiles its first model only


def test_missing_llama_cpp_server_is_one_line(monkeypatch, capsys):
    from minigpt.bench import serve_llama_cpp

    monkeypatch.delitem(sys.modules, "llama_cpp.server.app", raising=False)
    monkeypatch.setitem(sys.modules, "sse_starlette", None)  # a server extra missing (or llama_cpp itself)
    monkeypatch.setattr(serve_llama_cpp.subprocess, "Popen", None)  # nothing is started
    assert serve_llama_cpp.bench_serving_llama_cpp() is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped" in err and "pip install 'llama-cpp-python[server]'" in err


def test_serving_table_against_llama_cpp():
    from minigpt.bench.serve_llama_cpp import best_of_threads, serving_llama_cpp_table

    side = {"tokens_per_s": 100.0, "ttft_ms": 20.0}
    result = {
        "model": "m",
        "params": 1e6,
        "weights": "GGUF f32 / float32",
        "prompt_tokens": 9,
        "max_tokens": 8,
        "max_batch": 8,
        "llama_cpp_python": "0.3",
        "same_text": True,
    }
    ours = {**side, "tokens_per_s": 250.0}
    result["rows"] = [{"threads": 1, "clients": 8, "llama.cpp": side, "minigpt": ours, "speedup": 2.5}]
    compiled = {**side, "tokens_per_s": 300.0, "compile_s": 41.0}  # --compile at 2 threads only
    slower = {**result["rows"][0], "threads": 2, "minigpt": {**side, "tokens_per_s": 200.0}, "speedup": 2.0}
    result["rows"].append(slower | {"minigpt --compile": compiled, "compiled_speedup": 3.0})
    result["best"] = best_of_threads(result["rows"])
    assert result["best"][8]["minigpt"] == {"threads": 1, "tokens_per_s": 250.0, "ttft_ms": 20.0}
    assert result["best"][8]["minigpt --compile"]["threads"] == 2
    assert result["best"][8]["speedup"] == 2.5 and result["best"][8]["compiled_speedup"] == 3.0
    table = serving_llama_cpp_table(result)
    assert "| 1 | 8 | 100 | 20 | 250 | 20 | 2.50x | - | - | - |" in table
    assert "| 2 | 8 | 100 | 20 | 200 | 20 | 2.00x | 300 (41 s) | 20 | 3.00x |" in table
    assert "8 at once: llama.cpp 100 on 1, minigpt 250 on 1 (2.50x), minigpt --compile 300 on 2 (3.00x)" in table


def test_both_servers_answer_a_small_model(monkeypatch):
    pytest.importorskip("llama_cpp.server.app")
    from minigpt.bench import serve_llama_cpp

    started = []

    class Recorded(serve_llama_cpp.subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(serve_llama_cpp.subprocess, "Popen", Recorded)
    before = torch.get_num_threads()
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=128, bias=False)
    result = serve_llama_cpp.bench_serving_llama_cpp(
        clients=(1, 2),
        max_tokens=8,
        threads=(1,),
        shape=shape,
        compiled=(),  # compiling: test_compiled_decode
    )
    assert torch.get_num_threads() == before
    assert [(r["threads"], r["clients"]) for r in result["rows"]] == [(1, 1), (1, 2)]
    for row in result["rows"]:
        assert all(row[side][key] > 0 for side in ("llama.cpp", "minigpt") for key in ("tokens_per_s", "ttft_ms"))
        assert row["speedup"] > 0
    assert len(started) == 1 and started[0].poll() is not None  # the server process is gone
