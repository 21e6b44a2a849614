"""Reading prepared token files: random training batches and evaluation windows.

The .bin files written by `minigpt prepare` are flat arrays of token ids.
They are opened with np.memmap, never read whole: a batch touches only the
B windows it samples, so a 100 GB corpus trains with a few MB of memory.

Training batches are counter-based: batch i of rank r (of world_size ranks) is drawn
from `np.random.default_rng([seed, i * world_size + r])`. The loader's whole state is therefore
one integer, a resumed run sees exactly the batches it would have seen, and
every rank of a distributed run sees different ones.

Chat data (`prepare --format chat`) has two more files per split: `{split}_mask.bin` (one uint8 per
token, 1 where the token is a training target: assistant tokens) and `{split}_starts.bin` (uint64
offsets where conversations begin). Masked targets become IGNORE_INDEX, so system and user tokens
are read as context but add nothing to the loss; training windows start at conversation starts, so
every answer in a window is seen with its question (`chat_files` names them for a split), and
`check_fits` refuses chat data whose conversations a window of the model cannot hold whole.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import MinigptError

IGNORE_INDEX = -100  # targets with this value are not predicted (padding)


def load_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a prepared data folder, after checking its token files exist."""
    data_dir = Path(data_dir)
    hint = f"run `minigpt prepare SOURCE --out {data_dir}` first"
    if not data_dir.is_dir():
        raise MinigptError(f"data folder {data_dir} does not exist; {hint}")
    missing = [name for name in ("meta.json", "train.bin", "val.bin") if not (data_dir / name).is_file()]
    if missing:
        raise MinigptError(f"data folder {data_dir} has no {', '.join(missing)}; {hint}")
    try:
        return json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinigptError(f"{data_dir / 'meta.json'} is unreadable or not valid JSON ({e}); {hint} again") from None


def open_tokens(path: str | os.PathLike, dtype: str | np.dtype, min_tokens: int = 2) -> np.memmap:
    """Memory-map a token file, checking it holds at least min_tokens tokens."""
    path, dtype = Path(path), np.dtype(dtype)
    if not path.is_file():
        raise MinigptError(f"token file {path} does not exist; run `minigpt prepare SOURCE --out {path.parent}` first")
    size = path.stat().st_size
    if size % dtype.itemsize:  # a cut-off copy or another file: np.memmap would raise its own ValueError
        raise MinigptError(
            f"token file {path} is damaged: its {size:,} bytes are not a whole number of {dtype.name} tokens "
            f"({dtype.itemsize} bytes each); prepare the data again"
        )
    if size < min_tokens * dtype.itemsize:
        n = size // dtype.itemsize
        more = "prepare again with a larger --val-fraction" if path.name == "val.bin" else "prepare more data"
        raise MinigptError(
            f"{path} holds {n} tokens, but a window of block_size + 1 = {min_tokens} is needed; "
            f"use a block_size below {n} or {more}"
        )
    if size == 0:  # an empty split (--val-fraction 0) that min_tokens allows: np.memmap cannot map it
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def check_token_ids(path: str | os.PathLike, dtype: str | np.dtype, vocab_size: int) -> None:
    """Refuse a token file holding an id the model has no embedding for (damaged, or prepared for
    another vocabulary), before training or evaluation fails on it mid-run. One pass over the file."""
    tokens = open_tokens(path, dtype, min_tokens=0)
    largest = int(tokens.max(initial=0))
    if largest >= vocab_size:
        raise MinigptError(
            f"token file {path} holds token id {largest}, but the model's vocabulary has {vocab_size} ids "
            f"(0 to {vocab_size - 1}); the file is damaged or was prepared for another tokenizer: prepare it again"
        )


def chat_files(data_dir: str | os.PathLike, split: str) -> dict[str, Path]:
    """The loss mask and conversation starts of a split, as BatchLoader / fixed_batches keywords ({} for plain text)."""
    mask, starts = Path(data_dir, f"{split}_mask.bin"), Path(data_dir, f"{split}_starts.bin")
    return {"mask_path": mask, "starts_path": starts} if mask.is_file() else {}


