"""`prepare --format preference`: pairs to token files with answer masks, and the batches DPO trains on."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_main, save_untrained_run

from minigpt import GPT, GPTConfig
from minigpt.data.batches import IGNORE_INDEX, chat_files, check_fits, load_meta
from minigpt.data.pairs import PairLoader, fixed_pairs
from minigpt.data.preference import prepare_preference
from minigpt.errors import MinigptError
from minigpt.tokenizers import build_tokenizer, load_tokenizer

pytestmark = pytest.mark.usefixtures("no_network")

ALPHABET = "abcdefghijklmnopqrstuvwxyz ?,.!0123456789"
_TINY = {"block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 16}


def _tokenizer():
    """A character tokenizer with the chat tokens, as a chat-tuned run's would be."""
    tokenizer = build_tokenizer("char", [ALPHABET, ALPHABET.upper()])
    tokenizer.add_chat_tokens()
    return tokenizer


def _row(i):
    return {"prompt": f"is {i} even?", "chosen": "yes" if i % 2 == 0 else "no", "rejected": "maybe"}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.fixture
def pairs_dir(tmp_path):
    prepare_preference(
        str(_write_jsonl(tmp_path / "pairs.jsonl", [_row(i) for i in range(40)])), _tokenizer(), tmp_path / "d"
    )
    return tmp_path / "d"


def test_each_pair_is_two_sequences_sharing_the_prompt_with_only_the_answers_masked(pairs_dir):
    meta = load_meta(pairs_dir)
    assert meta["format"] == "preference" and meta["pairs"] == 40
    assert (meta["train_pairs"], meta["val_pairs"]) == (36, 4) and meta["dropped"] == {"too_long": 0, "identical": 0}
    tokenizer = load_tokenizer(meta["tokenizer"], pairs_dir)
    tokens = np.fromfile(pairs_dir / "train.bin", dtype=meta["dtype"])
    mask = np.fromfile(pairs_dir / "train_mask.bin", dtype=np.uint8)
    starts = [*np.fromfile(pairs_dir / "train_starts.bin", dtype=np.uint64).tolist(), len(tokens)]
    assert len(starts) - 1 == 2 * 36 and len(mask) == len(tokens) == meta["train_tokens"]
    sequences = [(tokens[a:b], mask[a:b]) for a, b in zip(starts, starts[1:])]
    (chosen, chosen_mask), (rejected, rejected_mask) = sequences[2], sequences[3]  # pair 1 (pair 0 is row 0)
    assert tokenizer.decode(chosen) == "<|user|>is 1 even?<|end|><|assistant|>no<|end|>"
    assert tokenizer.decode(rejected) == "<|user|>is 1 even?<|end|><|assistant|>maybe<|end|>"
    assert tokenizer.decode(chosen[chosen_mask == 1]) == "no<|end|>"
    assert tokenizer.decode(rejected[rejected_mask == 1]) == "maybe<|end|>"
    assert meta["train_target_tokens"] == int(mask.sum())


def test_conversational_rows_encode_as_the_plain_ones_and_read_from_json_and_parquet(tmp_path):
    plain = [_row(i) for i in range(20)]
    conversational = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in plain
    ]
    a = prepare_preference(str(_write_jsonl(tmp_path / "plain.jsonl", plain)), _tokenizer(), tmp_path / "a")
    (tmp_path / "conv.json").write_text(json.dumps(conversational), encoding="utf-8")
    b = prepare_preference(str(tmp_path / "conv.json"), _tokenizer(), tmp_path / "b")
    for name in ("train.bin", "train_mask.bin", "train_starts.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["train_tokens"] == b["train_tokens"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(conversational), tmp_path / "conv.parquet")
    c = prepare_preference(str(tmp_path / "conv.parquet"), _tokenizer(), tmp_path / "c")
    assert (tmp_path / "c" / "train.bin").read_bytes() == (tmp_path / "a" / "train.bin").read_bytes()
    assert c["pairs"] == 20


def test_a_system_message_and_earlier_turns_stay_prompt(tmp_path):
    row = {
        "prompt": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "ok?"},
        ],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": "no",  # an answer as text is one assistant message
    }
    meta = prepare_preference(
        str(_write_jsonl(tmp_path / "p.jsonl", [row] * 3)), _tokenizer(), tmp_path / "d", val_fraction=0
    )
    tokenizer = load_tokenizer(meta["tokenizer"], tmp_path / "d")
    tokens = np.fromfile(tmp_path / "d" / "train.bin", dtype=meta["dtype"])
    mask = np.fromfile(tmp_path / "d" / "train_mask.bin", dtype=np.uint8)
    assert tokenizer.decode(tokens[mask == 1]).split("<|end|>")[:2] == ["yes", "no"]  # not the earlier 'hello'


def test_identical_and_too_long_pairs_are_dropped_counted_and_summarised(tmp_path, capsys):
    rows = [_row(i) for i in range(30)]
    rows[4]["rejected"] = rows[4]["chosen"]
    rows[7]["rejected"] = "no " * 100
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = save_untrained_run(
        tmp_path / "run", GPT(GPTConfig(vocab_size=_tokenizer().vocab_size, **_TINY)), _tokenizer()
    )
    code, _, err = run_main(
        capsys, "prepare", source, "--format", "preference", "--tokenizer-from", run, "--out", tmp_path / "d",
        "--max-tokens", "60",
    )  # fmt: skip
    assert code == 0, err
    meta = load_meta(tmp_path / "d")
    assert meta["dropped"] == {"too_long": 1, "identical": 1}
    assert meta["train_pairs"] + meta["val_pairs"] == 28
    assert (
        "30 preference pairs read: 25 train, 3 val; 2 dropped (1 longer than 60 tokens, 1 with chosen equal to" in err
    )


