"""`minigpt bench --serve --llama-cpp`: minigpt's server against llama.cpp's, same weights, same load.

    result = bench_serving_llama_cpp()   # None, with one line, when llama-cpp-python's server is missing
    print(serving_llama_cpp_table(result))

The 6 x 384 char benchmark model (random weights: the time per token depends on the shapes) is written
to GGUF f32 by minigpt's own export and served by `python -m llama_cpp.server` (llama-cpp-python's
OpenAI-compatible server) in a subprocess, and the same model object, float32, by minigpt's app and
engine in a thread of this process (minigpt does not read GGUF: the weights are the ones the GGUF was
written from). Both get the same load as bench/serve.py's: 1, 4 and 8 clients at once, each streaming one
completion of /v1/completions, same prompt, max_tokens, greedy (temperature 0), with the same thread
count on both sides. llama.cpp's server has a process of its own; minigpt's shares this one with the
clients' threads (which mostly wait on their sockets).

What llama-cpp-python's server does with concurrent requests: it holds one llama.cpp context with one
sequence, and each request takes a lock for the whole of its generation, so requests are served one
after another; by default (`interrupt_requests`) a request that is waiting for the lock cuts the one
streaming short, which then ends early with [DONE]. The bench turns that off, so that every client gets
all its tokens and waits its turn. minigpt's engine batches the running requests into one forward pass
per step (continuous batching).
"""

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from ..formats.gguf import save_gguf
from ..infer.engine import Engine
from ..infer.ready import laid_out_for_decoding
from ..serve import background_server
from ..serve.app import create_app
from .llama_cpp import MODELS, benchmark_model
from .process import progress, torch_threads
from .serve import PROMPT, client_load, stream_completion

MODEL = "6x384 char (shakespeare_char shape)"
INSTALL = "pip install 'llama-cpp-python[server]'"
# minigpt's sides, and the name of each one's tokens/s over llama.cpp's in a row
SPEEDUPS = {"minigpt": "speedup", "minigpt --compile": "compiled_speedup"}
SIDES = ("llama.cpp", *SPEEDUPS)
# llama.cpp takes token 11 (';' in the char vocabulary) as end of text when a GPT-2-style GGUF names none;
# minigpt's char model has no end of text, so llama.cpp is kept from ending early on it
NO_EOS = {"logit_bias": {"11": -100.0}}
SAME_GREEDY = {"repeat_penalty": 1.0}  # llama-cpp-python's server default (1.1) would change greedy's tokens