SEQUENCES = {  # data whose sequences a training window must hold whole, as its refusal names them
    "chat": "the chat data in {} holds conversations",
    "preference": "the preference pairs in {} hold sequences",
}


def check_fits(meta: dict, block_size: int, data_dir) -> None:
    """Chat data and preference pairs must keep sequences a window can hold whole, or windows would hold
    answers cut off (or none at all) to train on. Compared with the longest sequence prepare kept, not
    with its --max-tokens: a limit of 1025 with 20-token conversations fits any block from 19 up."""
    if meta.get("format") in SEQUENCES:
        recorded = [meta[key] for key in ("train_longest", "val_longest") if key in meta]
        # data prepared before the longest was recorded: all that is known is that none is longer than max_tokens
        longest = max(recorded) if recorded else meta["max_tokens"]
        check_longest(longest, block_size, meta["format"], data_dir)


def check_longest(longest: int, block_size: int, kind: str, data_dir) -> None:
    """Refuse sequences of up to `longest` tokens (of `kind`, a SEQUENCES format) for a model of block_size."""
    if longest > block_size + 1:
        raise MinigptError(
            f"{SEQUENCES[kind].format(data_dir)} of up to {longest} tokens, more than block_size + 1 = "
            f"{block_size + 1}; prepare the data again with --max-tokens {block_size + 1}"
        )


