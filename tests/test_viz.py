"""minigpt.eval.viz: attention heatmaps and loss curves come out as real PNG files; mistakes are MinigptErrors."""

import json
import struct
import sys

import pytest
import torch

pytest.importorskip("matplotlib")

from helpers import save_untrained_run

from minigpt import GPT, GPTConfig
from minigpt.cli import main
from minigpt.errors import MinigptError
from minigpt.eval.viz import display_token, plot_attention, plot_losses, read_metrics
from minigpt.tokenizers import build_tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from a PNG's header, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def maps():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    return model.attention_maps(torch.randint(0, 20, (1, 8)))  # 2 layers of (1, 2, 8, 8)


TOKENS = ["To", " be", ",", "\n", "or", " not", "\t", "to"]


def write_run(run_dir, lines):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir


def training_log(seconds_per_step=0.1):
    lines = []
    for step in range(0, 101, 10):
        lines.append(
            {
                "step": step,
                "time": step * seconds_per_step,
                "train_loss": 3.0 - step / 50,
                "lr": 0.001,
                "tokens_per_s": 15000.0,
            }
        )
        if step % 50 == 0:
            lines.append(
                {
                    "step": step,
                    "time": step * seconds_per_step + 0.5,
                    "val_loss": 3.1 - step / 50,
                    "val_perplexity": 6.7,
                }
            )
    return lines


# ---- attention ---------------------------------------------------------------------------------------


def test_attention_grid_of_all_heads_is_a_png(maps, tmp_path):
    path = plot_attention(maps, TOKENS, tmp_path / "attention.png")
    assert path == tmp_path / "attention.png"
    width, height = png_size(path)
    assert 300 <= width <= 4000 and 200 <= height <= 4000
    assert width > height  # two heads side by side


def test_attention_single_head_and_squeezed_maps(maps, tmp_path):
    squeezed = [w[0] for w in maps]  # (n_head, T, T) works as well as (1, n_head, T, T)
    path = plot_attention(squeezed, TOKENS, tmp_path / "sub" / "head.png", layer=0, head=1, title="one head")
    width, height = png_size(path)
    assert 200 <= width <= 3000 and 200 <= height <= 3000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer=2), "0 to 1"),
        (dict(layer=-1), "0 to 1"),
        (dict(head=5), "0 to 1"),
    ],
)
def test_attention_bad_index_names_the_valid_range(maps, tmp_path, kwargs, message):
    with pytest.raises(MinigptError, match=message):
        plot_attention(maps, TOKENS, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_attention_input_errors(maps, tmp_path):
    with pytest.raises(MinigptError, match="7 tokens"):
        plot_attention(maps, TOKENS[:7], tmp_path / "x.png")
    with pytest.raises(MinigptError, match="no attention maps"):
        plot_attention([], TOKENS, tmp_path / "x.png")
    with pytest.raises(MinigptError, match="one sequence"):
        plot_attention([torch.rand(2, 2, 8, 8)], TOKENS, tmp_path / "x.png")


def test_tokens_are_shown_visibly():
    assert display_token("\n") == "⏎"
    assert display_token(" the") == "␣the"
    assert display_token("\x00") == "\\x00"
    assert display_token("") == "∅"
    long = display_token("internationalization")
    assert len(long) == 12 and long.endswith("…")


def test_attention_command_draws_a_saved_model(tmp_path, capsys):
    tokenizer = build_tokenizer("char", ["To be, or not to be:\nthat is the question."])
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16))
    save_untrained_run(tmp_path / "run", model, tokenizer)

    main(["attention", str(tmp_path / "run"), "--prompt", "To be,\nor", "--out", str(tmp_path / "a.png")])
    assert "a.png" in capsys.readouterr().out
    png_size(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit code 2
        main(["attention", str(tmp_path / "run"), "--prompt", "To be", "--out", str(tmp_path / "b.png"), "--head", "9"])
    assert exit_info.value.code == 2
    assert "head 9 is out of range" in capsys.readouterr().err


# ---- losses ------------------------------------------------------------------------------------------


def test_losses_of_one_run_against_steps(tmp_path):
    run = write_run(tmp_path / "run", training_log())
    path = plot_losses(run, tmp_path / "loss.png")
    width, height = png_size(path)
    assert 400 <= width <= 3000 and 300 <= height <= 3000


def test_losses_of_several_runs_against_seconds(tmp_path):
    a = write_run(tmp_path / "baseline", training_log(0.1))
    b = write_run(tmp_path / "modern", training_log(0.3))
    path = plot_losses([a, str(b / "metrics.jsonl")], tmp_path / "compare.png", labels=["gpt2", "modern"], x="time")
    png_size(path)


def test_a_truncated_last_line_is_skipped(tmp_path):
    run = write_run(tmp_path / "run", training_log())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 110, "train_lo')  # a run killed mid-write
    assert len(read_metrics(run)) == len(training_log())
    png_size(plot_losses(run, tmp_path / "loss.png"))


def test_loss_errors(tmp_path):
    with pytest.raises(MinigptError, match="no metrics file"):
        plot_losses(tmp_path / "missing", tmp_path / "x.png")
    empty = write_run(tmp_path / "empty", [{"step": 1, "lr": 0.1}])
    with pytest.raises(MinigptError, match="no train_loss or val_loss"):
        plot_losses(empty, tmp_path / "x.png")
    run = write_run(tmp_path / "run", training_log())
    with pytest.raises(MinigptError, match="'step' or 'time'"):
        plot_losses(run, tmp_path / "x.png", x="epoch")
    with pytest.raises(MinigptError, match="2 labels for 1 runs"):
        plot_losses([run], tmp_path / "x.png", labels=["a", "b"])
    (run / "metrics.jsonl").write_text("not json\n" + json.dumps(training_log()[0]) + "\n")
    with pytest.raises(MinigptError, match="line 1 is not JSON"):
        plot_losses(run, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_the_error_says_how_to_install(maps, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    with pytest.raises(MinigptError, match=r"pip install 'minigpt\[plot\]'"):
        plot_attention(maps, TOKENS, tmp_path / "x.png")
    with pytest.raises(MinigptError, match=r"pip install 'minigpt\[plot\]'"):
        plot_losses(write_run(tmp_path / "run", training_log()), tmp_path / "x.png")
