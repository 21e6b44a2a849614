"""Fault injection: nothing is lost when a run is killed, interrupted, runs out of disk or diverges.

SIGKILL is injected from inside real `minigpt train` processes: a small driver (DRIVER) wraps one
function of minigpt, torch, safetensors or os so that its Nth call kills the process (before the call,
after it, or after writing only half of its file), then runs `minigpt.cli.main`. Production code has
no test hooks. The kills are applied one after another to the SAME run folder (kill, resume, kill
again ...), so a dozen moments cost a dozen short processes; after the last one a plain --resume must
reproduce an uninterrupted run's losses bit for bit.
"""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY, read_metrics

from minigpt import GPT
from minigpt.checkpoint import list_checkpoints, load_checkpoint, read_best
from minigpt.cli import main
from minigpt.config import load_config
from minigpt.data.batches import load_meta
from minigpt.data.prepare import STAGING, prepare
from minigpt.errors import MinigptError
from minigpt.train.trainer import train

# Wraps one callable, named by $KILL_AT = "module|attribute|N|when[|match]", so that its Nth call
# (counting only calls with an argument whose str contains `match`) SIGKILLs the process:
#   before  the call;  after  it;  half  after it, with the file it wrote (named or open) cut to half its size,
#   the folder it was given half emptied, or (for RunReport.log) the line it appended to metrics.jsonl cut in half.
# $SLOW_DOWN = "module|attribute|seconds" makes every call of one callable sleep first.
DRIVER = r"""
import importlib, os, signal, sys, time
from pathlib import Path

def _owner(module, attribute):
    owner = importlib.import_module(module)
    *parents, name = attribute.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name

def _cut_in_half(args, result):
    paths = [Path(a) for a in args if isinstance(a, (str, os.PathLike))]
    paths += [Path(a.name) for a in args if hasattr(a, "write") and isinstance(getattr(a, "name", None), str)]
    if not paths and hasattr(args[0], "out_dir"):  # RunReport.log: the metrics line it just appended
        metrics = Path(args[0].out_dir) / "metrics.jsonl"
        data = metrics.read_bytes()
        line_start = data.rstrip(b"\n").rfind(b"\n") + 1
        metrics.write_bytes(data[:line_start + (len(data) - line_start) // 2])
    for path in paths:
        if path.is_file():
            os.truncate(path, path.stat().st_size // 2)
        elif path.is_dir():
            files = sorted(path.iterdir())
            for file in files[:max(1, len(files) // 2)]:
                file.unlink()

if os.environ.get("KILL_AT"):
    module, attribute, nth, when, match = (os.environ["KILL_AT"].split("|") + [""])[:5]
    owner, name = _owner(module, attribute)
    original, calls = getattr(owner, name), [0]

    def hooked(*args, **kwargs):
        if match and not any(match in str(a) for a in args):
            return original(*args, **kwargs)
        calls[0] += 1
        if calls[0] != int(nth):
            return original(*args, **kwargs)
        if when != "before":
            result = original(*args, **kwargs)
            if when == "half":
                _cut_in_half(args, result)
        sys.stdout.flush(); sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, hooked)

if os.environ.get("SLOW_DOWN"):
    module, attribute, seconds = os.environ["SLOW_DOWN"].split("|")
    owner, name = _owner(module, attribute)
    slow_original = getattr(owner, name)

    def slowed(*args, **kwargs):
        time.sleep(float(seconds))
        return slow_original(*args, **kwargs)

    setattr(owner, name, slowed)

from minigpt.cli import main
main(sys.argv[1:])
"""

RUN = [
    *TINY,
    "model.dropout=0.1",
    "train.max_steps=40",
    "train.log_interval=2",
    "train.eval_interval=10",
    "train.checkpoint_interval=4",
    "train.keep_checkpoints=2",
]

