"""minigpt.eval.evaluate: exact, repeatable loss / perplexity / bits per byte over a whole split or file."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import run_main, save_untrained_run

from minigpt import GPT, GPTConfig
from minigpt.data.batches import load_meta
from minigpt.data.prepare import prepare
from minigpt.errors import MinigptError
from minigpt.eval.evaluate import evaluate
from minigpt.loader import load_model
from minigpt.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def root(tmp_path_factory, char_data):
    """A folder with the char data (data/) and a run with an untrained tiny model (run/)."""
    root = tmp_path_factory.mktemp("evaluate")
    shutil.copytree(char_data, root / "data")
    tokenizer = load_tokenizer("char", root / "data")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    save_untrained_run(root / "run", model, tokenizer, root / "data")
    return root


@pytest.fixture(scope="module")
def loaded(root):
    model, tokenizer, _ = load_model(root / "run")
    return model, tokenizer


def test_data_folder_eval_is_exact_and_repeatable(root, loaded):
    model, tokenizer = loaded
    meta = load_meta(root / "data")
    first = evaluate(model, tokenizer, data_dir=root / "data", progress=False)
    assert evaluate(model, tokenizer, data_dir=root / "data", progress=False) == first
    assert first["tokens"] == meta["val_tokens"] - 1
    val_text = tokenizer.decode(np.fromfile(root / "data" / "val.bin", dtype=meta["dtype"]).tolist())
    assert first["bytes"] == len(val_text[1:].encode("utf-8"))  # every character but the first is predicted
    assert first["perplexity"] == pytest.approx(math.exp(first["loss"]))
    # a char model of one text has no special tokens: every predicted token stands for its bytes
    assert first["bits_per_byte"] == pytest.approx(first["loss"] * first["tokens"] / (first["bytes"] * math.log(2)))
    assert abs(first["loss"] - math.log(tokenizer.vocab_size)) < 0.1  # an untrained model guesses uniformly


def test_batch_size_does_not_change_the_result(root, loaded):
    model, tokenizer = loaded
    one = evaluate(model, tokenizer, data_dir=root / "data", batch_size=1, progress=False)
    many = evaluate(model, tokenizer, data_dir=root / "data", batch_size=32, progress=False)
    assert one["tokens"] == many["tokens"]
    assert one["loss"] == pytest.approx(many["loss"], rel=1e-6)


def test_text_file_of_the_val_split_matches_the_data_folder(root, loaded, tmp_path):
    model, tokenizer = loaded
    meta = load_meta(root / "data")
    val_text = tokenizer.decode(np.fromfile(root / "data" / "val.bin", dtype=meta["dtype"]).tolist())
    text_file = tmp_path / "val.txt"
    text_file.write_text(val_text, encoding="utf-8")
    from_file = evaluate(model, tokenizer, text_file=text_file, progress=False)
    from_data = evaluate(model, tokenizer, data_dir=root / "data", progress=False)
    assert from_file["tokens"] == len(val_text) - 1
    assert from_file["bytes"] == len(val_text[1:].encode("utf-8"))
    assert from_file["loss"] == pytest.approx(from_data["loss"], rel=1e-6)


def test_a_data_folder_with_another_tokenizer_is_refused(root, loaded, tmp_path):
    model, tokenizer = loaded
    text_file = tmp_path / "text.txt"
    text_file.write_text("To be, or not to be, that is the question.\n" * 50, encoding="utf-8")
    prepare(str(text_file), "gpt2", tmp_path / "gpt2", num_proc=1, progress=False)
    with pytest.raises(MinigptError, match="prepared with tokenizer 'gpt2' but the model uses 'char'"):
        evaluate(model, tokenizer, data_dir=tmp_path / "gpt2")
    prepare(str(text_file), "char", tmp_path / "char", num_proc=1, progress=False)
    with pytest.raises(MinigptError, match="different 'char' vocabulary"):
        evaluate(model, tokenizer, data_dir=tmp_path / "char")


def cli(capsys, *argv):
    """Run `minigpt eval`; return (exit code, stdout, stderr)."""
    return run_main(capsys, "eval", *argv)


def test_cli_json_defaults_to_the_runs_own_data(root, loaded, capsys):
    code, out, _ = cli(capsys, root / "run", "--json", "--device", "cpu")
    result = json.loads(out)
    expected = evaluate(*loaded, data_dir=root / "data", progress=False)
    assert code == 0
    assert {k: result[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes")} == {
        k: expected[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes")
    }


def test_cli_table(root, capsys):
    code, out, _ = cli(capsys, root / "run", "--device", "cpu")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["source", "tokens", "bytes", "loss", "perplexity", "bits"]


@pytest.mark.parametrize(
    "make_argv, fragment",
    [
        (lambda tmp: ["--data", tmp / "nowhere"], "does not exist"),
        (lambda tmp: ["--text-file", tmp / "missing.txt"], "does not exist"),
        (lambda tmp: ["--text-file", tmp / "empty.txt"], "is empty"),
        (lambda tmp: ["--text-file", tmp / "foreign.txt"], "'日'"),
        (lambda tmp: ["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(root, tmp_path, capsys, make_argv, fragment):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "foreign.txt").write_text("日本", encoding="utf-8")
    code, out, err = cli(capsys, root / "run", "--device", "cpu", *make_argv(tmp_path))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


def test_bits_per_byte_by_hand(tmp_path):
    """Two documents with GPT-2's BPE: the first token is never predicted, and end-of-text is no text.

    With logits that are all zero every prediction costs ln(V) nats, so bits per byte is
    (text tokens predicted) * log2(V) / (their bytes), which we count here by hand.
    """
    from minigpt.tokenizers import load_tokenizer as named

    tokenizer = named("gpt2")
    text = "héllo wörld<|endoftext|>ok"  # 'é' and 'ö' take two bytes each
    ids = tokenizer.encode("héllo wörld") + [tokenizer.eot_token] + tokenizer.encode("ok")
    file = tmp_path / "two.txt"
    file.write_text(text, encoding="utf-8")

    class Uniform(torch.nn.Module):  # every token equally likely
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=1, n_embd=8)

        def forward(self, idx):
            return torch.zeros(*idx.shape, tokenizer.vocab_size), None

    from unittest import mock

    with mock.patch.object(tokenizer, "encode", lambda _: ids):  # the file holds exactly these ids
        result = evaluate(Uniform(), tokenizer, text_file=file, progress=False)
    predicted = ids[1:]
    text_tokens = [i for i in predicted if i != tokenizer.eot_token]
    n_bytes = sum(len(tokenizer.decode([i]).encode("utf-8")) for i in text_tokens)
    assert n_bytes == len("héllo wörld".encode()) + len("ok") - len(tokenizer.decode(ids[:1]).encode())
    assert result["tokens"] == len(predicted) and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(math.log(tokenizer.vocab_size))
    assert result["bits_per_byte"] == pytest.approx(len(text_tokens) * math.log2(tokenizer.vocab_size) / n_bytes)


def test_evaluate_and_generate_leave_the_model_in_its_mode(loaded, root):
    from minigpt.infer.sample import generate_text
    from minigpt.infer.sampling import SamplingParams

    model, tokenizer = loaded
    model.train()
    evaluate(model, tokenizer, data_dir=root / "data", progress=False)
    assert model.training
    generate_text(model, tokenizer, "ROMEO:", SamplingParams(max_tokens=3, seed=0))
    assert model.training
    model.eval()
    generate_text(model, tokenizer, "ROMEO:", SamplingParams(max_tokens=3, seed=0))
    assert not model.training


def test_windows_line_endings_count_the_same_everywhere(tmp_path):
    """prepare kept \\r\\n while eval --text-file translated it: 25 bytes in a file, 23 counted."""
    file = tmp_path / "crlf.txt"
    file.write_bytes(b"first line\r\nsecond one\r\n" * 20)
    prepare(str(file), "char", tmp_path / "data", num_proc=1, progress=False)
    tokenizer = load_tokenizer("char", tmp_path / "data")
    assert "\r" in tokenizer.chars
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    result = evaluate(model, tokenizer, text_file=file, progress=False)
    assert result["tokens"] == result["bytes"] == file.stat().st_size - 1
