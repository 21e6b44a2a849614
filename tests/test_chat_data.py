"""`prepare --format chat`: conversations to token files with a loss mask, and batches that honour it."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY, run_main

from minigpt import GPT, GPTConfig
from minigpt.data.batches import IGNORE_INDEX, BatchLoader, chat_files, fixed_batches, load_meta
from minigpt.data.chat import prepare_chat
from minigpt.errors import MinigptError
from minigpt.tokenizers import load_tokenizer

pytestmark = pytest.mark.usefixtures("no_network")


def _conversation(i):
    return {
        "messages": [
            {"role": "system", "content": "You add numbers."},
            {"role": "user", "content": f"{i} + {i}?"},
            {"role": "assistant", "content": str(2 * i)},
            {"role": "user", "content": "and doubled?"},
            {"role": "assistant", "content": str(4 * i)},
        ]
    }


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def chat_dir(tmp_path):
    source = _write_jsonl(tmp_path / "chat.jsonl", [_conversation(i) for i in range(40)])
    prepare_chat(str(source), "char", tmp_path / "data")
    return tmp_path / "data"


def test_prepare_chat_writes_tokens_mask_and_starts(chat_dir):
    meta = load_meta(chat_dir)
    assert meta["format"] == "chat" and meta["conversations"] == 40
    assert meta["train_conversations"] == 36 and meta["val_conversations"] == 4
    tokenizer = load_tokenizer("char", chat_dir)
    assert tokenizer.has_chat_template and meta["vocab_size"] == tokenizer.vocab_size
    tokens = np.fromfile(chat_dir / "train.bin", dtype=meta["dtype"])
    mask = np.fromfile(chat_dir / "train_mask.bin", dtype=np.uint8)
    starts = np.fromfile(chat_dir / "train_starts.bin", dtype=np.uint64)
    assert len(tokens) == len(mask) == meta["train_tokens"] and len(starts) == 36
    first = tokenizer.decode(tokens[starts[0] : starts[1]])
    assert first == (
        "<|system|>You add numbers.<|end|><|user|>0 + 0?<|end|><|assistant|>0<|end|>"
        "<|user|>and doubled?<|end|><|assistant|>0<|end|><|endoftext|>"
    )
    trained = tokenizer.decode(tokens[starts[1] : starts[2]][mask[starts[1] : starts[2]] == 1])
    assert trained == "2<|end|>4<|end|>"  # conversation 1: only the answers and their ends


def test_alpaca_rows_from_json_and_parquet(tmp_path):
    rows = [{"instruction": "Reverse the word.", "input": w, "output": w[::-1]} for w in ("abc", "hello", "xyz")] * 4
    rows.append({"instruction": "Say hi.", "input": "", "output": "hi"})
    (tmp_path / "alpaca.json").write_text(json.dumps(rows), encoding="utf-8")
    meta = prepare_chat(str(tmp_path / "alpaca.json"), "gpt2", tmp_path / "a")
    tokenizer = load_tokenizer("gpt2", tmp_path / "a")
    tokens = np.fromfile(tmp_path / "a" / "train.bin", dtype=meta["dtype"])
    assert tokenizer.decode(tokens).startswith("<|user|>Reverse the word.\n\nabc<|end|><|assistant|>cba<|end|>")
    assert tokenizer.decode(tokens).endswith("<|user|>Say hi.<|end|><|assistant|>hi<|end|><|endoftext|>")  # no input

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "alpaca.parquet")
    again = prepare_chat(str(tmp_path / "alpaca.parquet"), "gpt2", tmp_path / "b")
    assert again["train_tokens"] == meta["train_tokens"]


def test_too_long_conversations_are_dropped_and_counted(tmp_path):
    rows = [_conversation(i) for i in range(20)]
    rows[3]["messages"][2]["content"] = "9" * 500
    source = _write_jsonl(tmp_path / "chat.jsonl", rows)
    meta = prepare_chat(str(source), "char", tmp_path / "data", max_tokens=200)
    assert meta["dropped_too_long"] == 1 and meta["train_conversations"] + meta["val_conversations"] == 19


@pytest.mark.parametrize(
    "row, error",
    [
        ({"messages": "hello"}, "row 2: 'messages' must be a list"),  # rows and messages count from 1
        ({"messages": [{"role": "wizard", "content": "x"}]}, "row 2: message 1 has unknown role 'wizard'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "row 2: the conversation has no assistant turn"),
        ({"text": "plain"}, "row 2 has columns \\['text'\\]; expected 'messages'"),
    ],
)
def test_bad_conversations_are_one_line_errors_and_nothing_is_written(tmp_path, row, error):
    source = _write_jsonl(tmp_path / "chat.jsonl", [_conversation(0), row])
    with pytest.raises(MinigptError, match=error):
        prepare_chat(str(source), "char", tmp_path / "out" / "data")
    assert not (tmp_path / "out").exists()


def test_batches_start_at_conversations_and_mask_everything_but_answers(chat_dir):
    meta = load_meta(chat_dir)
    tokenizer = load_tokenizer("char", chat_dir)
    loader = BatchLoader(chat_dir / "train.bin", meta["dtype"], 64, 8, **chat_files(chat_dir, "train"))
    x, y = loader.next_batch()
    system = tokenizer.chat_token_ids["<|system|>"]
    assert (x[:, 0] == system).all()  # every window begins a conversation
    kept = y[y != IGNORE_INDEX]
    text = tokenizer.decode(kept)
    assert set(text.replace("<|end|>", "")) <= set("0123456789")  # answers only
    val = fixed_batches(chat_dir / "val.bin", meta["dtype"], 64, 2, 2, **chat_files(chat_dir, "val"))
    assert all((vx[:, 0] == system).all() for vx, _ in val)


def test_system_and_user_tokens_contribute_no_gradient(chat_dir):
    meta = load_meta(chat_dir)
    loader = BatchLoader(chat_dir / "train.bin", meta["dtype"], 64, 4, **chat_files(chat_dir, "train"))
    x, y = loader.next_batch()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=meta["vocab_size"], block_size=64, n_layer=1, n_head=2, n_embd=16))
    hidden = model.transformer.ln_f.register_forward_hook(lambda m, i, out: out.retain_grad() or setattr(m, "o", out))
    _, loss = model(x, y)
    loss.backward()
    grad = model.transformer.ln_f.o.grad.abs().sum(-1)  # (B, T): gradient reaching each position's output
    hidden.remove()
    context = y == IGNORE_INDEX
    assert context.any() and (~context).any()
    assert (grad[context] == 0).all() and (grad[~context] > 0).all()


def test_chat_data_fits_a_block_that_holds_its_longest_conversation(chat_dir):
    from minigpt.data.batches import check_fits

    meta = load_meta(chat_dir)  # prepared with the default --max-tokens 1025
    lengths = [
        np.diff([*np.fromfile(chat_dir / f"{split}_starts.bin", dtype=np.uint64), meta[f"{split}_tokens"]])
        for split in ("train", "val")
    ]
    longest = int(max(length.max() for length in lengths))
    assert max(meta["train_longest"], meta["val_longest"]) == longest < 65
    check_fits(meta, longest - 1, chat_dir)  # block_size + 1 tokens: the longest conversation whole
    with pytest.raises(
        MinigptError, match=f"of up to {longest} tokens, more than block_size \\+ 1 = {longest - 1}; .*--max-tokens"
    ):
        check_fits(meta, longest - 2, chat_dir)
    # a folder prepared before the longest was recorded: only its --max-tokens is known
    old = {key: value for key, value in meta.items() if not key.endswith("_longest")}
    check_fits(old, 1024, chat_dir)
    with pytest.raises(MinigptError, match="up to 1025 tokens, more than block_size \\+ 1 = 65; .*--max-tokens 65"):
        check_fits(old, 64, chat_dir)


def test_training_with_block_64_takes_chat_data_prepared_with_the_default_max_tokens(chat_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "-", f"data.dir={chat_dir}", f"out_dir={out}", *TINY, "model.block_size=64", "train.max_steps=2"]
    code, _, err = run_main(capsys, *argv)
    assert code == 0, err
