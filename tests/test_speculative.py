"""Speculative decoding: greedy text is plain greedy decoding's token for token, sampled tokens keep their
distribution, and the cache is cut back to what was kept (minigpt/infer/speculative.py, engine._speculate)."""

import pytest
import torch
from helpers import run_main, save_untrained_run

from minigpt.errors import MinigptError
from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams, accept_drafts, next_token_probs
from minigpt.infer.speculative import DraftModel, PromptLookup, load_drafter
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import load_tokenizer


def tiny(seed: int, n_layer: int = 2, block_size: int = 64) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=24, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=32)
    return GPT(config).eval()


def run(model, prompt, params, drafter=None, max_context=None):
    engine = Engine(model, max_batch=2, drafter=drafter, max_context=max_context)
    sequence = engine.submit(prompt, params)
    for _ in engine.drive([sequence]):
        pass
    return sequence


PROMPT = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2, 3]


@pytest.mark.parametrize("on_full", ["slide", "stop"])
def test_greedy_text_is_plain_greedy_with_every_drafter(on_full):
    model = tiny(0)
    params = SamplingParams(max_tokens=60, temperature=0, on_full=on_full, ignore_eos=True)
    plain = run(model, PROMPT, params, max_context=40)
    drafters = {
        "lookup": PromptLookup(k=5, min_ngram=1),
        "itself": DraftModel(tiny(0), k=4),  # agrees with every step: all drafts kept
        "other": DraftModel(tiny(1, n_layer=1), k=3),  # mostly wrong: drafts thrown away
    }
    for name, drafter in drafters.items():
        fast = run(model, PROMPT, params, drafter, max_context=40)
        assert fast.tokens == plain.tokens, name
        assert fast.finish_reason == plain.finish_reason, name
        assert fast.drafted > 0, name
        if name == "itself":  # the cache was cut back right when nearly every draft is kept
            assert fast.kept >= len(fast.tokens) * 2 // 3


def test_batch_of_two_decodes_as_usual():
    model = tiny(0)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    engine = Engine(model, max_batch=2, drafter=PromptLookup(min_ngram=1))
    rows = [engine.submit(PROMPT, params), engine.submit(PROMPT[:5], params)]
    for _ in engine.drive(rows):
        pass
    assert rows[0].tokens == run(model, PROMPT, params).tokens
    assert rows[1].tokens == run(model, PROMPT[:5], params).tokens


