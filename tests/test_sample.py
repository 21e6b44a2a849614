"""minigpt.infer.sample: seeds, greedy decoding, stop strings, streaming, prompts and option errors."""

import io

import pytest
import torch
from helpers import run_main, save_untrained_run

from minigpt import GPT, GPTConfig
from minigpt.errors import MinigptError
from minigpt.infer.sample import generate_text
from minigpt.infer.sampling import SamplingParams
from minigpt.infer.text import GeneratedText
from minigpt.loader import load_model
from minigpt.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, char_data):
    """A run folder with one checkpoint of a tiny, untrained char model."""
    tokenizer = load_tokenizer("char", char_data)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
    widen_weights(model)
    return save_untrained_run(
        tmp_path_factory.mktemp("sample") / "run", model, tokenizer, char_data, step=30, val_loss=2.5
    )


def widen_weights(model, std=0.5):
    """Redraw the weight matrices wide, so that even greedy text varies from token to token.

    At GPT-2's initialisation the logits are nearly uniform and greedy decoding repeats one
    character; wide random weights vary as a trained model does, without the cost of training.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    model.eval()


@pytest.fixture(scope="module")
def loaded(run_dir):
    model, tokenizer, _ = load_model(run_dir)
    return model, tokenizer


def sample(loaded, prompt="ROMEO:", num_samples=1, stream_to=None, max_new_tokens=40, **settings):
    model, tokenizer = loaded
    params = SamplingParams(max_tokens=max_new_tokens, **{"temperature": 1.0, "on_full": "slide", **settings})
    return generate_text(model, tokenizer, prompt, params, num_samples=num_samples, stream_to=stream_to)


def test_same_seed_same_text_and_other_seeds_differ(loaded):
    first = sample(loaded, num_samples=3, seed=7)
    assert sample(loaded, num_samples=3, seed=7) == first
    assert sample(loaded, num_samples=3, seed=8) != first
    assert len(set(first)) == 3  # the rows of one batch are sampled independently
    assert all(len(text) == 40 for text in first)  # one character per token


def test_greedy_matches_gpt_generate(loaded):
    model, tokenizer = loaded
    ids = tokenizer.encode("ROMEO:")
    expected = model.generate(torch.tensor([ids]), 60, temperature=0)[0, len(ids) :].tolist()
    assert sample(loaded, max_new_tokens=60, temperature=0, num_samples=2) == [tokenizer.decode(expected)] * 2


def test_tiny_top_p_is_greedy(loaded):
    greedy = sample(loaded, temperature=0)
    assert sample(loaded, top_p=1e-6, seed=1) == greedy
    assert sample(loaded, top_k=1, seed=1) == greedy


def test_stop_strings_cut_at_the_first_occurrence_and_end_generation(loaded):
    model, _ = loaded
    full = sample(loaded, max_new_tokens=80, temperature=0)[0]
    stops = [full[30:32], full[20:23]]
    end = min(full.find(s) + len(s) for s in stops)  # where the first stop string is complete
    cut = min(full.find(s) for s in stops if full.find(s) + len(s) == end)
    steps = []
    original = model.forward

    def counting(*args, **kwargs):
        steps.append(1)
        return original(*args, **kwargs)

    model.forward = counting
    try:
        texts = sample(loaded, max_new_tokens=80, temperature=0, stop=stops, num_samples=2)
    finally:
        del model.forward
    assert 0 < cut < 30 and texts == [full[:cut]] * 2
    # one prefill (both rows share the prompt) chose token 1, each decode step one more: the batch
    # ended as soon as both rows had stopped
    assert len(steps) == end


def test_a_seeded_sample_stops_like_its_unstopped_twin(loaded):
    full = sample(loaded, max_new_tokens=80, seed=3, num_samples=4)
    stopped = sample(loaded, max_new_tokens=80, seed=3, num_samples=4, stop=["e", "\n"])
    cuts = [min(i for i in (t.find("e"), t.find("\n"), len(t)) if i >= 0) for t in full]
    assert stopped == [t[:cut] for t, cut in zip(full, cuts)]


def test_the_command_line_reads_backslash_n_in_stop_strings_as_a_newline(loaded, run_dir, capsys):
    full = sample(loaded, prompt="A", max_new_tokens=200, seed=3)[0]
    assert "\n" in full
    code, out, _ = cli(
        capsys,
        run_dir,
        "--prompt",
        "A",
        "--max-new-tokens",
        200,
        "--temperature",
        1.0,
        "--seed",
        3,
        "--stop",
        "\\n",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    )
    assert code == 0 and out == "A" + full[: full.find("\n")] + "\n"


def test_incremental_decoding_never_splits_a_multibyte_character():
    tokenizer = load_tokenizer("gpt2")
    text = "naïve café — 日本語のテキスト 🙂!"
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some tokens are partial characters
    tracker = GeneratedText(tokenizer, stops=["テキ"])
    shown = []
    for i in ids:
        tracker.add(i)
        shown.append(tracker.printable())
    tracker.finish()
    assert tracker.text == text[: text.find("テキ")]
    assert not any("\ufffd" in s for s in shown)


def test_long_prompt_keeps_its_last_block_size_tokens(loaded, capsys):
    model, tokenizer = loaded
    prompt = "ROMEO: " * 10  # 70 characters, block_size is 32
    assert sample(loaded, prompt, temperature=0) == sample(loaded, tokenizer.encode(prompt)[-32:], temperature=0)
    assert "keeping its last 32" in capsys.readouterr().err


def test_empty_prompt_starts_at_a_newline_for_a_char_model_without_eot(loaded):
    model, tokenizer = loaded
    assert tokenizer.eot_token is None
    assert sample(loaded, "", seed=1) == sample(loaded, "\n", seed=1)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (dict(temperature=-0.5), "temperature must be"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(top_p=0.0), "top_p must be"),
        (dict(top_p=1.5), "top_p must be"),
        (dict(top_k=0), "top_k must be"),
        (dict(max_new_tokens=-1), "max_new_tokens must be"),  # generate_text's words, in Python
        (dict(num_samples=0), "num_samples must be"),
    ],
)
def test_out_of_range_options_are_refused(loaded, options, fragment):
    with pytest.raises(MinigptError, match=fragment):
        sample(loaded, **options)


def cli(capsys, *argv):
    """Run `minigpt sample`; return (exit code, stdout, stderr)."""
    return run_main(capsys, "sample", *argv)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--top-p", "2"], "--top-p must be a number in (0, 1], got 2.0"),
        (["--temperature", "-1"], "--temperature"),
        (["--prompt-file", "/nonexistent/prompt.txt"], "prompt file /nonexistent/prompt.txt does not exist"),
        (["--prompt", "Hello 日本"], "'日', '本'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(run_dir, capsys, argv, fragment):
    code, out, err = cli(capsys, run_dir, "--device", "cpu", *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


def test_cli_prints_prompt_and_samples_with_separators(run_dir, loaded, capsys):
    code, out, _ = cli(
        capsys,
        run_dir,
        "--prompt",
        "ROMEO:",
        "--num-samples",
        "2",
        "--seed",
        "5",
        "--max-new-tokens",
        "30",
        "--temperature",
        "1.0",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    )
    texts = sample(loaded, num_samples=2, seed=5, max_new_tokens=30)
    assert code == 0
    assert out == "".join(f"---------- sample {i + 1} ----------\nROMEO:{t}\n" for i, t in enumerate(texts))


def test_cli_stream_prints_the_same_text(run_dir, capsys):
    argv = [
        run_dir,
        "--prompt",
        "ROMEO:",
        "--seed",
        "5",
        "--max-new-tokens",
        "50",
        "--stop",
        "\n\n",
        "--stop",
        "e",
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    _, plain, _ = cli(capsys, *argv)
    _, streamed, _ = cli(capsys, *argv, "--stream")
    assert streamed == plain


def test_prompt_file(run_dir, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\n", encoding="utf-8")
    code, out, _ = cli(
        capsys, run_dir, "--prompt-file", prompt, "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu"
    )
    assert code == 0 and out.startswith("JULIET:\n") and len(out) == len("JULIET:\n") + 5 + 1


def test_stream_writes_the_first_sample_piece_by_piece(loaded):
    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.pieces = []

        def write(self, text):
            self.pieces.append(text)
            return super().write(text)

    out = Recorder()
    texts = sample(loaded, num_samples=2, seed=2, stop=["\n"], max_new_tokens=30, stream_to=out)
    assert out.getvalue() == texts[0]
    # one character per token, written as it came; the engine's first step chooses two (the prompt's
    # prefill gives one, the first decode step another), so they come as one piece
    assert len(out.pieces) == len(texts[0]) - 1 and len(out.pieces[0]) == 2


CPU = ["--device", "cpu", "--dtype", "float32"]


def test_each_stop_takes_one_string_so_the_path_may_follow(loaded, run_dir, capsys):
    """`--stop "\\n" out/run` used to swallow the path as a second stop string."""
    full = sample(loaded, prompt="A", max_new_tokens=200, seed=3)[0]
    argv = ["--prompt", "A", "--max-new-tokens", 200, "--temperature", 1.0, "--seed", 3, *CPU]
    code, out, _ = run_main(capsys, "sample", "--stop", "\\n", run_dir, *argv)
    assert code == 0 and out == "A" + full[: full.find("\n")] + "\n"


def test_prompt_and_stop_read_backslashes_by_one_rule(loaded, run_dir, capsys):
    expected = sample(loaded, prompt="A\nB", max_new_tokens=10, temperature=0)[0]
    code, out, _ = cli(capsys, run_dir, "--prompt", "A\\nB", "--max-new-tokens", 10, "--temperature", 0, *CPU)
    assert code == 0 and out == "A\nB" + expected + "\n"
    from minigpt.infer.sample import unescape

    assert unescape("a\\tb\\\\n") == "a\tb\\n"  # an escaped backslash stays a backslash


def test_a_seed_too_large_for_a_generator_is_one_line(run_dir, capsys):
    code, _, err = cli(capsys, run_dir, "--seed", "1180591620717411303424", *CPU)
    assert code == 2 and err.count("\n") == 1 and "--seed must be a whole number from 0 to 2**64 - 1" in err


def test_ctrl_c_prints_what_was_generated_so_far(loaded, run_dir, capsys, monkeypatch):
    """Without --stream, an interrupted sample used to print nothing."""
    from minigpt.infer.engine import Engine

    real, steps = Engine.step, []
    expected = sample(loaded, prompt="A", max_new_tokens=6, temperature=0)[0]  # what five steps write

    def interrupted_after_five(self):
        steps.append(1)
        if len(steps) == 6:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(Engine, "step", interrupted_after_five)
    code, out, err = cli(capsys, run_dir, "--prompt", "A", "--temperature", 0, *CPU)
    assert code == 130 and out == "A" + expected + "\n" and "interrupted" in err


def test_help_shows_every_default(capsys):
    code, out, _ = run_main(capsys, "sample", "--help")
    assert code == 0
    for default in ("(default: 0.8)", "(default: 200)", "(default: auto)", "(default: 1)"):
        assert default in " ".join(out.split()), default
