"""`minigpt bench --llama-cpp`: llama.cpp's decode beside minigpt's, same model, prompt and token count.

    results = bench_llama_cpp()        # None, with one line, when llama-cpp-python is not installed
    print(llama_cpp_table(results))

Each benchmark model (random weights: the time per token depends on the shapes, not the weights) is
written to GGUF by minigpt's own export and decoded greedily at batch 1 by llama.cpp (llama-cpp-python)
and by minigpt's engine, each with 1 and 2 threads, in float32 (GGUF f32) and 8-bit weights (minigpt's
--quantize int8 against GGUF q8_0). A decode step reads every weight once, so besides ms per token the
table gives the share of the machine's memory bandwidth each side turns into tokens: weight bytes read
per token x tokens/s over the copy bandwidth measured here (a large tensor copy, read plus write).
Each side decodes `rounds` times, the two sides taking turns, and keeps its best round: a shared machine
that slows down for a while then slows both sides, and noise only ever adds time.
"""

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..formats.gguf import save_gguf
from ..infer.engine import Engine
from ..infer.sampling import SamplingParams
from ..model import GPT, GPTConfig
from ..nn.decode_layout import decode_layout
from ..nn.int8 import quantize_int8
from ..tokenizers import CharTokenizer, load_tokenizer
from .process import progress, torch_threads

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's 65
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
# GPT-2 blocks with the tanh GELU: the architecture llama.cpp runs as "gpt2", exactly as minigpt computes it
MODELS = {
    "6x384 char (shakespeare_char shape)": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, bias=False),
    "GPT-2 124M shape": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}
PRECISIONS = (("f32", "float32"), ("q8_0", "int8"))  # (llama.cpp's GGUF type, minigpt's weights)
BYTES_PER_WEIGHT = {"f32": 4.0, "q8_0": 34 / 32, "float32": 4.0, "int8": 1.0}  # q8_0: 32 int8 and one f16 scale