# (what is interrupted, resumed?, KILL_AT). Applied in this order to one run folder: each process resumes
# from whatever the previous kill left. Checkpoints fall every 4 steps; a resumed process's first save
# is the one after the checkpoint it resumed from.
KILL_MOMENTS = [
    (
        "optimizer step 6, gradients computed, weights not yet updated",
        False,
        "minigpt.train.step|TrainStep.update|6|before",
    ),
    ("rewriting metrics.jsonl on resume", True, "os|replace|1|before|metrics.jsonl"),
    ("checkpoint: temporary folder made, no file in it yet", True, "minigpt.checkpoint|save_file|1|before"),
    ("checkpoint: model.safetensors half written", True, "minigpt.checkpoint|save_file|1|half"),
    ("checkpoint: state.pt half written (second save of the process)", True, "torch|save|2|half"),
    ("checkpoint: before meta.json", True, "minigpt.checkpoint|_write_json|1|before"),
    ("checkpoint: every file written, before fsync", True, "minigpt.checkpoint|_fsync_tree|1|before"),
    ("checkpoint: before the rename into place", True, "os|replace|1|before|.tmp-step_"),
    ("checkpoint: renamed into place, best.json not yet updated", True, "os|replace|1|after|.tmp-step_"),
    ("checkpoint: best.json.tmp written, not yet renamed", True, "os|replace|1|before|best.json"),
    ("pruning an old checkpoint: half its files deleted", True, "shutil|rmtree|1|half|/step_"),
    ("a metrics line half written", True, "minigpt.train.report|RunReport.log|3|half"),
    ("evaluating on the val batches", True, "minigpt.train.trainer|Trainer._evaluate|2|before"),
    ("drawing a training batch", True, "minigpt.data.batches|BatchLoader.next_batch|5|before"),
]


def train_args(data_dir, out_dir, *extra):
    return ["train", "-", f"data.dir={data_dir}", f"out_dir={out_dir}", *RUN, *extra]


def driver(*args, kill_at=None, slow_down=None, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("KILL_AT", "SLOW_DOWN")}
    env["PYTHONPATH"] = str(REPO)
    env.update({k: v for k, v in (("KILL_AT", kill_at), ("SLOW_DOWN", slow_down)) if v})
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], env=env, **popen)


def error_line(stderr: str) -> str:
    """The one error line a failed command printed last (progress notes may come before it)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error") for line in lines) == 1, stderr
    return lines[-1]


def assert_loadable(out_dir) -> int:
    """The newest checkpoint (and the best) load, weights and optimizer state; returns its step."""
    checkpoint = load_checkpoint(out_dir, latest=True)
    state = checkpoint.state()
    assert state["optimizer"]["optimizers"] and state["rng"]
    assert all(torch.isfinite(t).all() for t in checkpoint.weights.values())
    load_checkpoint(out_dir)  # the best one
    return checkpoint.record.step


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory):
    """An uninterrupted run of RUN, in this process (bitwise the same as in a fresh one on CPU)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(None, [f"data.dir={char_data}", f"out_dir={out}", *RUN]))
    return read_metrics(out)


