"""How fast generation is, and what the KV cache and batching buy.

    bench_generation(device="cpu")   # 6 layers, 6 heads, 384 wide: the shakespeare_char model

The model is randomly initialised: the time per token depends on the shapes, not on the weights.
Greedy decoding from a 1-token prompt is timed on the generation engine (the KV cache: each step
runs the blocks on one new position), on a CPU also with int8 weights (`--quantize int8`), and
against full recomputation: the forward pass over the whole text so far that each token would
cost without the cache. With block_size >= 1 + new_tokens nothing is ever dropped, so the two do
the same work apart from the cache. Per-token times at the start and at the end show that the
cached cost stays flat as the text grows, where recomputation grows linearly.
"""

import copy
import time

import torch

from ..device import resolve_device
from ..infer.engine import Engine
from ..infer.ready import laid_out_for_decoding
from ..infer.sampling import SamplingParams
from ..model import GPT, GPTConfig
from ..nn.int8 import quantize_int8


def bench_generation(
    n_layer: int = 6,
    n_head: int = 6,
    n_embd: int = 384,
    block_size: int = 1024,
    vocab_size: int = 65,
    new_tokens: int = 1000,
    batch_sizes: tuple[int, ...] = (1, 8),
    device: str = "cpu",
    recompute_tokens: int | None = None,
) -> dict:
    """Tokens/s with and without the KV cache, and the cost of sampling a batch instead of one.

    recompute_tokens (default new_tokens) shortens the slow run without the cache; its rate is
    then measured on shorter texts, which favours recomputation, so the speedup is understated.
    Returns a dict of plain numbers (seconds, tokens/s, milliseconds per token, ratios).
    """
    device = resolve_device(device)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = GPT(config).to(device).eval()
    # what `--quantize int8` gives on a CPU: the same decode reading a quarter of the bytes
    quantized = quantize_int8(copy.deepcopy(model)) if device.type == "cpu" else None
    laid_out_for_decoding(model, device, torch.float32)  # as sample, chat and serve run it
    recompute_tokens = recompute_tokens or new_tokens
    _step_times(model, 1, 20, device)  # warm-up: allocator, kernels, threads
    _recompute_times(model, 20, device)

    cached = _step_times(model, 1, new_tokens, device)
    int8 = None
    if quantized is not None:
        _step_times(quantized, 1, 20, device)
        int8 = sum(_step_times(quantized, 1, new_tokens, device))
    recomputed = _recompute_times(model, recompute_tokens, device)
    batch_seconds = {b: sum(_step_times(model, b, new_tokens, device, temperature=1.0)) for b in batch_sizes}
    window = min(100, new_tokens)
    result = {
        "device": str(device),
        "params": model.num_params(),
        "new_tokens": new_tokens,
        "cache_tokens_per_s": new_tokens / sum(cached),
        "int8_tokens_per_s": new_tokens / int8 if int8 else None,
        "recompute_tokens": recompute_tokens,
        "recompute_tokens_per_s": recompute_tokens / sum(recomputed),
        "cache_first_ms_per_token": 1000 * sum(cached[:window]) / window,
        "cache_last_ms_per_token": 1000 * sum(cached[-window:]) / window,
        "recompute_first_ms_per_token": 1000 * sum(recomputed[:window]) / window,
        "recompute_last_ms_per_token": 1000 * sum(recomputed[-window:]) / window,
        "batch_seconds": batch_seconds,
    }
    result["cache_speedup"] = result["cache_tokens_per_s"] / result["recompute_tokens_per_s"]
    if len(batch_sizes) > 1:
        smallest, largest = min(batch_sizes), max(batch_sizes)
        result["batch_time_ratio"] = batch_seconds[largest] / batch_seconds[smallest]
    return result


def _step_times(model, batch_size: int, new_tokens: int, device, temperature: float = 0.0) -> list[float]:
    """Seconds taken by each step of the engine: one token for each of batch_size sequences (the
    first step also prefills the prompt and so writes two)."""
    engine = Engine(model, max_batch=batch_size, device=device)
    params = SamplingParams(new_tokens, temperature, seed=0, on_full="slide", ignore_eos=True)
    sequences = [engine.submit([0], params) for _ in range(batch_size)]
    times = []
    start = time.perf_counter()
    for _ in engine.drive(sequences):  # each step has its tokens on the host: like a caller printing them
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times


@torch.inference_mode()
def _recompute_times(model, new_tokens: int, device) -> list[float]:
    """Seconds that each of new_tokens tokens would take without a KV cache: a forward pass over the
    whole text so far (of random token ids: the time depends on the length, not the ids)."""
    text = torch.randint(model.config.vocab_size, (1, new_tokens), device=device)
    times = []
    for length in range(1, new_tokens + 1):
        start = time.perf_counter()
        model(text[:, :length], only_last=True)[0].cpu()
        times.append(time.perf_counter() - start)
    return times
