"""Memory follows the conversation, not the model's context: a Qwen2-shaped model with 32,768 positions
(8 layers, 8 KV heads x 64) served and chatted with for one short turn stays far below what KV caches
for its whole context would take (9.5 GB before they grew with use)."""

import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch
import transformers
from helpers import repo_env
from hf_fixtures import make_hf_tokenizer_folder
from serve_helpers import free_port

pytestmark = pytest.mark.slow
LIMIT_MB = 3 * 1024
# the process's peak resident memory, printed as it exits
PEAK_AT_EXIT = (
    "import atexit, sys\n"
    "def peak():\n"
    "    status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
    "    print(f'peak_mb={int(status) / 1024:.0f}', file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from minigpt.cli import main\n"
    "main(sys.argv[1:])\n"
)


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2_32k")
    tokenizer = make_hf_tokenizer_folder(folder)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=512,
        num_attention_heads=8,
        num_key_value_heads=8,
        num_hidden_layers=8,
        intermediate_size=64,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def test_chat_on_a_32k_context_model_stays_small(long_context_model):
    done = subprocess.run(
        [sys.executable, "-c", PEAK_AT_EXIT, "chat", str(long_context_model), "--temperature", "0"]
        + ["--max-new-tokens", "16", "--device", "cpu", "--dtype", "float32"],
        input="Whether 'tis nobler?\n",
        capture_output=True,
        text=True,
        env=repo_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    peak = float(done.stderr.split("peak_mb=")[1].split()[0])
    assert peak < LIMIT_MB, f"chat peaked at {peak:.0f} MB"
    assert len(done.stdout.splitlines()) == 1  # one answer to one message


def test_serve_on_a_32k_context_model_stays_small(long_context_model):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "minigpt", "serve", str(long_context_model), "--port", str(port)]
        + ["--device", "cpu", "--dtype", "float32"],
        stderr=subprocess.PIPE,
        text=True,
        env=repo_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        body = {"messages": [{"role": "user", "content": "Whether 'tis nobler?"}], "max_tokens": 16, "temperature": 0}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0
        status = open(f"/proc/{server.pid}/status").read()
        peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
        assert peak < LIMIT_MB, f"serve peaked at {peak:.0f} MB"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