@pytest.mark.parametrize(
    "row, error",
    [
        ({"prompt": "hi", "chosen": "yes"}, "row 2: missing 'rejected'; each row needs 'prompt', 'chosen' and"),
        ({"prompt": "hi", "chosen": 3, "rejected": "no"}, "row 2: 'chosen' must be text, or lists of"),
        ({"prompt": "hi", "chosen": "yes", "rejected": None}, "row 2: missing 'rejected'"),
        ({"prompt": [], "chosen": "yes", "rejected": "no"}, "row 2: 'prompt' holds no message"),
        (
            {"prompt": "hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "no"},
            "row 2: 'chosen' must be one assistant message, got the roles \\['user'\\]",
        ),
        (
            {"prompt": [{"role": "wizard", "content": "x"}], "chosen": "yes", "rejected": "no"},
            "row 2: 'prompt': message \\d has unknown role 'wizard'",
        ),
    ],
)
def test_a_malformed_row_is_one_line_naming_row_and_field_and_nothing_is_written(tmp_path, row, error):
    source = _write_jsonl(tmp_path / "pairs.jsonl", [_row(0), row])
    with pytest.raises(MinigptError, match=error):
        prepare_preference(str(source), _tokenizer(), tmp_path / "out" / "d")
    assert not (tmp_path / "out").exists()


def test_the_command_line_refuses_a_bad_row_or_a_missing_tokenizer_in_one_line(tmp_path, capsys):
    source = _write_jsonl(tmp_path / "pairs.jsonl", [_row(0), _row(1), {"prompt": "x", "chosen": "y"}])
    run = save_untrained_run(
        tmp_path / "run", GPT(GPTConfig(vocab_size=_tokenizer().vocab_size, **_TINY)), _tokenizer()
    )
    before = _files(tmp_path)
    for extra, fragment in [
        (["--tokenizer-from", run], f"error: {source} row 3: missing 'rejected'"),
        ([], "error: preference data is encoded with the tokenizer of the chat-tuned run DPO starts from"),
    ]:
        code, out, err = run_main(capsys, "prepare", source, "--format", "preference", "--out", tmp_path / "d", *extra)
        assert code == 2 and out == "" and err.startswith(fragment) and err.count("\n") == 1, err
    assert _files(tmp_path) == before


def test_pair_batches_hold_chosen_then_rejected_rows_masked_to_the_answers(pairs_dir):
    meta = load_meta(pairs_dir)
    tokenizer = load_tokenizer(meta["tokenizer"], pairs_dir)
    loader = PairLoader(pairs_dir / "train.bin", meta["dtype"], 32, 4, seed=3, **chat_files(pairs_dir, "train"))
    x, y = loader.next_batch()
    assert x.shape == y.shape == (8, loader.pairs.length - 1) and loader.tokens_per_batch == x.numel()
    assert (x[:, 0] == tokenizer.chat_token_ids["<|user|>"]).all()  # every row starts a sequence
    for row in range(4):
        chosen, rejected = (tokenizer.decode(y[r][y[r] != IGNORE_INDEX]) for r in (row, row + 4))
        assert chosen in ("yes<|end|>", "no<|end|>") and rejected == "maybe<|end|>"
        prompt = x[row][: int((y[row] != IGNORE_INDEX).nonzero()[0])]
        assert torch.equal(prompt, x[row + 4][: len(prompt)])  # the pair shares its prompt

    again = PairLoader(pairs_dir / "train.bin", meta["dtype"], 32, 4, seed=3, **chat_files(pairs_dir, "train"))
    again.load_state_dict(loader.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(loader.next_batch(), again.next_batch()))  # resumable
    val = fixed_pairs(pairs_dir / "val.bin", meta["dtype"], 32, 2, 3, **chat_files(pairs_dir, "val"))
    assert len(val) == 3 and all(vx.shape[0] == 4 for vx, _ in val)
    assert all(
        torch.equal(a[0], b[0])
        for a, b in zip(
            val, fixed_pairs(pairs_dir / "val.bin", meta["dtype"], 32, 2, 3, **chat_files(pairs_dir, "val"))
        )
    )


def test_pairs_longer_than_the_block_are_refused_with_the_fix(pairs_dir):
    meta = load_meta(pairs_dir)
    with pytest.raises(
        MinigptError, match="sequences of up to \\d+ tokens, more than block_size \\+ 1 = 9; .*--max-tokens 9"
    ):
        PairLoader(pairs_dir / "train.bin", meta["dtype"], 8, 4, **chat_files(pairs_dir, "train"))
    # training checks it up front, from the longest sequence prepare recorded, through the same code
    longest = max(meta["train_longest"], meta["val_longest"])
    check_fits(meta, longest - 1, pairs_dir)
    with pytest.raises(MinigptError, match=f"preference pairs in {pairs_dir} hold sequences of up to {longest} tokens"):
        check_fits(meta, longest - 2, pairs_dir)


def test_the_demo_pairs_prepare_and_keep_their_held_out_questions_apart(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import dpo_demo

    pairs, heldout = dpo_demo.make_pairs(seed=0, per_task=20)
    assert all(p["chosen"] == p["rejected"] + dpo_demo.STOP for p in pairs)  # style only: the answers agree
    assert not {p["prompt"] for p in pairs} & {q["prompt"] for q in heldout}
    tokenizer = build_tokenizer("char", [text for p in pairs for text in p.values()])
    tokenizer.add_chat_tokens()
    meta = prepare_preference(str(_write_jsonl(tmp_path / "pairs.jsonl", pairs)), tokenizer, tmp_path / "d")
    assert meta["pairs"] == len(pairs) == 80 and meta["dropped"] == {"too_long": 0, "identical": 0}