def windows_to_batch(
    windows: np.ndarray, device: str | torch.device, targets_mask: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) windows -> inputs x and targets y (x shifted by one), both (B, T) int64 on device.

    With targets_mask ((B, T+1), True = trained on), masked targets become IGNORE_INDEX.
    """
    w = torch.from_numpy(windows.astype(np.int64))
    # Padding (IGNORE_INDEX) is a valid target but not a valid input id.
    x, y = w[:, :-1].clamp(min=0), w[:, 1:].contiguous()
    if targets_mask is not None:
        y = y.masked_fill(~torch.from_numpy(np.asarray(targets_mask[:, 1:], dtype=bool)), IGNORE_INDEX)
    return _to_device(x, device), _to_device(y, device)


def _gather(tokens: np.ndarray, mask: np.ndarray | None, starts: np.ndarray, length: int):
    """Windows of `length` tokens from each start, padded past the end (IGNORE_INDEX); and their mask."""
    index = starts[:, None] + np.arange(length)
    inside = index < len(tokens)
    index = np.minimum(index, len(tokens) - 1)
    windows = np.where(inside, tokens[index].astype(np.int64), IGNORE_INDEX)
    return windows, None if mask is None else (mask[index] != 0) & inside


def _to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    if torch.device(device).type == "cuda":
        # Pinned host memory lets the copy overlap with the GPU's work.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def batch_rng(seed: int, number: int, rank: int, world_size: int) -> np.random.Generator:
    """The random numbers of training batch `number` of process `rank`.

    Batches are numbered globally (rank-interleaved), so that N processes draw exactly the batches one
    process with N times the gradient accumulation would: the two runs are then equivalent.
    """
    return np.random.default_rng([seed, number * world_size + rank])


class DrawnBatches:
    """What makes a loader of random batches reproducible and resumable: batch i of process `rank` draws from
    batch_rng(seed, i, rank, world_size), so the whole state is the next batch's number."""

    def __init__(self, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise MinigptError(f"rank must be in [0, world_size={world_size}); got {rank}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_drawn = 0

    def next_rng(self) -> np.random.Generator:
        """The random numbers of the next batch."""
        rng = batch_rng(self.seed, self.batches_drawn, self.rank, self.world_size)
        self.batches_drawn += 1
        return rng

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        if state["rank"] != self.rank:
            raise MinigptError(f"loader state belongs to rank {state['rank']}, not rank {self.rank}")
        self.seed, self.batches_drawn = state["seed"], state["batches_drawn"]


class BatchLoader(DrawnBatches):
    """Random (x, y) training batches from one token file, reproducible and resumable."""

    def __init__(
        self,
        path: str | os.PathLike,
        dtype: str | np.dtype,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        mask_path: str | os.PathLike | None = None,
        starts_path: str | os.PathLike | None = None,
    ):
        super().__init__(seed, rank, world_size)
        self.tokens = open_tokens(path, dtype, block_size + 1)
        if hasattr(mmap, "MADV_RANDOM"):  # random windows: no read-ahead of pages no batch will use
            self.tokens._mmap.madvise(mmap.MADV_RANDOM)
        self.mask = None if mask_path is None else open_tokens(mask_path, np.uint8, len(self.tokens))
        self.starts = None if starts_path is None else np.fromfile(starts_path, dtype=np.uint64).astype(np.int64)
        self.block_size, self.batch_size = block_size, batch_size
        self.device = device

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.block_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.next_rng()
        if self.starts is None:
            starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        else:
            starts = self.starts[rng.integers(0, len(self.starts), size=self.batch_size)]
        windows, mask = _gather(self.tokens, self.mask, starts, self.block_size + 1)  # (B, T+1)
        return windows_to_batch(windows, self.device, mask)


def eval_windows(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    *,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    mask: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every token of `tokens` (a split's memmap, or an array) except the first, predicted exactly once, in order.

    Window k holds tokens [k*T, k*T + T] (T + 1 of them), so consecutive windows
    share one token and the targets tile the split without overlap. The last
    window may be short: its inputs are padded with 0 and its targets with -100
    (ignored by the loss). Batches hold batch_size windows (the last may hold
    fewer); `max_batches` stops early for a quick estimate. With a loss `mask` (chat data) only
    the targets it marks are predicted.
    """
    n_windows = _count_windows(len(tokens), block_size)
    for b, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        starts = np.arange(first, min(first + batch_size, n_windows)) * block_size
        windows, window_mask = _gather(tokens, mask, starts, block_size + 1)
        yield windows_to_batch(windows, device, window_mask)


def count_eval_batches(n_tokens: int, block_size: int, batch_size: int) -> int:
    """How many batches eval_windows yields for n_tokens tokens."""
    return -(-_count_windows(n_tokens, block_size) // batch_size)


def _count_windows(n_tokens: int, block_size: int) -> int:
    return -(-(n_tokens - 1) // block_size)  # ceil: the last window may be short


def fixed_batches(
    path: str | os.PathLike,
    dtype: str | np.dtype,
    block_size: int,
    batch_size: int,
    n_batches: int,
    device: str | torch.device = "cpu",
    mask_path: str | os.PathLike | None = None,
    starts_path: str | os.PathLike | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same n_batches evaluation batches every call: evenly spaced windows over the split.

    Periodic evaluation during training uses these, so successive val losses
    differ only because the model changed, not because the sample did.
    """
    tokens = open_tokens(path, dtype, block_size + 1)
    mask = None if mask_path is None else open_tokens(mask_path, np.uint8, len(tokens))
    if starts_path is None:
        starts = np.linspace(0, len(tokens) - block_size - 1, n_batches * batch_size).round().astype(np.int64)
    else:  # chat data: evenly spaced conversations
        conversations = np.fromfile(starts_path, dtype=np.uint64).astype(np.int64)
        starts = conversations[np.linspace(0, len(conversations) - 1, n_batches * batch_size).round().astype(np.int64)]
    windows, window_mask = _gather(tokens, mask, starts, block_size + 1)
    shape = (n_batches, batch_size, block_size + 1)
    window_mask = [None] * n_batches if window_mask is None else window_mask.reshape(shape)
    return [windows_to_batch(w, device, m) for w, m in zip(windows.reshape(shape), window_mask)]
