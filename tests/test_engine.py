"""The generation engine: continuous batching gives each sequence what it would get alone, the naive
oracle's tokens within the context, and one sequence's failure is its own."""

import pytest
import torch
from helpers import naive_generate

from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams
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


def test_a_kept_cache_is_reused_and_matches_generating_from_the_whole_text():
    model, tokenizer = tiny()
    engine = Engine(model, tokenizer)
    params = SamplingParams(max_tokens=6, temperature=0)
    turns = [tokenizer.encode("user: hi\n"), tokenizer.encode("user: and you\n")]
    text, held, fed = [], None, []
    forward = model.forward

    def counting(idx, *args, **kwargs):
        fed.append(idx.shape[1])
        return forward(idx, *args, **kwargs)

    model.forward = counting
    try:
        for turn in turns:
            text += turn
            fed.clear()
            reply = engine.submit(text, params, cache=held, keep_cache=True)
            while engine.load():
                engine.step()
            assert reply.tokens == run_alone(model, tokenizer, text, params)
            held = reply.cache
            assert held.ids == (text + reply.tokens)[:-1] and held.layers[0].length == len(held.ids)
            text += reply.tokens
        assert fed[0] == len(turns[1]) + 1  # the second turn prefilled only what the cache lacked
    finally:
        del model.forward


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_within_the_context_the_engine_equals_the_naive_oracle(pos_encoding):
    model, tokenizer = tiny(pos_encoding)
    prompts = torch.tensor([tokenizer.encode("the cat"), tokenizer.encode("a dog x")])
    expected = naive_generate(model, prompts, 48 - 7)  # up to the whole context
    engine = Engine(model, tokenizer, max_batch=2)
    params = SamplingParams(max_tokens=41, temperature=0, ignore_eos=True)
    rows = [engine.submit(row, params) for row in prompts.tolist()]
    for _ in engine.drive(rows):
        pass
    assert [r.tokens for r in rows] == expected[:, 7:].tolist()


def test_a_full_context_stops_or_slides_as_the_sequence_asks():
    model, tokenizer = tiny()
    prompt = tokenizer.encode("abc")
    engine = Engine(model, tokenizer, max_context=10)
    stop = engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0))
    slide = engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0, on_full="slide"))
    for _ in engine.drive([stop, slide]):
        assert engine.caches is None or max(engine.caches[0].row_lengths) < 10
    assert stop.finish_reason == "length" and len(prompt) + len(stop.tokens) == 10
    assert slide.finish_reason == "length" and len(slide.tokens) == 30
    assert slide.tokens[:7] == stop.tokens  # the same until the context is full


def test_odd_settings_beside_a_normal_request_leave_it_as_it_would_be_alone():
    model, tokenizer = tiny()
    prompt = tokenizer.encode("hello")
    normal = SamplingParams(max_tokens=12, temperature=0)
    alone = run_alone(model, tokenizer, prompt, normal)
    engine = Engine(model, tokenizer, max_batch=4)
    odd = [
        SamplingParams(max_tokens=12, temperature=1e-45),
        SamplingParams(max_tokens=12, temperature=1e-300, seed=3),
        SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-45, seed=2**64 - 1),
    ]
    sequences = [engine.submit(prompt, normal)] + [engine.submit(prompt, p) for p in odd]
    for _ in engine.drive(sequences):
        pass
    assert sequences[0].tokens == alone
    assert all(s.finish_reason == "length" for s in sequences)
    assert sequences[1].tokens == sequences[2].tokens == sequences[3].tokens == alone  # each is greedy in effect


