"""Preference pairs -> token files with answer masks: `minigpt prepare FILE --format preference`.

    prepare_preference("pairs.jsonl", source_tokenizer("out/instruct_quickstart"), "data/prefs")

Rows come from .jsonl / .json / .parquet files or a Hub dataset, in TRL's layout, plain or conversational:

    {"prompt": "2+2?", "chosen": "4", "rejected": "Four, I think."}
    {"prompt": [{"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}

A text prompt is one user message and a text answer one assistant message; a conversational prompt
may hold a system message and earlier turns, and each answer is one assistant message.

Each pair becomes two sequences that share the prompt: the prompt through the tokenizer's chat
template (as `--format chat` writes it, up to the assistant's turn), then the answer and the
end-of-turn token. The mask marks that answer and its end-of-turn token alone: DPO compares the
log-probabilities of the two answers, never of the prompt. Per split this writes `{split}.bin`,
`{split}_mask.bin` and `{split}_starts.bin` (where each sequence begins: pair k is sequences 2k,
chosen, and 2k + 1, rejected); minigpt/data/pairs.py serves them as batches.

A pair with a sequence longer than `max_tokens` (use the model's block_size + 1) is dropped, and so
is a pair whose chosen answer equals its rejected one (nothing to prefer); the summary counts both.
Rows are checked whole before anything is written: a missing field or one of the wrong type is a
one-line error naming the row (counted from 1) and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np

from ..chat_template import check_messages
from ..errors import MinigptError
from ..tokenizers import Tokenizer
from .chat import MaskedSequences, check_options, write_sequences
from .prepare import check_out_folder, in_val, open_rows, write_staged

FIELDS = ("prompt", "chosen", "rejected")
LAYOUTS = "text, or lists of {role, content} messages (TRL's conversational layout)"


def prepare_preference(
    source: str,
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    max_tokens: int = 1025,
    split: str = "train",
    config: str | None = None,
) -> dict:
    """Tokenize the preference pairs in SOURCE into `out` with the tokenizer of the model DPO starts from;
    return the meta dict (with the counts)."""
    if not isinstance(tokenizer, Tokenizer):
        raise MinigptError(
            "preference data is encoded with the tokenizer of the chat-tuned run DPO starts from: "
            "add --tokenizer-from PATH (that run)"
        )
    check_options(val_fraction, max_tokens)
    out = check_out_folder(out)
    rows = open_rows(source, split=split, config=config)
    pairs = [to_pair(row, f"{source} row {i + 1}") for i, row in enumerate(rows)]
    if not pairs:
        raise MinigptError(f"no preference pairs found in {source!r}")
    if not tokenizer.has_chat_template:
        tokenizer.add_chat_tokens()

    splits = {"train": _Split(), "val": _Split()}
    dropped = {"too_long": 0, "identical": 0}
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        if chosen == rejected:
            dropped["identical"] += 1
            continue
        sequences = [answer_ids(tokenizer, prompt, answer) for answer in (chosen, rejected)]
        if max(len(ids) for ids, _ in sequences) > max_tokens:
            dropped["too_long"] += 1
            continue
        splits["val" if in_val(i, val_fraction) else "train"].add_pair(sequences)
    _check_splits(splits, val_fraction, dropped, max_tokens)

    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    meta = {
        "format": "preference",
        "tokenizer": tokenizer.spec,
        "vocab_size": tokenizer.vocab_size,
        "eot_token": tokenizer.eot_token,
        "dtype": np.dtype(dtype).name,
        "pairs": len(pairs),
        "dropped": dropped,
        "max_tokens": max_tokens,
        **{f"{name}_{key}": value for name, s in splits.items() for key, value in s.counts().items()},
        "val_fraction": val_fraction,
        "source": source,
        "split": split,
        "config": config,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return write_staged(out, tokenizer, lambda staging: (meta, write_sequences(staging, splits, dtype)))


def to_pair(row: dict, where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """One row as checked (prompt, chosen, rejected) message lists; `where` names the row in errors."""
    row = {column: value for column, value in row.items() if value is not None}  # tables fill absent columns with null
    missing = [name for name in FIELDS if name not in row]
    if missing:
        raise MinigptError(
            f"{where}: missing {', '.join(repr(m) for m in missing)}; each row needs 'prompt', 'chosen' and "
            f"'rejected' ({LAYOUTS})"
        )
    prompt = _messages(row["prompt"], "user", f"{where}: 'prompt'")
    if not prompt:
        raise MinigptError(f"{where}: 'prompt' holds no message")
    answers = []
    for name in ("chosen", "rejected"):
        answer = _messages(row[name], "assistant", f"{where}: {name!r}")
        if len(answer) != 1 or answer[0]["role"] != "assistant":
            roles = [m["role"] for m in answer]
            raise MinigptError(f"{where}: {name!r} must be one assistant message, got the roles {roles}")
        answers.append(answer)
    return prompt, answers[0], answers[1]


def _messages(value, role: str, where: str) -> list[dict]:
    """A field as a list of messages: text is one message of `role`."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list):
        raise MinigptError(f"{where} must be {LAYOUTS}; got {type(value).__name__}")
    check_messages(value, where)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def answer_ids(tokenizer: Tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], list[bool]]:
    """The ids of prompt and answer as one conversation, and the mask of the answer's tokens (its
    end-of-turn token included): those the template adds after the prompt's generation prompt."""
    start = len(tokenizer.encode_chat(prompt, add_generation_prompt=True))
    ids = tokenizer.encode_chat(prompt + answer, add_generation_prompt=False)
    return ids, [k >= start for k in range(len(ids))]


class _Split(MaskedSequences):
    """The encoded pairs of one split: sequences end to end, chosen then rejected."""

    def add_pair(self, sequences: list[tuple[list[int], list[bool]]]) -> None:
        for ids, mask in sequences:
            self.add(ids, mask)

    def counts(self) -> dict:
        return {"pairs": len(self.starts) // 2, **super().counts()}


def _check_splits(splits: dict[str, _Split], val_fraction: float, dropped: dict, max_tokens: int) -> None:
    reasons = []
    if dropped["too_long"]:
        reasons.append(f"{dropped['too_long']} dropped as longer than {max_tokens} tokens; raise --max-tokens")
    if dropped["identical"]:
        reasons.append(f"{dropped['identical']} dropped with chosen equal to rejected")
    why = f" ({'; '.join(reasons)})" if reasons else ""
    if not splits["train"].starts:
        raise MinigptError(f"no preference pair is left for the train split{why}")
    if val_fraction > 0 and not splits["val"].starts:
        raise MinigptError(f"the val split is empty{why}; raise --val-fraction or add pairs")


def summary(meta: dict) -> Iterator[str]:
    """Lines that tell a user what was prepared."""
    dropped = meta["dropped"]
    yield (
        f"{meta['pairs']} preference pairs read: {meta['train_pairs']} train, {meta['val_pairs']} val; "
        f"{sum(dropped.values())} dropped ({dropped['too_long']} longer than {meta['max_tokens']} tokens, "
        f"{dropped['identical']} with chosen equal to rejected)"
    )
    yield (
        f"{meta['train_tokens']:,} train tokens, {meta['train_target_tokens']:,} of them answers (what DPO "
        f"compares); {meta['val_tokens']:,} val tokens; vocabulary {meta['vocab_size']} with chat tokens"
    )
