"""What a command tells its user: the summaries of prepare and train, and the surprises they name.

Each test runs the command line (in this process) and reads what it printed, so a silent outcome
(a run without validation, a resume that did nothing, a data folder eval cannot find) fails here.
"""

import re

import pytest
from helpers import TINY, run_main

from minigpt.checkpoint import list_checkpoints

STEPS = ["train.max_steps=4", "train.checkpoint_interval=4", "train.eval_interval=4"]


def train_argv(data_dir, out_dir, *extra):
    return ["train", "-", f"data.dir={data_dir}", f"out_dir={out_dir}", *TINY, *STEPS, *extra]


def test_prepare_ends_with_its_summary(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("ROMEO: hello there\n" * 40)
    out = tmp_path / "data"
    code, stdout, _ = run_main(capsys, "prepare", tmp_path / "corpus.txt", "--tokenizer", "char", "--out", out)
    assert code == 0
    assert re.search(rf"prepared {re.escape(str(out))}: 1 document read; 760 tokens, vocabulary 13 \(char\)", stdout)
    assert "train 684 tokens, val 76 tokens (the last 10% of the text)" in stdout


def test_train_says_what_it_will_do_and_which_checkpoint_is_best(char_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, *train_argv(char_data, out))
    assert code == 0, err
    start = err.splitlines()[0]
    for fragment in ("parameters on cpu", "float32", "tokens per step", "train tokens"):
        assert fragment in start, start
    assert re.search(r"step time [\d.]+ ms", err), err  # measured after the first steps
    best = list_checkpoints(out / "checkpoints")[-1]
    assert re.search(r"best checkpoint: step 4 \(val loss \d+\.\d{4}\)", err), err
    assert f"minigpt sample {out}" in err.splitlines()[-1]
    assert best.name == "step_0000004"


def test_resuming_a_finished_run_says_so(char_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, *train_argv(char_data, out))[0] == 0
    code, _, err = run_main(capsys, *train_argv(char_data, out), "--resume")
    assert code == 0
    assert "already reached train.max_steps=4" in err and "raise train.max_steps" in err
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000004"]


def test_no_val_split_is_said_at_the_start(tmp_path, capsys, shakespeare_text):
    (tmp_path / "corpus.txt").write_text(shakespeare_text[:5000])
    prepare_argv = ["prepare", tmp_path / "corpus.txt", "--tokenizer", "char", "--out", tmp_path / "data"]
    assert run_main(capsys, *prepare_argv, "--val-fraction", "0")[0] == 0
    code, _, err = run_main(capsys, *train_argv(tmp_path / "data", tmp_path / "run"))
    assert code == 0, err
    assert "no val split" in err and "no best checkpoint" in err


def test_eval_finds_the_run_data_from_any_folder(char_data, tmp_path, monkeypatch, capsys):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "data").symlink_to(char_data)
    monkeypatch.chdir(tmp_path / "project")
    assert run_main(capsys, *train_argv("data", "out/run"))[0] == 0  # both relative, as a user types them
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_main(capsys, "eval", "project/out/run")
    assert code == 0, err
    assert "perplexity" in stdout


@pytest.mark.parametrize("which", ["checkpoints", "a step"])
def test_sample_accepts_the_checkpoints_folder(char_data, tmp_path, capsys, which):
    out = tmp_path / "run"
    assert run_main(capsys, *train_argv(char_data, out))[0] == 0
    path = out / "checkpoints" if which == "checkpoints" else out / "checkpoints" / "step_0000004"
    code, stdout, err = run_main(capsys, "sample", path, "--max-new-tokens", "5", "--prompt", "RO", "--seed", "1")
    assert code == 0, err
    assert stdout.startswith("RO")
