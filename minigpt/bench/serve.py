"""How much continuous batching buys a server: aggregate tokens/s for 1, 4 and 8 concurrent clients.

    result = bench_serving()            # the 6 x 384, block 256 char model (shakespeare_char's shape)
    print(serving_table(result))

A randomly initialised model (the time per token depends on the shapes, not the weights) is
served by the real app on a free 127.0.0.1 port; each client streams one completion of
max_tokens tokens over HTTP, as the OpenAI client would. The model has no end-of-text token, so
every request runs to max_tokens. The baseline sends the same requests one after another.
"""

import json
import threading
import time
import urllib.request

import torch

from ..infer.engine import Engine
from ..infer.ready import laid_out_for_decoding
from ..model import GPT, GPTConfig
from ..serve import background_server
from ..serve.app import create_app
from ..tokenizers import CharTokenizer
from .process import progress

SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # its 65 characters
PROMPT = "ROMEO:\nWhat light through yonder window breaks?\n"


def bench_serving(
    n_layer: int = 6,
    n_head: int = 6,
    n_embd: int = 384,
    block_size: int = 256,
    clients: tuple[int, ...] = (1, 4, 8),
    max_tokens: int = 128,
    max_batch: int = 8,
    device: str = "cpu",
) -> dict:
    """Tokens/s and time to first token per number of concurrent streaming clients, and the
    one-after-another baseline for the largest number; returns plain numbers."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer(list(SHAKESPEARE_CHARS), with_eot=False)
    config = GPTConfig(vocab_size=65, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = laid_out_for_decoding(GPT(config).to(device).eval(), torch.device(device), torch.float32)
    engine = Engine(model, tokenizer, max_batch=max_batch, device=device)
    result = {"device": device, "params": model.num_params(), "max_tokens": max_tokens, "max_batch": max_batch}
    with background_server(create_app(engine, "bench")) as url:
        stream_completion(url, max_tokens, seed=0)  # warm-up
        result["concurrent"] = {}
        for c in clients:
            result["concurrent"][c] = _rates(client_load(url, c, max_tokens))
            progress(f"serving, {c} clients: {result['concurrent'][c]['tokens_per_s']:,.0f} tokens/s")
        largest = max(clients)
        start = time.perf_counter()
        tokens = sum(stream_completion(url, max_tokens, seed=i)[1] for i in range(largest))
        result["sequential"] = {"clients": largest, "tokens_per_s": tokens / (time.perf_counter() - start)}
    result["speedup"] = result["concurrent"][largest]["tokens_per_s"] / result["sequential"]["tokens_per_s"]
    return result


def serving_table(result: dict) -> str:
    """The result as a Markdown table."""
    rows = ["| concurrent clients | aggregate tokens/s | time to first token (mean, ms) |", "|---:|---:|---:|"]
    for clients, r in result["concurrent"].items():
        rows.append(f"| {clients} | {r['tokens_per_s']:.0f} | {r['ttft_ms']:.0f} |")
    seq = result["sequential"]
    rows.append(f"| {seq['clients']} one after another | {seq['tokens_per_s']:.0f} | |")
    return "\n".join(rows) + f"\n\n{seq['clients']} concurrent vs one after another: {result['speedup']:.1f}x"


def _rates(load: dict) -> dict:
    return {"tokens_per_s": load["tokens_per_s"], "ttft_ms": load["ttft_ms"]}


def client_load(url: str, clients: int, max_tokens: int, **body) -> dict:
    """`clients` streaming completions at once (threads), each of max_tokens: aggregate tokens/s over the
    wall time of all of them and the mean time to first token; body: more request fields for each."""
    results = [None] * clients

    def client(i: int) -> None:
        results[i] = stream_completion(url, max_tokens, seed=i, **body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if None in results:
        raise RuntimeError(f"a client of {url} got no answer")
    tokens = sum(n for _, n, _ in results)
    return {
        "tokens_per_s": tokens / seconds,
        "ttft_ms": 1000 * sum(ttft for ttft, _, _ in results) / clients,
        "tokens": [n for _, n, _ in results],
        "text": results[0][2],
    }


def stream_completion(url: str, max_tokens: int, seed: int, temperature: float = 1.0, **body) -> tuple[float, int, str]:
    """One streamed completion of PROMPT: (seconds to the first token, tokens received, the text).

    Tokens are counted from the chunks' token_ids (minigpt's server sends them); a server that sends only
    text (llama.cpp's) must serve a character-level model, whose tokens are its characters."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": temperature, "seed": seed, **body}
    body["stream"] = True
    request = urllib.request.Request(
        f"{url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    first, tokens, text = None, 0, []
    with urllib.request.urlopen(request) as response:
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                piece = choice.get("text") or ""
                text.append(piece)
                tokens += len(choice["token_ids"]) if "token_ids" in choice else len(piece)
            if first is None and tokens:
                first = time.perf_counter() - start
    return first or 0.0, tokens, "".join(text)
