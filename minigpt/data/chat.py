"""Conversations -> token files with a loss mask: `minigpt prepare FILE --format chat`.

    prepare_chat("conversations.jsonl", "char", "data/chat")

Rows come from .jsonl / .json / .parquet files or a Hub dataset, in one of two shapes:

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}   (OpenAI style)
    {"instruction": "...", "input": "...", "output": "..."}                           (Alpaca style)

An Alpaca row becomes a user turn (the instruction, then the input after a blank line when there
is one) and an assistant turn (the output).

Every conversation is encoded with the tokenizer's chat template (the chat special tokens are
added to a tokenizer that lacks them) and followed by end-of-text when the tokenizer has one.
Besides train.bin / val.bin this writes, per split, `{split}_mask.bin` (1 for the tokens the loss
counts: assistant turns and the end-of-turn token closing each) and `{split}_starts.bin` (where each
conversation begins); see data.py.

Packing, not padding: conversations are stored end to end and a training window starts at a
conversation's first token and runs on into the following ones. No compute is spent on padding
(short instruction pairs would otherwise be mostly padding), the token files and the loader stay
those of plain text, and since every window starts at a conversation's start, every answer is seen
with its question. A conversation longer than `max_tokens` (use the model's block_size + 1) would
be cut off mid-answer in every window, so it is dropped and counted in the summary.

Input is checked whole before anything is written: `messages` that is not a list, an unknown role
or a conversation without an assistant turn is a one-line error naming the row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..chat_template import check_messages
from ..errors import MinigptError
from ..tokenizers import Tokenizer, build_tokenizer
from .prepare import check_out_folder, in_val, open_rows, write_staged


def prepare_chat(
    source: str,
    tokenizer: str | Tokenizer,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    max_tokens: int = 1025,
    split: str = "train",
    config: str | None = None,
) -> dict:
    """Tokenize the conversations in SOURCE into `out`; return the meta dict (with the counts)."""
    check_options(val_fraction, max_tokens)
    out = check_out_folder(out)
    rows = open_rows(source, split=split, config=config)
    conversations = [to_messages(row, i) for i, row in enumerate(rows, start=1)]  # rows count from 1
    if not conversations:
        raise MinigptError(f"no conversations found in {source!r}")
    if isinstance(tokenizer, str):
        tokenizer = build_tokenizer(tokenizer, (m["content"] for c in conversations for m in c))
    if not tokenizer.has_chat_template:
        tokenizer.add_chat_tokens()

    splits = {"train": _Split(), "val": _Split()}
    dropped = 0
    for i, messages in enumerate(conversations):
        ids, mask = masked_ids(tokenizer, messages)
        if tokenizer.eot_token is not None:
            ids, mask = [*ids, tokenizer.eot_token], [*mask, False]
        if len(ids) > max_tokens:
            dropped += 1
            continue
        splits["val" if in_val(i, val_fraction) else "train"].add(ids, mask, messages)
    _check_splits(splits, val_fraction, dropped, max_tokens)

    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    meta = {
        "format": "chat",
        "tokenizer": tokenizer.spec,
        "vocab_size": tokenizer.vocab_size,
        "eot_token": tokenizer.eot_token,
        "dtype": np.dtype(dtype).name,
        "conversations": len(conversations),
        "dropped_too_long": dropped,
        "max_tokens": max_tokens,
        **{f"{name}_{key}": value for name, s in splits.items() for key, value in s.counts().items()},
        "val_fraction": val_fraction,
        "source": source,
        "split": split,
        "config": config,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return write_staged(out, tokenizer, lambda staging: (meta, write_sequences(staging, splits, dtype)))


def to_messages(row: dict, index: int) -> list[dict]:
    """One row (numbered from 1) as a checked list of messages (OpenAI-style `messages`, or Alpaca
    instruction/input/output)."""
    where = f"row {index}"
    row = {column: value for column, value in row.items() if value is not None}  # tables fill absent columns with null
    if "messages" in row:
        messages = row["messages"]
    elif "instruction" in row and "output" in row:
        prompt = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    else:
        raise MinigptError(
            f"{where} has columns {sorted(row)}; expected 'messages' (OpenAI style) or "
            f"'instruction', 'input', 'output' (Alpaca style)"
        )
    check_messages(messages, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise MinigptError(f"{where}: the conversation has no assistant turn, so nothing in it would be trained on")
    return messages


def masked_ids(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """A conversation's ids and loss mask (True for each assistant turn's tokens, as the template ends them).

    Any chat template works: an assistant turn's tokens are those that encoding the conversation up
    to and including that turn adds to the prompt the template builds for it.
    """
    ids = tokenizer.encode_chat(messages, add_generation_prompt=False)
    mask = [False] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.encode_chat(messages[:k], add_generation_prompt=True))
        end = len(tokenizer.encode_chat(messages[: k + 1], add_generation_prompt=False))
        mask[start:end] = [True] * (end - start)
    return ids, mask


def check_options(val_fraction: float, max_tokens: int) -> None:
    """The options chat and preference data share, checked before any row is read."""
    if not 0 <= val_fraction < 1:
        raise MinigptError(f"val_fraction must be in [0, 1), e.g. 0.1; got {val_fraction!r}")
    if max_tokens < 2:
        raise MinigptError(f"--max-tokens must be at least 2 (use the model's block_size + 1), got {max_tokens}")


class MaskedSequences:
    """The token sequences of one split, end to end, with their loss mask and where each begins."""

    def __init__(self):
        self.ids: list[int] = []
        self.mask: list[bool] = []
        self.starts: list[int] = []

    def add(self, ids: list[int], mask: list[bool]) -> None:
        self.starts.append(len(self.ids))
        self.ids += ids
        self.mask += mask

    def counts(self) -> dict:
        return {
            "tokens": len(self.ids),
            "target_tokens": sum(self.mask),
            "longest": int(np.diff([*self.starts, len(self.ids)]).max(initial=0)),  # what a window must hold
        }


def write_sequences(staging: Path, splits: dict[str, MaskedSequences], dtype) -> list[str]:
    """Write {split}.bin, {split}_mask.bin and {split}_starts.bin of each split; return their names."""
    names = []
    for name, s in splits.items():
        np.array(s.ids, dtype=dtype).tofile(staging / f"{name}.bin")
        np.array(s.mask, dtype=np.uint8).tofile(staging / f"{name}_mask.bin")
        np.array(s.starts, dtype=np.uint64).tofile(staging / f"{name}_starts.bin")
        names += [f"{name}.bin", f"{name}_mask.bin", f"{name}_starts.bin"]
    return names


class _Split(MaskedSequences):
    """The encoded conversations of one split, and the bytes of their answers."""

    def __init__(self):
        super().__init__()
        self.answer_bytes = 0

    def add(self, ids: list[int], mask: list[bool], messages: Iterable[dict]) -> None:
        super().add(ids, mask)
        self.answer_bytes += sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == "assistant")

    def counts(self) -> dict:
        # bytes: of the assistant turns, the only text predicted (bits per byte then means per byte of answers)
        return {"conversations": len(self.starts), **super().counts(), "bytes": self.answer_bytes}


def _check_splits(splits: dict[str, _Split], val_fraction: float, dropped: int, max_tokens: int) -> None:
    too_long = f" ({dropped} dropped as longer than {max_tokens} tokens; raise --max-tokens)" if dropped else ""
    if not splits["train"].starts:
        raise MinigptError(f"no conversation is left for the train split{too_long}")
    if val_fraction > 0 and not splits["val"].starts:
        raise MinigptError(f"the val split is empty{too_long}; raise --val-fraction or add conversations")


def summary(meta: dict) -> Iterator[str]:
    """Lines that tell a user what was prepared."""
    yield (
        f"{meta['conversations']} conversations: {meta['train_conversations']} train, {meta['val_conversations']} val, "
        f"{meta['dropped_too_long']} dropped as longer than {meta['max_tokens']} tokens"
    )
    yield (
        f"{meta['train_tokens']:,} train tokens, {meta['train_target_tokens']:,} of them trained on (assistant turns); "
        f"vocabulary {meta['vocab_size']} with chat tokens"
    )
