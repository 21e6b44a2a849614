"""`minigpt chat` logic: history, cache reuse across turns, dropping old turns, commands, piped mode."""

import io

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.errors import MinigptError
from minigpt.infer.chat import ChatSession, run_chat
from minigpt.infer.engine import Engine
from minigpt.infer.ready import ReadyModel
from minigpt.infer.sampling import CLI_NAMES, SamplingParams, check_sampling
from minigpt.tokenizers import build_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz ?!.0123456789\n"


def _chat_model(block_size=96, seed=0):
    tokenizer = build_tokenizer("char", [ALPHABET, "x"])
    tokenizer.add_chat_tokens()
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    return model.eval(), tokenizer


def _greedy_answer(model, tokenizer, messages, max_new_tokens):
    """The answer by plain generation over the whole rendered conversation (no cache kept between turns)."""
    ids = tokenizer.encode_chat(messages)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=0)[0, len(ids) :].tolist()
    stops = [i for i, t in enumerate(out) if t in tokenizer.stop_token_ids]
    return tokenizer.decode(out[: stops[0]] if stops else out)


def test_turns_reuse_the_cache_and_match_plain_generation():
    model, tokenizer = _chat_model()
    session = ChatSession(Engine(model, tokenizer), SamplingParams(max_tokens=8, temperature=0), "be brief")
    for question in ("hi", "what is 2?", "ok"):
        expected = _greedy_answer(model, tokenizer, [*session.messages, {"role": "user", "content": question}], 8)
        held = session.held
        assert "".join(session.reply(question)) == expected
        assert session.messages[-1] == {"role": "assistant", "content": expected}
        if held is not None:  # the later turns continued the cache the last answer left
            assert session.held.ids[: len(held.ids)] == held.ids
            assert held.ids == tokenizer.encode_chat(session.messages)[: len(held.ids)]
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2


def test_oldest_turns_are_dropped_when_the_context_fills():
    model, tokenizer = _chat_model(block_size=64)
    session = ChatSession(Engine(model, tokenizer), SamplingParams(max_tokens=8, temperature=0), "sys")
    for i in range(6):
        "".join(session.reply(f"question number {i}"))
    assert session.dropped_turns > 0
    assert session.messages[0] == {"role": "system", "content": "sys"}
    assert session.messages[1] == {"role": "user", "content": f"question number {session.dropped_turns}"}
    assert len(tokenizer.encode_chat(session.messages)) <= 64
    with pytest.raises(MinigptError, match="this message needs .* tokens"):
        "".join(session.reply("a" * 80))
    assert session.messages[-1]["role"] == "assistant"  # the refused message is not kept


def test_piped_chat_answers_one_line_per_line_with_commands():
    model, tokenizer = _chat_model(block_size=48)
    lines = "hello\n/system talk\nsecond\n/reset\nthird\n/bogus\n" + "more words here\n" * 4 + "/quit\nnever read\n"
    out, err = io.StringIO(), io.StringIO()
    run_chat(
        ReadyModel(model, tokenizer),
        SamplingParams(max_tokens=6, temperature=0),
        stdin=io.StringIO(lines),
        stdout=out,
        stderr=err,
    )
    answers = out.getvalue().split("\n")[:-1]
    assert len(answers) == 7  # hello, second, third and the four repeats; commands print nothing to stdout
    assert "unknown command '/bogus'" in err.getvalue()
    assert err.getvalue().count("the context is full") == 1  # told once


def test_seeded_sampling_is_reproducible():
    model, tokenizer = _chat_model()
    settings = SamplingParams(max_tokens=10, temperature=1.0, seed=7)
    first = [
        ("".join(s.reply("hi")), "".join(s.reply("again"))) for s in [ChatSession(Engine(model, tokenizer), settings)]
    ]
    second = [
        ("".join(s.reply("hi")), "".join(s.reply("again"))) for s in [ChatSession(Engine(model, tokenizer), settings)]
    ]
    assert first == second


def test_a_model_without_chat_template_talks_in_the_servers_plain_transcript():
    from minigpt.chat_template import TRANSCRIPT_STOP, plain_transcript

    tokenizer = build_tokenizer("char", [ALPHABET + ":"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=1, n_embd=8)).eval()
    session = ChatSession(Engine(model, tokenizer), SamplingParams(max_tokens=8, temperature=0))
    answer = "".join(session.reply("hi there"))
    transcript = plain_transcript([{"role": "user", "content": "hi there"}])
    engine = Engine(model, tokenizer)
    expected = engine.submit(
        tokenizer.encode(transcript), SamplingParams(max_tokens=8, temperature=0, stop=[TRANSCRIPT_STOP])
    )
    for _ in engine.drive([expected]):
        pass
    assert answer == expected.text.text and session.messages[-1] == {"role": "assistant", "content": answer}
    err = io.StringIO()
    run_chat(
        ReadyModel(model, tokenizer),
        SamplingParams(max_tokens=4),
        stdin=io.StringIO("hello\n"),
        stdout=io.StringIO(),
        stderr=err,
    )
    assert err.getvalue().count("no chat template; the conversation is a plain transcript") == 1


def test_standard_input_that_is_not_utf8_is_one_error():
    model, tokenizer = _chat_model()
    stdin = io.TextIOWrapper(io.BytesIO(b"hello\n\xff\xfe nonsense\n"), encoding="utf-8")
    out = io.StringIO()
    with pytest.raises(MinigptError, match="standard input is not UTF-8 text"):
        run_chat(
            ReadyModel(model, tokenizer),
            SamplingParams(max_tokens=2, temperature=0),
            stdin=stdin,
            stdout=out,
            stderr=io.StringIO(),
        )


def test_bad_settings_are_refused():
    with pytest.raises(MinigptError, match="top_p must be a number in"):
        ChatSession(Engine(*_chat_model()), SamplingParams(top_p=2.0))


def test_a_seed_no_generator_takes_is_one_line():
    with pytest.raises(MinigptError, match="--seed must be a whole number from 0 to 2\\*\\*64 - 1"):
        check_sampling(SamplingParams(seed=2**70), CLI_NAMES)