def test_sigkill_at_many_moments_then_resume_reproduces_every_loss(char_data, reference, tmp_path):
    out = tmp_path / "run"
    steps = []
    for what, resume, kill_at in KILL_MOMENTS:
        process = driver(
            *train_args(char_data, out),
            *(["--resume"] if resume else []),
            kill_at=kill_at,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, (
            f"not killed at: {what} (rc {process.returncode}): {stderr[-800:]}"
        )
        steps.append(assert_loadable(out))
    print(f"\nSIGKILL moments tried: {len(KILL_MOMENTS)}; newest checkpoint after each: {steps}")
    assert len(KILL_MOMENTS) >= 10
    assert len(set(steps)) >= 5, "the kills should fall at different points of the run"

    train(load_config(None, [f"data.dir={char_data}", f"out_dir={out}", *RUN]), resume=True)
    assert read_metrics(out) == reference  # every train and val loss, bit for bit
    assert not any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_exits_128_plus_its_number_and_resumes_exactly(char_data, reference, tmp_path, sig):
    out = tmp_path / "run"
    process = driver(
        *train_args(char_data, out),
        slow_down="minigpt.train.trainer|Trainer.train_step|0.1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and "train_loss" in metrics.read_text()):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.05)
    sent = time.time()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert time.time() - sent < 30
    assert process.returncode == 128 + sig, stderr  # 130 / 143, as a shell reports them: `&&` does not go on
    assert f"stopped by {sig.name}" in stderr and "Traceback" not in stderr
    stopped_at = assert_loadable(out)
    assert 0 < stopped_at < 40

    train(load_config(None, [f"data.dir={char_data}", f"out_dir={out}", *RUN]), resume=True)
    # the stop logged and evaluated once more at its step (its checkpoint knows its val loss); all else is identical
    resumed = [m for m in read_metrics(out) if not (m["step"] == stopped_at and m not in reference)]
    assert resumed == reference


@pytest.mark.parametrize(
    "where, file",
    [
        ("minigpt.checkpoint.save_file", "model.safetensors"),
        ("torch.save", "state.pt"),
        ("minigpt.checkpoint._write_json", "meta.json"),
    ],
)
def test_a_full_disk_keeps_the_previous_checkpoint_and_exits_1(
    char_data, reference, tmp_path, monkeypatch, capsys, where, file
):
    module_name, name = where.rsplit(".", 1)
    owner = sys.modules[module_name]
    original, calls = getattr(owner, name), []

    def full_disk(*args, **kwargs):
        calls.append(any(str(getattr(a, "name", a)).endswith(file) for a in args))  # a path, or a file open on it
        if sum(calls) == 2 and calls[-1]:  # writing that file of the second checkpoint, step 8
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, full_disk)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(char_data, out))
    assert exit_info.value.code == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: could not save checkpoint") and "No space left on device" in line
    assert "step_0000008" in line and "--resume" in line
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")] == []
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000004"]
    assert read_best(out / "checkpoints")["step"] == 4 and assert_loadable(out) == 4

    monkeypatch.setattr(owner, name, original)  # space was freed
    main([*train_args(char_data, out), "--resume"])
    assert read_metrics(out) == reference


def test_a_full_disk_while_logging_is_one_line_and_exit_1(char_data, tmp_path, monkeypatch, capsys):
    import minigpt.metrics

    appends = []

    def full_disk_open(file, mode="r", *args, **kwargs):
        if Path(file).name == "metrics.jsonl" and "a" in mode:
            appends.append(1)
            if len(appends) == 6:
                raise OSError(errno.ENOSPC, "No space left on device")
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(minigpt.metrics, "open", full_disk_open, raising=False)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(char_data, out))
    assert exit_info.value.code == 1
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "metrics.jsonl" in line and "--resume" in line
    assert_loadable(out)


def nan_at_step(monkeypatch, step: int) -> None:
    """The training loss of optimizer step `step` (grad_accum 1) becomes NaN, once."""
    real_forward, calls = GPT.forward, []

    def forward(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if self.training and targets is not None:
            calls.append(1)
            if len(calls) == step:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def test_a_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(char_data, reference, tmp_path, monkeypatch, capsys):
    nan_at_step(monkeypatch, 11)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(char_data, out))
    assert exit_info.value.code == 1
    line = error_line(capsys.readouterr().err)
    assert "non-finite loss or gradients at step 11" in line and "step_0000008" in line and "train.on_nan" in line
    assert [p.name for p in list_checkpoints(out / "checkpoints")][-1] == "step_0000008"
    assert assert_loadable(out) == 8  # finite weights

    monkeypatch.undo()  # recovery: resume from the last good checkpoint
    main([*train_args(char_data, out), "--resume"])
    assert read_metrics(out) == reference


def test_a_nan_loss_with_on_nan_skip_skips_the_step_and_finishes(char_data, tmp_path, monkeypatch, capsys):
    nan_at_step(monkeypatch, 11)
    out = tmp_path / "run"
    main([*train_args(char_data, out), "train.on_nan=skip"])
    assert "non-finite loss or gradients at step 11" in capsys.readouterr().err
    assert assert_loadable(out) == 40
    losses = [m["train_loss"] for m in read_metrics(out) if "train_loss" in m]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)  # step 11 is not a logged step


