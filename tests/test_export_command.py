"""`minigpt export`: the files it writes, and bad inputs refused in one line with nothing written."""

import pytest
import torch
from helpers import run_cli, save_untrained_run

from minigpt.errors import MinigptError
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer

pytest.importorskip("gguf")


@pytest.fixture
def run_dir(tmp_path):
    """A run whose model is GPT-2-shaped, and one llama.cpp cannot run (sinusoidal positions)."""
    tokenizer = CharTokenizer(list("abcdefgh "), with_eot=True)
    torch.manual_seed(0)
    config = dict(vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=32)
    save_untrained_run(tmp_path / "gpt2", GPT(GPTConfig(**config)), tokenizer)
    save_untrained_run(tmp_path / "sinusoidal", GPT(GPTConfig(**config, pos_encoding="sinusoidal")), tokenizer)
    return tmp_path


def test_gguf_export_writes_one_file_and_reads_back(run_dir):
    import gguf

    result = run_cli("export", run_dir / "gpt2", "--format", "gguf", "--out", run_dir / "out", "--outtype", "f32")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (run_dir / "out").iterdir()) == ["model.gguf"]
    reader = gguf.GGUFReader(run_dir / "out" / "model.gguf")
    assert reader.get_field("general.architecture").contents() == "gpt2"
    assert reader.get_field("tokenizer.ggml.tokens").contents()[-1] == "<|endoftext|>"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_an_unknown_format_is_one_line_and_writes_nothing(run_dir):
    result = run_cli("export", run_dir / "gpt2", "--format", "safetensors", "--out", run_dir / "new" / "out")
    assert result.returncode == 2
    assert result.stderr == "error: unknown export format 'safetensors'; accepted: hf, gguf, onnx\n"
    assert not (run_dir / "new").exists()


def test_hf_export_writes_a_transformers_folder(run_dir):
    from minigpt.formats.export import export

    names = [p.name for p in export(run_dir / "gpt2", "hf", run_dir / "hf")]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)


@pytest.mark.parametrize(
    "fmt, outtype, message",
    [("gguf", "q4_k", "unknown gguf type 'q4_k'; accepted: f32, f16, q8_0"), ("onnx", "f16", "applies to gguf only")],
)
def test_bad_outtypes_are_refused_and_write_nothing(run_dir, fmt, outtype, message):
    from minigpt.formats.export import export

    with pytest.raises(MinigptError, match=message):
        export(run_dir / "gpt2", fmt, run_dir / "new" / "out", outtype=outtype)
    assert not (run_dir / "new").exists()


def test_an_inexpressible_model_is_refused_by_feature_and_writes_nothing(tmp_path, run_dir):
    from minigpt.formats.export import export

    with pytest.raises(MinigptError, match="cannot express pos_encoding=sinusoidal.*model.pos_encoding=learned"):
        export(run_dir / "sinusoidal", "gguf", tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()


def test_an_output_folder_with_files_is_left_alone(tmp_path, run_dir):
    from minigpt.formats.export import export

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(MinigptError, match="already holds files"):
        export(run_dir / "gpt2", "gguf", out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()  # an empty folder is fine
    assert [p.name for p in export(run_dir / "gpt2", "gguf", out)] == ["model.gguf"]
