"""Damaged files and unusable folders: one line naming the file and what is wrong, exit 2, nothing written.

Each test damages a copy of something minigpt made (prepared data, a task folder, a run folder) and
checks the error the way tests/test_bad_inputs.py does (check_error: one `error:` line, no traceback).
"""

import json
import shutil

import numpy as np
import pytest
from helpers import TINY, run_main
from test_bad_inputs import check_error, snapshot


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, char_data):
    """A run of TINY for 2 steps on char_data (for eval)."""
    from minigpt.config import load_config
    from minigpt.train.trainer import train

    run = tmp_path_factory.mktemp("run") / "run"
    overrides = [f"data.dir={char_data}", f"out_dir={run}", *TINY, "train.max_steps=2", "train.eval_interval=2"]
    train(load_config(None, overrides))
    return run


def damaged_copy(char_data, tmp_path, damage) -> tuple:
    """A copy of the prepared char data with damage(folder) applied; and the world's snapshot before a command."""
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    damage(data)
    return data, snapshot(tmp_path)


def cut_one_byte(path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def out_of_vocabulary(path) -> None:
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[7] = 999
    tokens.tofile(path)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize(
    "damage, fragment",
    [
        (cut_one_byte, "{path} is damaged: its {size:,} bytes are not a whole number of uint16 tokens"),
        (out_of_vocabulary, "{path} holds token id 999, but the model's vocabulary has {vocab} ids"),
    ],
    ids=["odd-length", "out-of-vocabulary"],
)
def test_training_on_a_damaged_token_file_is_one_line(char_data, tmp_path, capsys, split, damage, fragment):
    path_of = lambda data: data / f"{split}.bin"  # noqa: E731
    data, before = damaged_copy(char_data, tmp_path, lambda data: damage(path_of(data)))
    code, _, err = run_main(capsys, "train", "-", f"data.dir={data}", f"out_dir={tmp_path}/run", *TINY)
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    check_error(code, err, 2, fragment.format(path=path_of(data), size=path_of(data).stat().st_size, vocab=vocab))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", [cut_one_byte, out_of_vocabulary], ids=["odd-length", "out-of-vocabulary"])
def test_evaluating_on_a_damaged_val_file_is_one_line(char_data, trained_run, tmp_path, capsys, damage):
    data, before = damaged_copy(char_data, tmp_path, lambda data: damage(data / "val.bin"))
    code, _, err = run_main(capsys, "eval", trained_run, "--data", data)
    check_error(code, err, 2, f"token file {data / 'val.bin'} ")
    assert snapshot(tmp_path) == before