def test_a_diverging_learning_rate_never_replaces_the_best_checkpoint(char_data, tmp_path, capsys):
    out = tmp_path / "run"
    main(train_args(char_data, out, "train.max_steps=16", "train.lr=3e-3"))
    best = read_best(out / "checkpoints")
    good = load_checkpoint(out).weights
    assert best["step"] == 16

    with _maybe_exit() as outcome:  # lr 1e3 (the config's lr applies to a resumed run): the loss explodes
        main([*train_args(char_data, out, "train.max_steps=32", "train.lr=1e3"), "--resume"])
    err = capsys.readouterr().err
    diverged = [m["train_loss"] for m in read_metrics(out) if m["step"] > 16 and "train_loss" in m]
    assert not all(math.isfinite(x) and x < 10 for x in diverged), diverged
    if outcome.code:  # it went all the way to NaN: stopped, naming the newest and the best checkpoint
        assert outcome.code == 1 and "non-finite loss" in error_line(err) and "the best is step 16" in err
    assert read_best(out / "checkpoints") == best
    kept = load_checkpoint(out)
    assert kept.record.step == 16 and all(torch.equal(kept.weights[k], good[k]) for k in good)
    newest = list_checkpoints(out / "checkpoints")[-1].name
    print(f"\ndivergence with lr=1e3: exit {outcome.code}, newest checkpoint {newest}, best still step 16")

    # recovery: drop the checkpoints after the best one, resume with a sane learning rate
    for path in list_checkpoints(out / "checkpoints"):
        if path.name > "step_0000016":
            shutil.rmtree(path)
    main([*train_args(char_data, out, "train.max_steps=32", "train.lr=3e-3"), "--resume"])
    losses = [m["train_loss"] for m in read_metrics(out) if "train_loss" in m]
    assert all(math.isfinite(x) and x < 4.5 for x in losses) and read_best(out / "checkpoints")["step"] > 16


class _maybe_exit:
    """Record a SystemExit's code (0 if the call returns)."""

    code = 0

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is SystemExit:
            self.code = value.code
            return True
        return False


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(shakespeare_text * 3)  # 3.3M characters: ~26 jobs for the (slowed) writer
    return path


def assert_not_prepared(out: Path) -> None:
    assert not (out / "meta.json").exists()
    with pytest.raises(MinigptError, match="has no meta.json"):
        load_meta(out)


def test_a_prepare_killed_while_writing_leaves_nothing_that_looks_done(big_corpus, tmp_path):
    out = tmp_path / "data"
    process = driver(
        "prepare",
        big_corpus,
        "--tokenizer",
        "char",
        "--out",
        out,
        "--num-proc",
        "1",
        slow_down="minigpt.data.prepare|_encode_job|0.05",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staged = out / STAGING / "train.bin"
    deadline = time.time() + 60
    while not (staged.exists() and staged.stat().st_size > 0):
        assert process.poll() is None and time.time() < deadline, "prepare ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert {p.name for p in out.iterdir()} == {STAGING}  # no meta.json, train.bin or val.bin
    assert_not_prepared(out)

    meta = prepare(str(big_corpus), "char", out, num_proc=1, progress=False)
    assert load_meta(out) == json.loads(json.dumps(meta))
    assert (out / "train.bin").stat().st_size == meta["train_tokens"] * 2 and not (out / STAGING).exists()


def test_a_prepare_killed_while_moving_its_files_into_place_can_be_rerun(big_corpus, tmp_path):
    out = tmp_path / "data"
    process = driver(
        "prepare",
        big_corpus,
        "--tokenizer",
        "char",
        "--out",
        out,
        "--num-proc",
        "1",
        kill_at="os|replace|2|before",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert (out / "train.bin").exists() and not (out / "val.bin").exists()  # killed between the moves
    assert_not_prepared(out)

    meta = prepare(str(big_corpus), "char", out, num_proc=1, progress=False)
    assert load_meta(out)["train_tokens"] == meta["train_tokens"] > 0
