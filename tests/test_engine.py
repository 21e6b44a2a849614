"""The generation engine: continuous batching gives each sequence what it would get alone."""

import pytest
import torch

from minigpt.infer.engine import Conversation, Engine, SamplingParams
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer

CHARS = list("abcdefghijklmnopqrstuvwxyz .,:\n")


def tiny(pos_encoding="learned", with_eot=False):
    torch.manual_seed(0)
    tokenizer = CharTokenizer(CHARS, with_eot=with_eot)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32, pos_encoding=pos_encoding
    )
    return GPT(config).eval(), tokenizer


def run_alone(model, tokenizer, prompt, params):
    return list(Engine(model, tokenizer, max_batch=1).generate(prompt, params))


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_greedy_engine_output_equals_model_generate(pos_encoding):
    model, tokenizer = tiny(pos_encoding)
    prompt = tokenizer.encode("hello there")
    tokens = run_alone(model, tokenizer, prompt, SamplingParams(max_tokens=20, temperature=0))
    expected = model.generate(torch.tensor([prompt]), 20, temperature=0)[0, len(prompt) :].tolist()
    assert tokens == expected


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_a_sequence_gets_the_same_tokens_alone_or_beside_others(pos_encoding):
    model, tokenizer = tiny(pos_encoding)
    prompts = [tokenizer.encode(t) for t in ("a", "the cat sat on", "hello", "xyz xyz xyz, xyz", "q")]
    params = [
        SamplingParams(max_tokens=n, temperature=0 if i % 2 == 0 else 1.0, seed=i)
        for i, n in enumerate((12, 5, 20, 9, 15))
    ]
    alone = [run_alone(model, tokenizer, p, s) for p, s in zip(prompts, params)]
    engine = Engine(model, tokenizer, max_batch=3)  # two must wait, then join as others leave
    sequences = [engine.submit(p, s) for p, s in zip(prompts, params)]
    batch_sizes = []
    while engine.load():
        engine.step()
        batch_sizes.append(len(engine.active))
    assert [s.tokens for s in sequences] == alone
    assert max(batch_sizes) == 3 and all(s.finish_reason == "length" for s in sequences)


def test_stop_strings_stop_tokens_and_the_end_of_the_context():
    model, tokenizer = tiny(with_eot=True)
    prompt = tokenizer.encode("abc")
    free = run_alone(model, tokenizer, prompt, SamplingParams(max_tokens=10, temperature=0))
    text = tokenizer.decode(free)
    engine = Engine(model, tokenizer)
    stop = text[3:5]
    stopped = engine.submit(prompt, SamplingParams(max_tokens=10, temperature=0, stop=[stop]))
    long = engine.submit(prompt, SamplingParams(max_tokens=1000, temperature=0))
    while engine.load():
        engine.step()
    engine.stop_token_ids = {free[6]}  # as if the model had written its end-of-text token there
    at_token = engine.submit(prompt, SamplingParams(max_tokens=10, temperature=0))
    while engine.load():
        engine.step()
    assert (stopped.finish_reason, stopped.text.text) == ("stop", text[: text.index(stop)])
    assert (at_token.finish_reason, at_token.tokens) == ("stop", free[: free.index(free[6]) + 1])
    assert long.finish_reason == "length" and len(prompt) + len(long.tokens) == 48  # block_size


def test_listeners_hear_text_pieces_that_add_up_and_one_finish():
    model, tokenizer = tiny()
    events = []
    engine = Engine(model, tokenizer)
    sequence = engine.submit(tokenizer.encode("ab"), SamplingParams(max_tokens=7, temperature=0), events.append)
    while engine.load():
        engine.step()
    assert "".join(e.text for e in events) == tokenizer.decode(sequence.tokens)
    assert [e.finish_reason for e in events] == [None] * 6 + ["length"]


def test_a_cancelled_sequence_leaves_its_slot_before_the_next_step():
    model, tokenizer = tiny()
    engine = Engine(model, tokenizer, max_batch=2)
    first = engine.submit(tokenizer.encode("a"), SamplingParams(max_tokens=30, temperature=0))
    second = engine.submit(tokenizer.encode("b"), SamplingParams(max_tokens=30, temperature=0))
    waiting = engine.submit(tokenizer.encode("c"), SamplingParams(max_tokens=3, temperature=0))
    engine.step()
    assert engine.active == [first, second]
    first.cancel()
    engine.step()
    assert first.finish_reason == "cancelled" and engine.active == [second, waiting]
    before = len(first.tokens)
    engine.step()
    assert len(first.tokens) == before


def test_the_background_thread_serves_submitted_sequences_and_drains_on_stop():
    model, tokenizer = tiny()
    engine = Engine(model, tokenizer, max_batch=2)
    engine.start()
    sequences = [engine.submit(tokenizer.encode("ab"), SamplingParams(max_tokens=8, temperature=0)) for _ in range(4)]
    engine.stop()
    assert all(s.finish_reason == "length" and len(s.tokens) == 8 for s in sequences)
    assert len({tuple(s.tokens) for s in sequences}) == 1


def test_a_conversation_keeps_its_cache_and_matches_generating_from_the_whole_text():
    model, tokenizer = tiny()
    conversation = Conversation(Engine(model, tokenizer))
    params = SamplingParams(max_tokens=6, temperature=0)
    turns = [tokenizer.encode("user: hi\n"), tokenizer.encode("user: and you\n")]
    text = []
    for turn in turns:
        text += turn
        reply = list(conversation.reply(turn, params))
        assert reply == run_alone(model, tokenizer, text, params)
        text += reply
    assert conversation.caches[0].length == len(text) == len(conversation.ids)