def bench_serving_llama_cpp(
    clients: tuple[int, ...] = (1, 4, 8),
    max_tokens: int = 128,
    threads: tuple[int, ...] = (1, 2),
    max_batch: int = 8,
    shape: dict | None = None,
    start_timeout: float = 120.0,
    compiled: tuple[int, ...] | None = None,
) -> dict | None:
    """Per thread count and number of clients: aggregate tokens/s and mean time to first token of
    llama.cpp's server and of minigpt's, and minigpt's tokens/s over llama.cpp's; minigpt serve --compile
    too at the thread counts in compiled (None: all), its compiling (before it listens) timed apart."""
    try:
        import llama_cpp.server.app  # noqa: F401 (its FastAPI, sse-starlette, starlette-context, pydantic-settings)
    except ImportError as e:
        progress(f"llama.cpp server: skipped ({e.name} is not installed: {INSTALL})")
        return None
    import llama_cpp

    model, tokenizer = benchmark_model(shape or MODELS[MODEL])
    result = {
        "model": MODEL if shape is None else "custom",
        "params": model.num_params(),
        "weights": "GGUF f32 / float32",
        "prompt_tokens": len(tokenizer.encode(PROMPT)),
        "max_tokens": max_tokens,
        "max_batch": max_batch,
        "llama_cpp_python": llama_cpp.__version__,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = save_gguf(model, tokenizer, Path(tmp) / "model.gguf", outtype="f32")
        laid_out_for_decoding(model, torch.device("cpu"), torch.float32)  # as `minigpt serve` runs it
        for n in threads:
            with llama_cpp_server(path, n, model.config.block_size, Path(tmp) / "server.log", start_timeout) as url:
                theirs, their_text = _load(url, clients, max_tokens, **NO_EOS, **SAME_GREEDY)
            ours, compiling, texts = {}, {}, [their_text]
            with torch_threads(n):
                for side in (
                    ("minigpt", "minigpt --compile")
                    if n in (threads if compiled is None else compiled)
                    else ("minigpt",)
                ):
                    engine = Engine(
                        model, tokenizer, max_batch=max_batch, device="cpu", compile_decode="compile" in side
                    )
                    if engine.compiled is not None:  # as minigpt serve --compile does before it listens
                        start = time.perf_counter()
                        engine.compile_steps()
                        compiling[side] = round(time.perf_counter() - start, 1)
                    with background_server(create_app(engine, "bench")) as url:
                        ours[side], text = _load(url, clients, max_tokens)
                    texts.append(text)
            for c in clients:
                row = {"threads": n, "clients": c, "llama.cpp": theirs[c]}
                for side, rates in ours.items():
                    row[side] = rates[c] | ({"compile_s": compiling[side]} if side in compiling else {})
                    row[SPEEDUPS[side]] = round(rates[c]["tokens_per_s"] / theirs[c]["tokens_per_s"], 2)
                result["rows"].append(row)
                mine = " and ".join(f"{row[side]['tokens_per_s']:,.0f} ({row[SPEEDUPS[side]]:.2f}x)" for side in ours)
                progress(
                    f"serving vs llama.cpp, threads {n}, clients {c}: {theirs[c]['tokens_per_s']:,.0f} vs {mine} "
                    f"tokens/s ({', '.join(ours)})"
                )
            result["same_text"] = result.get("same_text", True) and all(text == their_text for text in texts)
    result["best"] = best_of_threads(result["rows"])
    return result


def best_of_threads(rows: list[dict]) -> dict:
    """Per number of clients, each side at its fastest thread count, and minigpt's tokens/s over llama.cpp's
    (speedup; with --compile, compiled_speedup)."""
    best = {}
    for c in dict.fromkeys(row["clients"] for row in rows):
        mine = [row for row in rows if row["clients"] == c]
        best[c] = {
            side: max(
                ({"threads": r["threads"], **r[side]} for r in mine if side in r), key=lambda s: s["tokens_per_s"]
            )
            for side in SIDES
            if any(side in r for r in mine)
        }
        for side, speedup in SPEEDUPS.items():
            if side in best[c]:
                best[c][speedup] = round(best[c][side]["tokens_per_s"] / best[c]["llama.cpp"]["tokens_per_s"], 2)
    return best


def _load(url: str, clients: tuple[int, ...], max_tokens: int, **body) -> tuple[dict, str]:
    """One warm-up request, then each number of clients (every client must get all its tokens): the
    rates per number of clients, and the greedy text."""
    text = stream_completion(url, max_tokens, seed=0, temperature=0, **body)[2]
    rates = {}
    for c in clients:
        load = client_load(url, c, max_tokens, temperature=0, **body)
        if load["tokens"] != [max_tokens] * c:
            raise RuntimeError(f"{url}: the clients got {load['tokens']} tokens, not {max_tokens} each")
        rates[c] = {"tokens_per_s": round(load["tokens_per_s"], 1), "ttft_ms": round(load["ttft_ms"], 1)}
    return rates, text


@contextlib.contextmanager
def llama_cpp_server(gguf: Path, threads: int, n_ctx: int, log: Path, start_timeout: float = 120.0):
    """`python -m llama_cpp.server` on a free 127.0.0.1 port, serving gguf; yields its base URL once it
    answers, and ends the process however the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--interrupt_requests",
        "false",
        "--verbose",
        "false",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout
            while not _answers(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"llama.cpp's server did not start (exit code {process.poll()}):\n{tail}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serving_llama_cpp_table(result: dict) -> str:
    """The result as a Markdown table."""
    lines = [
        f"{result['model']} ({result['params'] / 1e6:.1f}M params, {result['weights']}), {result['prompt_tokens']} "
        f"prompt tokens, {result['max_tokens']} tokens per client, greedy, streamed; llama-cpp-python "
        f"{result['llama_cpp_python']} (one sequence: requests one after another); minigpt max_batch "
        f"{result['max_batch']}; same text on both sides: {'yes' if result.get('same_text') else 'no'}",
        "",
        "| threads | clients | llama.cpp server tokens/s | llama.cpp TTFT (mean, ms) | minigpt serve tokens/s "
        "| minigpt TTFT (mean, ms) | minigpt / llama.cpp tokens/s | minigpt serve --compile tokens/s (compiling) "
        "| --compile TTFT (mean, ms) | --compile / llama.cpp tokens/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        theirs, ours = row["llama.cpp"], row["minigpt"]
        compiled = "| - | - | - |"
        if "minigpt --compile" in row:
            mine = row["minigpt --compile"]
            compiled = (
                f"| {mine['tokens_per_s']:,.0f} ({mine['compile_s']:.0f} s) | {mine['ttft_ms']:,.0f} "
                f"| {row['compiled_speedup']:.2f}x |"
            )
        lines.append(
            f"| {row['threads']} | {row['clients']} | {theirs['tokens_per_s']:,.0f} | {theirs['ttft_ms']:,.0f} "
            f"| {ours['tokens_per_s']:,.0f} | {ours['ttft_ms']:,.0f} | {row['speedup']:.2f}x {compiled}"
        )
    if "best" in result:
        best = "; ".join(
            f"{c} at once: llama.cpp {b['llama.cpp']['tokens_per_s']:,.0f} on {b['llama.cpp']['threads']}, "
            + ", ".join(
                f"{side} {b[side]['tokens_per_s']:,.0f} on {b[side]['threads']} ({b[speedup]:.2f}x)"
                for side, speedup in SPEEDUPS.items()
                if side in b
            )
            for c, b in result["best"].items()
        )
        lines += ["", f"each side at its best thread count, tokens/s on threads: {best}"]
    return "\n".join(lines)