def bench_llama_cpp(
    new_tokens: int = 64,
    threads: tuple[int, ...] = (1, 2),
    rounds: int = 3,
    compiled: tuple[int, ...] | None = None,
    compiled_models: tuple[str, ...] | None = None,
) -> list[dict] | None:
    """One row per model, precision and thread count: both sides' ms per token, tokens/s and bandwidth use.
    minigpt --compile is timed too, in both precisions, at the thread counts in compiled and for the MODELS
    named in compiled_models (None: all of them)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        progress("llama.cpp: skipped (llama-cpp-python is not installed: pip install llama-cpp-python)")
        return None
    bandwidth = copy_bandwidth()
    progress(f"llama.cpp: memory copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in MODELS.items():
            model, tokenizer = benchmark_model(shape)
            ids = tokenizer.encode(PROMPT)
            weights = decode_weights(model)
            for gguf_type, ours in PRECISIONS:
                path = save_gguf(model, tokenizer, Path(tmp) / f"{len(rows)}.gguf", outtype=gguf_type)
                # minigpt's weights as sample, chat and serve lay them out (infer/ready.py)
                mine = (quantize_int8 if ours == "int8" else decode_layout)(copy.deepcopy(model))
                for n in threads:
                    llm = Llama(
                        str(path),
                        n_ctx=model.config.block_size,
                        n_threads=n,
                        n_threads_batch=n,
                        logits_all=True,  # llama-cpp-python keeps the logits (for the argmax) only so
                        verbose=False,
                    )
                    sides = {"llama.cpp": gguf_type, "minigpt": ours}
                    engines = {"minigpt": Engine(mine, max_batch=1, device="cpu")}  # int8 models have no lm_head.weight
                    if n in (threads if compiled is None else compiled) and name in (compiled_models or MODELS):
                        # compiled first
                        sides["minigpt --compile"] = ours
                        engines["minigpt --compile"] = Engine(mine, max_batch=1, device="cpu", compile_decode=True)
                        with torch_threads(n):
                            start = time.perf_counter()
                            minigpt_decode(engines["minigpt --compile"], ids, 4)  # compiles (threads are compiled in)
                            compile_s = time.perf_counter() - start
                    ms = dict.fromkeys(sides, float("inf"))
                    for _ in range(rounds):
                        ms["llama.cpp"] = min(
                            ms["llama.cpp"], llama_cpp_decode(llm, ids, new_tokens, model.config.vocab_size)
                        )
                        with torch_threads(n):
                            for side, engine in engines.items():
                                ms[side] = min(ms[side], minigpt_decode(engine, ids, new_tokens))
                    llm.close()
                    row = {
                        "model": name,
                        "params": model.num_params(),
                        "threads": n,
                        "new_tokens": new_tokens,
                        "rounds": rounds,
                    }
                    for side, weights_type in sides.items():
                        read = weights * BYTES_PER_WEIGHT[weights_type]
                        row[side] = {
                            "weights": weights_type,
                            "ms_per_token": round(ms[side], 2),
                            "tokens_per_s": round(1000 / ms[side], 1),
                            "bandwidth_use": round(read * 1000 / ms[side] / bandwidth, 3),
                        }
                    if "minigpt --compile" in row:
                        row["minigpt --compile"]["compile_s"] = round(compile_s, 1)
                    rows.append(row)
                    times = " vs ".join(f"{ms[side]:.1f}" for side in sides)
                    progress(
                        f"llama.cpp: {name}, {gguf_type}/{ours}, threads {n}: {times} ms/token ({', '.join(sides)})"
                    )
                path.unlink()
    return [{"copy_bandwidth_gb_s": round(bandwidth / 1e9, 2)}, *rows]


def benchmark_model(shape: dict):
    """A random-weight GPT of this shape and its tokenizer (tiny Shakespeare's characters, or GPT-2's BPE)."""
    tokenizer = CharTokenizer(list(CHARS), with_eot=False) if "bias" in shape else load_tokenizer("gpt2")
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, mlp="gelu", **shape)).eval(), tokenizer


def decode_weights(model) -> int:
    """Weights one decode step reads: every matrix, the output layer once, and not the position table (one row)."""
    positions = model.transformer.wpe.weight.numel() if "wpe" in model.transformer else 0
    return sum(p.numel() for p in model.parameters() if p.dim() == 2) - positions


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second a large tensor copy moves (each byte read once and written once), the best of repeats."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best


def llama_cpp_decode(llm, ids: list[int], new_tokens: int, vocab_size: int) -> float:
    """llama.cpp's ms per generated token, greedy, after the prompt (its prefill is not timed)."""
    llm.reset()
    llm.eval(ids)
    times = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1][:vocab_size]))  # argmax by hand, as minigpt's greedy
        start = time.perf_counter()
        llm.eval([token])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def minigpt_decode(engine: Engine, ids: list[int], new_tokens: int) -> float:
    """minigpt's ms per generated token on engine (batch 1; with compile_decode as sample and chat --compile
    run it), greedy, after the prompt."""
    params = SamplingParams(max_tokens=new_tokens + 1, temperature=0, ignore_eos=True)
    times, start = [], None
    for _ in engine.generate(ids, params):  # the first token comes with the prefill: not timed
        now = time.perf_counter()
        if start is not None:
            times.append(now - start)
        start = now
    return 1000 * float(np.median(times))


def llama_cpp_table(results: list[dict]) -> str:
    bandwidth, rows = results[0]["copy_bandwidth_gb_s"], results[1:]
    lines = [
        f"decode at batch 1, greedy, {rows[0]['new_tokens']} tokens after the same prompt, each side's best of "
        f"{rows[0]['rounds']} rounds taken in turns; memory copy bandwidth {bandwidth:.1f} GB/s; --compile: "
        "decode steps compiled (sample and chat --compile), the compiling timed apart",
        "",
        "| model | weights (llama.cpp / minigpt) | threads | llama.cpp ms/token (tokens/s, bandwidth) | "
        "minigpt ms/token (tokens/s, bandwidth) | minigpt / llama.cpp time | minigpt --compile ms/token "
        "(compiling) | --compile / llama.cpp time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        theirs, ours = row["llama.cpp"], row["minigpt"]
        cells = [
            f"{s['ms_per_token']:.2f} ({s['tokens_per_s']:,.0f}/s, {s['bandwidth_use']:.0%})" for s in (theirs, ours)
        ]
        compiled = row.get("minigpt --compile")
        if compiled:
            cells += [
                f"{compiled['ms_per_token']:.2f} ({compiled['compile_s']:.0f} s)",
                f"{compiled['ms_per_token'] / theirs['ms_per_token']:.2f}x",
            ]
        else:
            cells += ["-", "-"]
        lines.append(
            f"| {row['model']} | {theirs['weights']} / {ours['weights']} | {row['threads']} | {cells[0]} | {cells[1]} "
            f"| {ours['ms_per_token'] / theirs['ms_per_token']:.2f}x | {cells[2]} | {cells[3]} |"
        )
    return "\n".join(lines)
