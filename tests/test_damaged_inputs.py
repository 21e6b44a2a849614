"""Damaged files and unusable folders: one line naming the file and what is wrong, exit 2, nothing written.

Each test damages a copy of something minigpt made (prepared data, a task folder, a run folder) and
checks the error the way tests/test_bad_inputs.py does (check_error: one `error:` line, no traceback).
"""

import json
import shutil
import subprocess
from contextlib import contextmanager

import numpy as np
import pytest
from helpers import TINY, multiple_choice_task, run_cli, run_main
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


ROWS = [
    {"question": "To be or not to", "choices": ["be", "sing"], "answer": 0},
    {"question": "The king is", "choices": ["dead", "here"], "answer": 1},
]


BROKEN_TASKS = {  # damage: a fragment of the one error line
    "answer-5": "task 'tiny_mc', row 2: the answer index 5 is out of range for its 2 choices",
    "answer-minus-5": "task 'tiny_mc', row 2: the answer index -5 is out of range for its 2 choices",
    "missing-data-file": "a data file of task 'tiny_mc' is missing (Unable to find '{folder}/gone.jsonl')",
    "no-folder": "--include-path {folder}/nonexistent does not exist; give a folder of task YAML files",
}


@pytest.mark.parametrize("damage", BROKEN_TASKS)
def test_a_broken_task_is_one_line(trained_run, tmp_path, capsys, damage):
    pytest.importorskip("lm_eval")
    rows = [*ROWS[:1], {**ROWS[1], "answer": {"answer-5": 5, "answer-minus-5": -5}.get(damage, 1)}]
    data_file = "gone.jsonl" if damage == "missing-data-file" else "rows.jsonl"
    folder = multiple_choice_task(tmp_path / "tasks", rows, data_file)
    include = folder / "nonexistent" if damage == "no-folder" else folder
    before = snapshot(tmp_path)
    code, _, err = run_main(capsys, "eval", trained_run, "--tasks", "tiny_mc", "--include-path", include)
    check_error(code, err, 2, BROKEN_TASKS[damage].format(folder=folder))
    assert snapshot(tmp_path) == before


def test_a_sound_task_still_runs(trained_run, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    folder = multiple_choice_task(tmp_path / "tasks", ROWS)
    code, out, err = run_main(capsys, "eval", trained_run, "--tasks", "tiny_mc", "--include-path", folder, "--json")
    assert code == 0, err
    assert json.loads(out)["tiny_mc"]["sample_len"] == 2


@pytest.mark.slow  # lm-eval indexes its thousands of tasks first (about 20 s)
def test_a_hub_task_offline_is_one_line_and_does_not_hang(trained_run, tmp_path):
    pytest.importorskip("lm_eval")
    result = run_cli("eval", trained_run, "--tasks", "hellaswag", "--limit", "2", cwd=tmp_path, timeout=240)
    check_error(result.returncode, result.stderr, 2, "the data of task 'hellaswag' could not be downloaded")
    assert "--include-path" in result.stderr


@contextmanager
def immutable(path):
    """`chattr +i path`: a file or folder that even root cannot change (chmod does not stop root, who
    runs these tests); skips where the file system or the container refuses the attribute."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize(
    "locked, fragment",
    [
        (
            "checkpoints",
            "could not save checkpoint to {run}/checkpoints/step_0000008 (Operation not permitted); the previous "
            "checkpoint is intact; make {run}/checkpoints writable and resume with --resume",
        ),
        (
            "metrics.jsonl",
            "could not write {run}/metrics.jsonl (Operation not permitted); make {run}/metrics.jsonl writable "
            "and resume with --resume",
        ),
    ],
    ids=["checkpoints-folder", "metrics-file"],
)
def test_a_write_refused_by_permissions_names_the_path_not_the_disk(char_data, tmp_path, capsys, locked, fragment):
    run = tmp_path / "run"
    argv = ["train", "-", f"data.dir={char_data}", f"out_dir={run}", *TINY, "train.checkpoint_interval=4"]
    assert run_main(capsys, *argv, "train.max_steps=4")[0] == 0
    with immutable(run / locked):
        before = snapshot(run / "checkpoints")
        code, _, err = run_main(capsys, *argv, "train.max_steps=8", "--resume")
        # the run says what it did up to the failed save: the error is the last line, and the only one
        lines = err.strip().splitlines()
        check_error(code, lines[-1], 1, fragment.format(run=run))
        assert "Traceback" not in err and sum(line.startswith("error") for line in lines) == 1
        assert snapshot(run / "checkpoints") == before and not list(run.glob("**/*.tmp*"))