def test_accepting_a_draft_keeps_the_distribution():
    """A drafted token kept with probability p(token), else a draw from p without it: each emitted
    token has the distribution p exactly, whichever token was drafted."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    params = SamplingParams(temperature=0.7, top_k=3)
    p = next_token_probs(logits, 0.7, 3)
    generator = torch.Generator().manual_seed(0)
    for draft in (0, 1, 3):  # likely, less likely, and cut by top_k
        firsts, seconds = torch.zeros(4), torch.zeros(4)
        for _ in range(2000):
            tokens = accept_drafts(logits, [draft], params, generator)
            firsts[tokens[0]] += 1
            if len(tokens) == 2:
                seconds[tokens[1]] += 1
        assert (firsts / 2000 - p[0]).abs().max() < 0.04, draft
        assert abs(seconds.sum() / 2000 - p[0, draft]) < 0.04  # kept as often as p says
        if seconds.sum() > 300:
            assert (seconds / seconds.sum() - p[1]).abs().max() < 0.08


def test_sampled_speculation_is_reproducible_and_ends_right():
    model = tiny(0)
    params = SamplingParams(max_tokens=30, temperature=0.8, seed=7, ignore_eos=True)
    one = run(model, PROMPT, params, PromptLookup(min_ngram=1))
    two = run(model, PROMPT, params, PromptLookup(min_ngram=1))
    assert one.tokens == two.tokens and len(one.tokens) == 30 and one.finish_reason == "length"


def test_prompt_lookup_copies_what_followed_the_latest_match():
    lookup = PromptLookup(k=3, max_ngram=3, min_ngram=2)
    assert lookup.draft([7, 8, 9, 1, 7, 8, 5, 7, 8], 3) == [5, 7, 8]  # the latest "7 8"
    assert lookup.draft([1, 2, 3, 4], 3) == []  # nothing repeats
    assert lookup.draft([5], 3) == []


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, char_data):
    """A run folder with a tiny untrained char model, and one of another vocabulary."""
    tokenizer = load_tokenizer("char", char_data)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    return save_untrained_run(tmp_path_factory.mktemp("spec") / "run", model, tokenizer, char_data, step=1, val_loss=3)


def test_the_command_line_speculates_to_the_same_greedy_text(char_run, capsys):
    argv = ["sample", char_run, "--prompt", "to be or not to be, to be", "--temperature", 0, "--max-new-tokens", 40]
    code, plain, _ = run_main(capsys, *argv, "--device", "cpu")
    assert code == 0
    for drafter in ("prompt-lookup", char_run):  # a model drafting for itself: every guess kept
        code, fast, err = run_main(capsys, *argv, "--device", "cpu", "--speculative", drafter, "--threads", 1)
        assert code == 0 and fast == plain
        assert "cpu, float32, 1 thread, speculative decoding" in err


def test_threads_come_from_the_flag_or_the_environment(char_run, capsys, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("MINIGPT_THREADS", "lots")
        code, _, err = run_main(capsys, "sample", char_run, "--max-new-tokens", 1)
        assert code == 2 and err.count("\n") == 1 and "MINIGPT_THREADS is 'lots'" in err
        monkeypatch.setenv("MINIGPT_THREADS", "1")
        code, _, err = run_main(capsys, "sample", char_run, "--max-new-tokens", 1, "--device", "cpu")
        assert code == 0 and "cpu, float32, 1 thread\n" in err
        code, _, err = run_main(capsys, "sample", char_run, "--max-new-tokens", 1, "--threads", -2)
        assert code == 2 and "threads is -2" in err
    finally:
        torch.set_num_threads(before)


def test_a_draft_model_of_another_vocabulary_is_refused(char_run, capsys):
    other = load_tokenizer("gpt2")
    with pytest.raises(MinigptError, match="--speculative .* tokenizer"):
        load_drafter(str(char_run), tiny(0), other)
    assert isinstance(load_drafter("prompt-lookup", tiny(0), other), PromptLookup)
    assert load_drafter(None, tiny(0), other) is None
    code, _, err = run_main(capsys, "sample", char_run, "--speculative", char_run / "missing")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


def test_the_benchmark_prompts_come_from_held_out_text(shakespeare_text):
    from minigpt.bench.speculative import workloads

    prompts = workloads(shakespeare_text)
    passage = prompts["continue"]
    assert passage in shakespeare_text[int(len(shakespeare_text) * 0.9) :] and passage.endswith("\n")
    assert prompts["quote"].startswith(passage) and prompts["quote"].endswith(passage[:40])


def test_a_draft_model_guesses_further_while_its_guesses_stand():
    drafter = DraftModel(tiny(0), k=8)
    ids = list(PROMPT)
    first = drafter.draft(ids, 8)
    assert len(first) == 4  # it starts at 4
    second = drafter.draft(ids + first + [0], 8)  # every guess stood
    assert len(second) == 6
    assert len(drafter.draft(ids + [23, 23], 8)) == 5  # a miss: one fewer


def test_generation_without_a_thread_count_takes_the_faster_one(monkeypatch):
    from minigpt.device import set_threads
    from minigpt.infer.engine import fastest_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("MINIGPT_THREADS", raising=False)
    try:
        assert set_threads(None) is None  # nothing asked
        chosen = fastest_threads(tiny(0), torch.device("cpu"))
        assert chosen in (1, before) and torch.get_num_threads() == chosen
    finally:
        torch.set_num_threads(before)