def test_a_failing_sequence_ends_alone_with_error_and_the_others_go_on():
    model, tokenizer = tiny()
    prompt = tokenizer.encode("hello")
    params = SamplingParams(max_tokens=10, temperature=0)
    alone = run_alone(model, tokenizer, prompt, params)
    engine = Engine(model, tokenizer, max_batch=4)
    good = engine.submit(prompt, params)
    bad_draw = engine.submit(prompt, SamplingParams(max_tokens=10, temperature=1.0), generator="not a generator")
    bad_prefill = engine.submit([1, 2, 10_000], params)  # a token id beyond the vocabulary
    also_good = engine.submit(prompt, params)
    for _ in engine.drive([good, bad_draw, bad_prefill, also_good]):
        pass
    assert bad_draw.finish_reason == bad_prefill.finish_reason == "error"
    assert "IndexError" in bad_prefill.error
    assert good.tokens == also_good.tokens == alone and good.finish_reason == "length"


def test_minus_inf_logits_rule_tokens_out_and_a_row_of_nan_logits_fails_alone():
    model, tokenizer = tiny()
    banned, poison = [0, 1, 2], tokenizer.encode("z")[0]

    def logits_hook(module, args, output):  # tokens 0-2 can never come; a decode step fed "z" comes out NaN
        idx, logits = args[0], output[0]
        logits[..., banned] = float("-inf")
        if idx.shape[1] == 1:
            logits[idx[:, 0] == poison] = float("nan")

    model.register_forward_hook(logits_hook)
    params = SamplingParams(max_tokens=12, temperature=0)
    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=0)
    good_prompt, bad_prompt = tokenizer.encode("hello"), tokenizer.encode("xyz")
    good, drawn = run_alone(model, tokenizer, good_prompt, params), run_alone(model, tokenizer, good_prompt, sampled)
    assert len(good) == len(drawn) == 12 and poison not in good + drawn
    assert not set(banned) & set(good + drawn)
    engine = Engine(model, tokenizer, max_batch=3)
    sequences = [
        engine.submit(good_prompt, params),
        engine.submit(bad_prompt, params),
        engine.submit(good_prompt, sampled),
    ]
    for _ in engine.drive(sequences):
        pass
    bad = sequences[1]
    assert bad.finish_reason == "error" and "not finite" in bad.error
    assert bad.tokens == [poison]  # the untrained model repeats "z"; its first decode step is the NaN one
    assert sequences[0].tokens == good and sequences[2].tokens == drawn


def test_the_cache_adds_rows_as_sequences_join_and_the_earlier_rows_keep_theirs():
    model, tokenizer = tiny("rope")
    prompts = [tokenizer.encode(t) for t in ("the cat sat on", "a", "hello", "xyz")]
    params = SamplingParams(max_tokens=15, temperature=0)
    alone = [run_alone(model, tokenizer, p, params) for p in prompts]
    engine = Engine(model, tokenizer, max_batch=8)
    sequences, rows = [], []
    for prompt in prompts:  # each joins after the earlier ones have decoded a few tokens
        sequences.append(engine.submit(prompt, params))
        for _ in range(3):
            engine.step()
            rows.append(len(engine.caches[0].row_lengths))
    while engine.load():
        engine.step()
    assert [s.tokens for s in sequences] == alone
    assert rows[0] == 1 and sorted(set(rows)) == [1, 2, 4]  # doubled as they came; never max_batch's 8


def test_the_kv_cache_follows_use_and_is_let_go_when_idle():
    torch.manual_seed(0)
    tokenizer = CharTokenizer(CHARS, with_eot=False)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=32768, n_layer=2, n_head=2, n_embd=32, pos_encoding="rope"
    )
    model = GPT(config).eval()
    engine = Engine(model, tokenizer, max_batch=8)
    sequence = engine.submit(tokenizer.encode("hello"), SamplingParams(max_tokens=300, temperature=0))
    capacities = []
    for _ in engine.drive([sequence]):
        if engine.caches is not None:
            capacities.append(engine.caches[0].capacity)
    assert capacities[0] == 256 and max(capacities) == 512  # grown in chunks as the sequence grew
    assert engine.caches is None  # idle: nothing held
