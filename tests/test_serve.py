"""The OpenAI-compatible server, driven by the official openai client and by raw HTTP."""

import json
import threading
import time

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve_helpers import serve_run, tiny_run  # noqa: E402

from minigpt.serve import background_server as live_server  # noqa: E402


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("chat"), chat=True, seed=1)


@pytest.fixture(scope="module")
def base_server(base_run):
    engine, app = serve_run(base_run)
    with live_server(app) as url:
        yield engine, url


def client(url, key="unused"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_completions_with_the_openai_client_streamed_and_not(base_server):
    engine, url = base_server
    api = client(url)
    ids = engine.tokenizer.encode("To be")
    expected = engine.tokenizer.decode(
        engine.model.generate(torch.tensor([ids]), 12, temperature=0)[0, len(ids) :].tolist()
    )
    done = api.completions.create(model="tiny", prompt="To be", max_tokens=12, temperature=0)
    assert done.choices[0].text == expected and done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (5, 12, 17)
    chunks = list(
        api.completions.create(
            model="tiny",
            prompt="To be",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 12


def test_n_choices_seeds_and_stop_strings(base_server):
    _, url = base_server
    api = client(url)
    first = api.completions.create(model="tiny", prompt="a", max_tokens=20, temperature=1.0, seed=5, n=3)
    again = api.completions.create(model="tiny", prompt="a", max_tokens=20, temperature=1.0, seed=5, n=3)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] and len(set(texts)) > 1  # seeded, and each choice its own
    assert [c.index for c in first.choices] == [0, 1, 2]
    # one character per token; a choice that stopped also spent its end-of-text token
    counts = [20 if c.finish_reason == "length" else len(c.text) + 1 for c in first.choices]
    assert first.usage.completion_tokens == sum(counts)
    stop = texts[0][4:6]
    cut = api.completions.create(model="tiny", prompt="a", max_tokens=20, temperature=1.0, seed=5, stop=[stop])
    assert cut.choices[0].text == texts[0][: texts[0].index(stop)] and cut.choices[0].finish_reason == "stop"


def test_chat_uses_the_runs_chat_template(chat_run):
    engine, app = serve_run(chat_run)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    with live_server(app) as url:
        api = client(url)
        done = api.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
        chunks = list(
            api.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True)
        )
        raw = httpx.post(f"{url}/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "stream": True})
    assert done.choices[0].message.role == "assistant"
    assert done.usage.prompt_tokens == len(engine.tokenizer.encode_chat(messages))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == done.choices[0].message.content
    first = httpx_json_events(raw.text)[0]
    assert first["prompt_token_ids"] == engine.tokenizer.encode_chat(messages, add_generation_prompt=True)


def test_chat_without_a_template_gets_a_plain_text_transcript(base_server):
    engine, url = base_server
    messages = [{"role": "user", "content": "hi"}]
    raw = httpx.post(f"{url}/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "stream": True})
    events = httpx_json_events(raw.text)
    assert events[0]["prompt_token_ids"] == engine.tokenizer.encode("user: hi\nassistant:")
    assert raw.text.endswith("data: [DONE]\n\n")


def httpx_json_events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]


def test_models_health_and_the_playground_page(base_server):
    _, url = base_server
    assert [m.id for m in client(url).models.list().data] == ["tiny"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["n_layer"] == 2
    page = httpx.get(url)
    assert page.status_code == 200 and "minigpt playground" in page.text
    assert "http" not in page.text.replace("http://", "").split("<script>")[1]  # nothing fetched from elsewhere


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", None),
    ("/v1/completions", b"[1, 2]", None),
    ("/v1/completions", {"prompt": "x" * 64}, "prompt"),  # longer than the 64-token context
    ("/v1/completions", {"prompt": "hi", "max_tokens": 63}, "max_tokens"),  # 2 + 63 > 64
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_k": 0}, "top_k"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, "n"),
    ("/v1/completions", {"prompt": "hi", "seed": 1.5}, "seed"),
    ("/v1/completions", {"prompt": "hi", "stop": ["a"] * 17}, "stop"),
    ("/v1/completions", {"prompt": "\u00e9t\u00e9"}, "prompt"),  # characters the char model never saw
    ("/v1/completions", {"prompt": [1, 10_000]}, "prompt"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages"),
    ("/v1/attention", {"token_ids": [1, 2], "layer": 5}, "layer"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_REQUESTS)
def test_bad_requests_get_400_with_an_openai_error_body(base_server, path, body, param):
    _, url = base_server
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(url + path, **kwargs)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


def test_the_openai_client_sees_bad_values_as_bad_requests(base_server):
    _, url = base_server
    with pytest.raises(openai.BadRequestError, match="beyond the context"):
        client(url).completions.create(model="tiny", prompt="hi", max_tokens=500)


def test_request_bodies_have_a_size_cap(base_run):
    _, app = serve_run(base_run, max_body_bytes=1000)
    with live_server(app) as url:
        big = httpx.post(f"{url}/v1/completions", json={"prompt": "a" * 2000})
        chunked = httpx.post(f"{url}/v1/completions", content=iter([b'{"prompt": "', b"a" * 2000, b'"}']))
        small = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 1})
    assert big.status_code == chunked.status_code == 413
    assert "larger than 1000 bytes" in big.json()["error"]["message"] and small.status_code == 200


def test_an_api_key_is_required_once_set(base_run):
    _, app = serve_run(base_run, api_key="s3cret")
    with live_server(app) as url:
        missing = httpx.get(f"{url}/v1/models")
        wrong = httpx.post(f"{url}/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Bearer nope"})
        with pytest.raises(openai.AuthenticationError):
            client(url, "nope").models.list()
        assert client(url, "s3cret").completions.create(model="tiny", prompt="a", max_tokens=2).choices
        health = httpx.get(f"{url}/health")
    assert missing.status_code == wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error" and health.status_code == 200


def slow_engine(engine, seconds: float):
    """Make every engine step take at least `seconds`, so tests can catch requests in flight."""
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        step()

    engine.step = slow_step


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot(base_run):
    engine, app = serve_run(base_run, max_batch=1, max_waiting=1)
    slow_engine(engine, 0.05)
    body = {"prompt": "a", "max_tokens": 40, "stream": True, "temperature": 0}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as first:
            lines = first.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # decoding: it holds the one slot
            leaving = engine.active[0]
            waiting = threading.Thread(target=http.post, args=("/v1/completions",), kwargs={"json": {"prompt": "b"}})
            waiting.start()
            wait_until(lambda: len(engine.waiting) == 1)
            refused = http.post("/v1/completions", json={"prompt": "c"})
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        # the stream is closed after one chunk: its sequence must leave well before its 40 tokens
        wait_until(lambda: leaving.finish_reason is not None, timeout=5)
        assert leaving.finish_reason == "cancelled" and len(leaving.tokens) < 40
        waiting.join(timeout=30)
        assert http.post("/v1/completions", json={"prompt": "d", "max_tokens": 1}).status_code == 200


def test_the_serving_bench_counts_every_streamed_token():
    from minigpt.bench.serve import bench_serving, serving_table

    result = bench_serving(n_layer=1, n_head=2, n_embd=32, block_size=64, clients=(1, 2), max_tokens=4, max_batch=2)
    assert set(result["concurrent"]) == {1, 2} and result["sequential"]["clients"] == 2
    assert all(r["tokens_per_s"] > 0 and r["ttft_ms"] > 0 for r in result["concurrent"].values())
    assert "| 2 one after another |" in serving_table(result)


def test_serve_command_mistakes_are_one_line_errors(capsys, base_run):
    from helpers import run_main

    code, _, err = run_main(capsys, "serve", base_run, "--max-batch", "0")
    assert code == 2 and err.strip() == "error: --max-batch must be at least 1 and --max-waiting 0 or more, got 0, 64"
    code, _, err = run_main(capsys, "serve", base_run, "--port", "70000")
    assert code == 2 and "--port must be in 0..65535" in err and len(err.strip().splitlines()) == 1


def test_attention_runs_in_the_engine_thread_for_the_asked_layer_alone_behind_the_key(base_run, monkeypatch):
    engine, app = serve_run(base_run, api_key="KEY")
    calls = []
    real = engine.model.attention_maps

    def recording(idx, layer=None):
        calls.append((threading.current_thread().name, layer))
        return real(idx, layer)

    monkeypatch.setattr(engine.model, "attention_maps", recording)
    with live_server(app) as url:
        body = {"token_ids": [1, 2, 3], "layer": 0, "head": 1}
        assert httpx.post(f"{url}/v1/attention", json=body).status_code == 401
        answer = httpx.post(f"{url}/v1/attention", json=body, headers={"Authorization": "Bearer KEY"})
        assert answer.status_code == 200 and [len(row) for row in answer.json()["weights"]] == [1, 2, 3]
        too_long = {**body, "token_ids": [1] * 65}  # beyond the 64-token context
        assert (
            httpx.post(f"{url}/v1/attention", json=too_long, headers={"Authorization": "Bearer KEY"}).status_code == 400
        )
    assert calls == [("minigpt-engine", 0)]  # one map, of the asked layer, made where the model's steps run
