"""sample, chat and serve --compile: compiled decode steps (infer/compiled_step.py) give the tokens eager
steps give, for one sequence and for a batch of rows at different positions, compile once (the cache length
symbolic, not a compile at every token), and where compiling fails the engine says so in a line and decodes
eagerly."""

import copy

import pytest
import torch
from helpers import run_main, save_untrained_run

from minigpt.infer.chat import ChatSession
from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams
from minigpt.model import GPT, GPTConfig
from minigpt.nn import decode_layout, int8
from minigpt.tokenizers import CharTokenizer


def laid_out_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    return decode_layout(model)


def test_a_compiled_decode_step_gives_the_eager_tokens_compiles_once_and_keeps_to_its_model():
    torch.set_num_threads(2)  # eager steps split their products across threads (tests/conftest.py restores)
    model = laid_out_model()
    params = SamplingParams(max_tokens=30, temperature=0)
    engine = Engine(model, max_batch=1, compile_decode=True)
    for prompt in ([1, 2, 3, 4, 5], [9, 8]):  # a second prompt, of another length, reuses the compiled step
        eager = list(Engine(model, max_batch=1).generate(prompt, params))
        assert list(engine.generate(prompt, params)) == eager and len(eager) == 30
    assert len(engine.compiled.libraries) == 1
    assert not torch._inductor.config.freezing  # frozen for the compiled step's calls, not for the process
    # a second model of the same shapes, other weights: its own tokens, not the first one's frozen weights
    other = laid_out_model()
    with torch.no_grad():
        other.lm_head.weight.mul_(-1)
    eager_other = list(Engine(other, max_batch=1).generate(prompt, params))
    assert eager_other != eager
    assert list(Engine(other, max_batch=1, compile_decode=True).generate(prompt, params)) == eager_other


def test_a_batch_of_rows_at_different_positions_decodes_compiled_as_eagerly():
    torch.set_num_threads(1)
    model = laid_out_model()
    prompts = [[1, 2, 3, 4, 5], [9, 8], [7, 7, 7, 1, 2, 3, 4, 5, 6]]

    def answers(engine):
        # three prompts of three lengths decode side by side, finishing at different steps; then one alone
        batch = [engine.submit(p, SamplingParams(max_tokens=12 + 4 * i, temperature=0)) for i, p in enumerate(prompts)]
        for _ in engine.drive(batch):
            pass
        return [sequence.tokens for sequence in batch] + [
            list(engine.generate([3, 1], SamplingParams(max_tokens=8, temperature=0)))
        ]

    eager = answers(Engine(model, max_batch=4))
    engine = Engine(model, max_batch=4, compile_decode=True)
    engine.compile_steps()  # what serve --compile does before it listens
    # every row at their own positions, every row at one, a lone row
    assert set(key[:1] + key[-1:] for key in engine.compiled.libraries) == {(4, True), (4, False), (1, False)}
    assert answers(engine) == eager and len(set(map(tuple, eager))) == 4
    assert len(engine.compiled.libraries) == 3  # the batch and the lone prompt used the libraries compiled first


def test_where_compiling_fails_the_engine_says_so_and_decodes_eagerly(capsys):
    model, prompt = laid_out_model(), [7, 8, 9]
    params = SamplingParams(max_tokens=10, temperature=0)
    eager = list(Engine(copy.deepcopy(model), max_batch=1).generate(prompt, params))
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}):  # as if no C++ compiler
        assert list(Engine(model, max_batch=1, compile_decode=True).generate(prompt, params)) == eager
    err = capsys.readouterr().err
    assert err.count("compiling the decode step failed") == 1 and "decoding without it" in err


def test_sample_compile_on_the_command_line_writes_the_same_text(tmp_path, capsys):
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ,."), with_eot=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    run = str(save_untrained_run(tmp_path / "run", model, tokenizer))
    argv = ["sample", run, "--prompt", "to be or not", "--temperature", 0, "--max-new-tokens", 20]
    code, plain, _ = run_main(capsys, *argv, "--device", "cpu")
    assert code == 0
    code, compiled, err = run_main(capsys, *argv, "--device", "cpu", "--compile", "--threads", 1)
    assert code == 0 and compiled == plain
    assert "cpu, float32, 1 thread, compiled decode step" in err


@pytest.mark.skipif(not int8.native_int8_kernel(), reason="needs minigpt's int8 kernel (x86 Linux)")
def test_a_compiled_int8_step_calls_the_int8_kernel_and_gives_the_eager_int8_tokens():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = GPTConfig(vocab_size=48, block_size=64, n_layer=2, n_head=2, n_embd=32, tie_weights=False)
    model = int8.quantize_int8(GPT(shape).eval())  # untied: varied tokens, where a tied random model repeats one
    params = SamplingParams(max_tokens=30, temperature=0)
    engine = Engine(model, max_batch=1, device="cpu", compile_decode=True)  # int8 models have no lm_head.weight
    for prompt in ([1, 2, 3, 4, 5], [9, 8]):  # the first compiles the step (its timing runs call the kernel too)
        eager = list(Engine(model, max_batch=1, device="cpu").generate(prompt, params))
        with torch.profiler.profile() as profile:
            assert list(engine.generate(prompt, params)) == eager and len(set(eager)) > 3
    # every forward pass, the eager prefill and the 29 compiled steps, calls the kernel for the model's 9 int8
    # layers (its 8 products and the output layer)
    calls = sum(event.count for event in profile.key_averages() if event.key == "minigpt::int8_linear")
    assert calls == 9 * params.max_tokens
    assert len(engine.compiled.libraries) == 1


def test_a_compiled_chat_answers_as_an_eager_one_turn_after_turn():
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ?!.\n"), with_eot=True)
    tokenizer.add_chat_tokens()
    torch.manual_seed(0)
    model = decode_layout(
        GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=96, n_layer=2, n_head=2, n_embd=32))
    )
    params = SamplingParams(max_tokens=12, temperature=0)
    sessions = [
        ChatSession(Engine(model, tokenizer, compile_decode=compiled), params, "be brief") for compiled in (0, 1)
    ]
    answers = []
    for question in ("hi", "what is it?", "ok then"):  # later turns continue the cache the last one left
        eager, compiled = ("".join(session.reply(question)) for session in sessions)
        assert compiled == eager
        answers.append(compiled)
    assert any(answers) and len(sessions[1].engine.compiled.libraries) == 1  # decoded compiled, compiled once
    assert len(sessions[1].held.ids) > 30


def test_a_compiled_batch_of_rows_at_one_position_gives_each_its_eager_tokens():
    model, params = laid_out_model(), SamplingParams(max_tokens=12, temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # one length: the rows decode at one position, compiled
    engine = Engine(model, max_batch=4, compile_decode=True)
    sequences = [engine.submit(prompt, params) for prompt in prompts]
    for _ in engine.drive(sequences):
        pass
    eager = [list(Engine(model, max_batch=1).generate(prompt, params)) for prompt in prompts]
    assert [sequence.tokens for sequence in sequences] == eager and len(set(map(tuple, eager))) == 3
    assert [key[0] for key in engine.compiled.libraries] == [4]  # 3 sequences in 4 rows: the fourth decodes too
