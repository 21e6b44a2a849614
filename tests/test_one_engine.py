"""One engine behind every generation: `minigpt sample`, the API and `minigpt chat` write the engine's
greedy text, and a request with odd sampling settings never harms the one beside it."""

import io
import threading

import httpx
import pytest

pytest.importorskip("fastapi")

from helpers import run_main, save_untrained_run  # noqa: E402
from serve_helpers import serve_run, tiny_run  # noqa: E402
from test_sample import widen_weights  # noqa: E402

from minigpt.infer.engine import Engine  # noqa: E402
from minigpt.infer.sampling import SamplingParams  # noqa: E402
from minigpt.loader import load_model  # noqa: E402
from minigpt.serve import background_server  # noqa: E402

GREEDY = SamplingParams(max_tokens=20, temperature=0)
CPU = ["--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("chat"), chat=True, seed=3)
    model, tokenizer, _ = load_model(run)
    widen_weights(model)  # greedy text that varies, as a trained model's does
    return save_untrained_run(run.parent / "wide", model, tokenizer)


def greedy_text(model, tokenizer, ids) -> str:
    engine = Engine(model, tokenizer, max_batch=1)
    sequence = engine.submit(ids, GREEDY)
    for _ in engine.drive([sequence]):
        pass
    return sequence.text.text


def test_sample_the_api_and_chat_write_the_engines_text(chat_run, capsys, monkeypatch):
    model, tokenizer, _ = load_model(chat_run)
    prompt = "To be, or not"
    expected = greedy_text(model, tokenizer, tokenizer.encode(prompt))
    question = [{"role": "user", "content": "why so?"}]
    expected_answer = greedy_text(model, tokenizer, tokenizer.encode_chat(question, add_generation_prompt=True))
    assert expected and expected_answer  # an untrained model that stopped at once would prove nothing

    code, out, _ = run_main(
        capsys, "sample", chat_run, "--prompt", prompt, "--temperature", 0, "--max-new-tokens", 20, *CPU
    )
    assert code == 0 and out == prompt + expected + "\n"

    monkeypatch.setattr("sys.stdin", io.StringIO("why so?\n"))
    code, out, _ = run_main(capsys, "chat", chat_run, "--temperature", 0, "--max-new-tokens", 20, *CPU)
    assert code == 0 and out == expected_answer.replace("\n", "\\n") + "\n"

    _, app = serve_run(chat_run)
    with background_server(app) as url:
        body = {"prompt": prompt, "max_tokens": 20, "temperature": 0}
        assert httpx.post(f"{url}/v1/completions", json=body).json()["choices"][0]["text"] == expected
        body = {"messages": question, "max_tokens": 20, "temperature": 0}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] == expected_answer


@pytest.mark.parametrize(
    "odd",
    [{"temperature": 1e-45}, {"temperature": 1e-300}, {"top_p": 1e-45}, {"seed": 2**64 + 1, "n": 2}, {"top_p": -1}],
)
def test_an_odd_request_beside_a_normal_one_leaves_it_alone(tmp_path, odd):
    run = tiny_run(tmp_path / "run")
    engine, app = serve_run(run)
    normal = {"prompt": "To be", "max_tokens": 12, "temperature": 0}
    with background_server(app) as url:
        alone = httpx.post(f"{url}/v1/completions", json=normal).json()["choices"][0]["text"]
        replies = {}

        def send(name, body):
            replies[name] = httpx.post(f"{url}/v1/completions", json=body, timeout=60)

        threads = [
            threading.Thread(target=send, args=("normal", normal)),
            threading.Thread(target=send, args=("odd", {**normal, "temperature": 1.0, **odd})),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert replies["normal"].status_code == 200
        assert replies["normal"].json()["choices"][0]["text"] == alone
        assert replies["odd"].status_code in (200, 400), replies["odd"].text
        if replies["odd"].status_code == 400:
            assert replies["odd"].json()["error"]["param"] in odd
        assert httpx.get(f"{url}/health").json()["active"] == 0  # nothing left generating
