"""`minigpt serve` as a process: graceful SIGTERM, and a bounded load test with clients that leave early."""

import json
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from helpers import repo_env  # noqa: E402
from serve_helpers import free_port, tiny_run  # noqa: E402


def start_server(run_dir, *options):
    port = free_port()
    # one thread: a tiny model's small ops only wait on each other across threads, more so on a busy machine
    env = repo_env(OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "minigpt", "serve", str(run_dir), "--port", str(port), *map(str, options)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start:\n{process.communicate()[0]}")
        time.sleep(0.1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_then_exits(tmp_path):
    run = tiny_run(tmp_path / "run", block_size=512, n_layer=4)
    process, url = start_server(run)
    try:
        body = {"prompt": "a", "max_tokens": 500, "temperature": 0, "stream": True}
        after = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            next(lines)
            process.send_signal(signal.SIGTERM)
            after = list(lines)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        process.kill()
    chunks = [json.loads(line[6:]) for line in after if line != "data: [DONE]"]
    assert after[-1] == "data: [DONE]" and len(chunks) > 1  # generation went on after the signal
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.slow
def test_load_200_requests_from_16_clients_all_answered_and_memory_comes_back(tmp_path):
    run = tiny_run(tmp_path / "run")
    process, url = start_server(run, "--max-batch", 8, "--max-waiting", 4)
    outcomes = []
    lock = threading.Lock()

    def one_request(i: int, http: httpx.Client) -> None:
        rng = random.Random(i)
        kind = rng.choice(["plain", "stream", "leave", "chat"])
        body = {"prompt": "to be or not", "max_tokens": rng.randint(5, 40), "temperature": 1.0, "seed": i}
        if kind == "plain":
            response = http.post("/v1/completions", json=body)
            outcome = (response.status_code, "choices" in response.json() if response.status_code == 200 else None)
        elif kind == "chat":
            chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}
            response = http.post("/v1/chat/completions", json=chat)
            outcome = (response.status_code, "choices" in response.json() if response.status_code == 200 else None)
        else:
            with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
                if response.status_code != 200:
                    response.read()
                    outcome = (response.status_code, None)
                else:
                    lines = [line for line in _take(response.iter_lines(), 2 if kind == "leave" else None)]
                    outcome = (200, kind == "leave" or lines[-1] == "data: [DONE]")
        if outcome[0] == 429:
            outcome = (429, json.loads(response.read())["error"]["type"] == "rate_limit_error")
        with lock:
            outcomes.append(outcome)

    def client(indices) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in indices:
                one_request(i, http)

    try:
        client(range(16))  # warm up: allocator, first requests' imports
        before = rss_mb(process.pid)
        outcomes.clear()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, [range(100 + c, 300, 16) for c in range(16)]))
        health = httpx.get(f"{url}/health").json()
        for _ in range(50):  # streams closed by clients leave at the next step
            if health["active"] == health["waiting"] == 0:
                break
            time.sleep(0.1)
            health = httpx.get(f"{url}/health").json()
        after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert len(outcomes) == 200
    assert all(status in (200, 429) and ok for status, ok in outcomes), outcomes
    assert any(status == 200 for status, _ in outcomes)
    assert health["active"] == health["waiting"] == 0
    assert after - before < 64, f"RSS grew from {before:.0f} MB to {after:.0f} MB"


def _take(lines, count):
    """All lines, or only the first `count` "data:" lines (then the client hangs up)."""
    seen = 0
    for line in lines:
        if line.startswith("data: "):
            yield line
            seen += 1
            if count is not None and seen == count:
                return


def _stop(process) -> str:
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=60)[0]


@pytest.mark.slow
def test_one_access_line_per_request_and_no_traceback_for_a_client_that_leaves_mid_body(tmp_path):
    import re
    import socket

    run = tiny_run(tmp_path / "run")
    process, url = start_server(run)
    try:
        body = {"prompt": "a", "max_tokens": 3, "temperature": 0}
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as response:
            list(response.iter_lines())
        deep = httpx.post(f"{url}/v1/completions", content=b"[" * 100_000 + b"]" * 100_000)
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as leaving:  # promises 1,000 bytes, sends 8, leaves
            leaving.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"prompt')
        time.sleep(0.5)
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        out = _stop(process)
    assert "Traceback" not in out
    lines = out.splitlines()
    assert len([line for line in lines if re.fullmatch(r"POST /v1/completions 200 3 tokens \d+ ms", line)]) == 2
    assert any(re.fullmatch(r"POST /v1/completions 400 0 tokens \d+ ms", line) for line in lines)


@pytest.mark.slow
def test_quiet_serves_without_access_lines(tmp_path):
    process, url = start_server(tiny_run(tmp_path / "run"), "--quiet")
    try:
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200
    finally:
        out = _stop(process)
    assert "/v1/completions" not in out and "serving" in out


@pytest.mark.parametrize("where", ["port in use", "an address not ours"])
def test_a_port_in_use_or_a_host_not_ours_is_one_line_before_any_announcement(tmp_path, where):
    import socket

    from helpers import run_cli

    run = tiny_run(tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if where == "port in use":
            options = ["--port", taken.getsockname()[1]]
        else:
            options = ["--host", "203.0.113.7", "--port", free_port()]  # TEST-NET-3: no interface here has it
        done = run_cli("serve", run, *options, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: cannot listen on")
    assert "serving" not in done.stderr and "Traceback" not in done.stderr
