"""Fine-tuning end to end: init_from, LoRA runs and their checkpoints, chat data, `minigpt chat`, refusals."""

import io
import json

import pytest
import torch
from helpers import TINY, run_main

from minigpt.checkpoint import load_checkpoint
from minigpt.config import load_config
from minigpt.train.trainer import train

pytestmark = pytest.mark.usefixtures("no_network")


NUMBERS = ["one", "two", "three", "four", "five", "six", "seven"]


def _config(data_dir, out_dir, *overrides):
    return load_config(None, [f"data.dir={data_dir}", f"out_dir={out_dir}", *TINY, *overrides])


@pytest.fixture(scope="module")
def base_run(char_data, tmp_path_factory):
    """A tiny run trained from scratch on the char data: the source every test here fine-tunes."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(_config(char_data, out, "train.max_steps=30", "train.lr=3e-3", "train.eval_interval=30"))
    return out


def _chat_rows(n=60):
    rows = []
    for i in range(n):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Who is {NUMBERS[i % 7]}?"},
                    {"role": "assistant", "content": ["KING", "QUEEN", "LORD", "LADY", "DUKE", "PAGE", "MAID"][i % 7]},
                ]
            }
        )
    return rows


@pytest.fixture(scope="module")
def chat_data(base_run, tmp_path_factory):
    from minigpt.data.chat import prepare_chat
    from minigpt.train.init_from import source_tokenizer

    root = tmp_path_factory.mktemp("chat")
    source = root / "chat.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows()), encoding="utf-8")
    prepare_chat(str(source), source_tokenizer(str(base_run)), root / "d", max_tokens=33)  # block_size + 1
    return root / "d"


def test_negligible_learning_rate_leaves_the_eval_loss_unchanged(base_run, char_data, tmp_path):
    before = load_checkpoint(base_run).record.best_val_loss
    out = tmp_path / "tuned"
    summary = train(_config(char_data, out, f"train.init_from={base_run}", "train.lr=1e-12", "train.max_steps=3"))
    assert summary["step"] == 3  # a fresh step count, not the source's 30
    assert summary["val_loss"] == pytest.approx(before, abs=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16: the frozen base is stored rounded
def test_lora_run_trains_adapters_only_and_saves_a_small_checkpoint(base_run, char_data, tmp_path, dtype):
    out = tmp_path / "lora"
    lora = [f"train.init_from={base_run}", "train.lora.rank=2", "train.lr=1e-2", "train.checkpoint_interval=4"]
    lora.append(f"dtype={dtype}")
    train(_config(char_data, out, *lora, "train.max_steps=8"))
    base_size = (load_checkpoint(base_run).path / "model.safetensors").stat().st_size
    tuned = load_checkpoint(out, latest=True)
    assert (tuned.path / "model.safetensors").stat().st_size < 0.25 * base_size
    assert all(k.endswith(("lora_a", "lora_b")) and v.dtype == torch.float32 for k, v in tuned.weights.items())

    from minigpt.loader import load_model

    merged, _, _ = load_model(out)
    base, _, _ = load_model(base_run)
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    assert not torch.allclose(merged(idx)[0], base(idx)[0])  # the adapters changed the model

    # Resume is exact: 4 + 4 steps equal 8 straight.
    split = tmp_path / "split"
    train(_config(char_data, split, *lora, "train.max_steps=4"))
    train(_config(char_data, split, *lora, "train.max_steps=8"), resume=True)
    again = load_checkpoint(split, latest=True)
    assert all(torch.equal(again.weights[k], tuned.weights[k]) for k in tuned.weights)


def test_prepare_chat_on_the_command_line(base_run, tmp_path, capsys):
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(20)), encoding="utf-8")
    argv = ["prepare", source, "--format", "chat", "--tokenizer-from", base_run, "--max-tokens", "33"]
    code, _, err = run_main(capsys, *argv, "--out", tmp_path / "d")
    assert code == 0, err
    assert "20 conversations" in err and (tmp_path / "d" / "train_mask.bin").is_file()
    source.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")
    code, _, err = run_main(capsys, *argv, "--out", tmp_path / "e")
    assert code == 2 and "no assistant turn" in err and not (tmp_path / "e").exists()


def test_chat_tuning_and_chat_command(base_run, chat_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "chat_run"
    train(_config(chat_data, out, f"train.init_from={base_run}", "train.lr=3e-3", "train.max_steps=10"))
    monkeypatch.setattr("sys.stdin", io.StringIO("Who is four?\n/reset\nWho is two?\n"))
    code, out_text, err = run_main(capsys, "chat", out, "--temperature", "0", "--max-new-tokens", "8")
    assert code == 0, err
    assert len(out_text.splitlines()) == 2  # one answer line per message line


def test_resume_with_other_data_points_to_init_from(base_run, chat_data, char_data, tmp_path, capsys):
    code, _, err = run_main(
        capsys, "train", "-", f"data.dir={chat_data}", f"out_dir={base_run}", *TINY, "train.max_steps=40", "--resume"
    )
    assert code == 2 and "train.init_from" in err and len(err.strip().splitlines()) == 1


def test_bad_fine_tuning_settings_are_one_line_errors(base_run, char_data, tmp_path, capsys):
    cases = [
        ([f"train.init_from={tmp_path / 'nowhere'}"], "does not exist"),
        ([f"train.init_from={base_run}", "train.lora.rank=2", "train.lora.targets=[q_proj]"], "match no Linear layer"),
        ([f"train.init_from={base_run}", "train.lora.rank=999"], "is larger than layer"),
        ([f"train.init_from={base_run}", "model.n_layer=5"], "model.n_layer is 5 in the config but 2"),
    ]
    for overrides, message in cases:
        out = tmp_path / "bad"
        code, _, err = run_main(capsys, "train", "-", f"data.dir={char_data}", f"out_dir={out}", *TINY, *overrides)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (overrides, err)
        assert not out.exists()
