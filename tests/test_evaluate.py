"""minigpt.evaluate: exact, repeatable loss / perplexity / bits per byte over a whole split or file."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import run_main, save_untrained_run

from minigpt import GPT, GPTConfig
from minigpt.checkpoint import load_model
from minigpt.data import load_meta
from minigpt.errors import MinigptError
from minigpt.evaluate import evaluate
from minigpt.prepare import prepare
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
    assert first["bytes"] == meta["val_bytes"]
    assert first["perplexity"] == pytest.approx(math.exp(first["loss"]))
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
    assert from_file["bytes"] == len(val_text.encode("utf-8"))
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
