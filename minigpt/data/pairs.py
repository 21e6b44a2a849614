"""Batches of preference pairs (`prepare --format preference`) for DPO: the chosen answers, then the rejected.

    loader = PairLoader(d / "train.bin", "uint16", block_size=128, batch_size=8, **chat_files(d, "train"))
    x, y = loader.next_batch()      # (16, T): rows 0-7 the chosen sequences, rows 8-15 their rejected ones

Every row is one whole sequence (prompt, answer, end-of-turn) from its start, never running on into
the next: y is IGNORE_INDEX everywhere but the answer, so a row's summed target log-probability is
the answer's. Rows are padded to the longest sequence of the split, not of the batch: every step has
the same shape, so a compiled model is not recompiled and the first step shows the memory a run needs.

PairLoader draws batch i's pairs as BatchLoader draws its windows (DrawnBatches), so its whole state
is that number and a resumed run sees the pairs it would have seen; fixed_pairs are
the evaluation batches, the same every time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import MinigptError
from .batches import IGNORE_INDEX, DrawnBatches, check_longest, open_tokens, windows_to_batch


class Pairs:
    """The sequences of one split: tokens, answer mask, and where each sequence starts and ends."""

    def __init__(self, path, dtype, block_size: int, mask_path, starts_path):
        folder = Path(path).parent
        if mask_path is None or starts_path is None:
            raise MinigptError(f"{folder} holds no preference pairs; prepare them with --format preference")
        self.tokens = open_tokens(path, dtype)
        self.mask = open_tokens(mask_path, np.uint8, len(self.tokens))
        self.starts = np.fromfile(starts_path, dtype=np.uint64).astype(np.int64)
        self.ends = np.append(self.starts[1:], len(self.tokens))
        self.count = len(self.starts) // 2
        self.length = int((self.ends - self.starts).max())  # T + 1 of every batch
        check_longest(self.length, block_size, "preference", folder)

    def batch(self, pairs: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of these pairs: their chosen sequences, then their rejected ones, padded to self.length."""
        sequences = np.concatenate([2 * pairs, 2 * pairs + 1])
        index = self.starts[sequences, None] + np.arange(self.length)
        inside = index < self.ends[sequences, None]
        index = np.minimum(index, len(self.tokens) - 1)
        windows = np.where(inside, self.tokens[index].astype(np.int64), IGNORE_INDEX)
        return windows_to_batch(windows, device, (self.mask[index] != 0) & inside)


class PairLoader(DrawnBatches):
    """Random batches of batch_size pairs (2 * batch_size rows), reproducible and resumable like BatchLoader."""

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
        self.pairs = Pairs(path, dtype, block_size, mask_path, starts_path)
        self.batch_size, self.device = batch_size, device

    @property
    def tokens_per_batch(self) -> int:
        return 2 * self.batch_size * (self.pairs.length - 1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.next_rng()
        return self.pairs.batch(rng.integers(0, self.pairs.count, size=self.batch_size), self.device)


def fixed_pairs(
    path: str | os.PathLike,
    dtype: str | np.dtype,
    block_size: int,
    batch_size: int,
    n_batches: int,
    device: str | torch.device = "cpu",
    mask_path: str | os.PathLike | None = None,
    starts_path: str | os.PathLike | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same n_batches evaluation batches every call: evenly spaced pairs of the split (some twice when
    it holds fewer than n_batches * batch_size), as fixed_batches spaces windows."""
    pairs = Pairs(path, dtype, block_size, mask_path, starts_path)
    chosen = np.linspace(0, pairs.count - 1, n_batches * batch_size).round().astype(np.int64)
    return [pairs.batch(batch, device) for batch in chosen.reshape(n_batches, batch_size)]
