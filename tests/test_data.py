import json

import numpy as np
import pytest
import torch

from minigpt.data.batches import IGNORE_INDEX, BatchLoader, eval_windows, fixed_batches, load_meta, open_tokens
from minigpt.errors import MinigptError

N_TOKENS = 10_007  # prime, so no window size divides it


@pytest.fixture
def token_file(tmp_path):
    """Token i has id i % 50000: a window's content tells where it came from."""
    path = tmp_path / "train.bin"
    (np.arange(N_TOKENS) % 50_000).astype(np.uint16).tofile(path)
    return path


def test_batches_have_shape_dtype_and_shifted_targets(token_file):
    loader = BatchLoader(token_file, "uint16", block_size=16, batch_size=4, seed=1)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # consecutive ids: each window is a real slice of the file


def test_same_seed_same_batches_other_seed_or_rank_differs(token_file):
    def batches(**kwargs):
        loader = BatchLoader(token_file, "uint16", 8, 4, **kwargs)
        return [loader.next_batch()[0] for _ in range(3)]

    a, b = batches(seed=7), batches(seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], batches(seed=8)[0])
    assert not torch.equal(batches(seed=7, rank=0, world_size=2)[0], batches(seed=7, rank=1, world_size=2)[0])


def test_state_dict_resumes_the_exact_batches(token_file):
    loader = BatchLoader(token_file, "uint16", 8, 4, seed=3)
    for _ in range(5):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # must survive JSON
    expected = [loader.next_batch() for _ in range(3)]
    resumed = BatchLoader(token_file, "uint16", 8, 4, seed=0)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (resumed.next_batch() for _ in range(3))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_state_of_another_rank_is_refused(token_file):
    state = BatchLoader(token_file, "uint16", 8, 4, rank=1, world_size=2).state_dict()
    with pytest.raises(MinigptError, match="rank 1, not rank 0"):
        BatchLoader(token_file, "uint16", 8, 4, rank=0, world_size=2).load_state_dict(state)


def test_too_short_file_says_how_many_tokens(tmp_path):
    path = tmp_path / "val.bin"
    np.arange(10, dtype=np.uint16).tofile(path)
    with pytest.raises(MinigptError, match="holds 10 tokens.*block_size below 10"):
        BatchLoader(path, "uint16", block_size=10, batch_size=2)
    BatchLoader(path, "uint16", block_size=9, batch_size=2).next_batch()  # exactly enough


@pytest.mark.parametrize("block_size, batch_size", [(16, 5), (100, 3), (N_TOKENS - 1, 2)])
def test_eval_windows_predict_every_token_once(token_file, block_size, batch_size):
    predicted = []
    for x, y in eval_windows(open_tokens(token_file, "uint16"), block_size, batch_size):
        assert x.shape == y.shape and x.shape[1] == block_size and x.shape[0] <= batch_size
        assert x.min() >= 0
        real = y != IGNORE_INDEX
        assert torch.equal(y[real], x[real] + 1)  # targets are the next tokens
        predicted.append(y[real])
    predicted = torch.cat(predicted)
    assert len(predicted) == N_TOKENS - 1
    assert torch.equal(predicted, torch.arange(1, N_TOKENS) % 50_000)


def test_eval_windows_are_deterministic_and_can_stop_early(token_file):
    first = list(eval_windows(open_tokens(token_file, "uint16"), 32, 4, max_batches=3))
    again = list(eval_windows(open_tokens(token_file, "uint16"), 32, 4, max_batches=3))
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))


def test_fixed_batches_are_identical_and_spread_out(token_file):
    batches = fixed_batches(token_file, "uint16", 16, 4, n_batches=3)
    again = fixed_batches(token_file, "uint16", 16, 4, n_batches=3)
    assert len(batches) == 3 and all(x.shape == (4, 16) for x, _ in batches)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert starts[0] == 0 and starts[-1] == N_TOKENS - 17  # first and last windows of the split


def test_load_meta_checks_the_folder(tmp_path):
    with pytest.raises(MinigptError, match="does not exist; run `minigpt prepare SOURCE --out"):
        load_meta(tmp_path / "nope")
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 65}))
    with pytest.raises(MinigptError, match="has no train.bin, val.bin; run `minigpt prepare"):
        load_meta(tmp_path)
    (tmp_path / "train.bin").write_bytes(b"")
    (tmp_path / "val.bin").write_bytes(b"")
    assert load_meta(tmp_path) == {"vocab_size": 65}
