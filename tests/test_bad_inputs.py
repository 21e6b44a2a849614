"""Every command, fed bad input: one line on stderr, exit code 2 (or 1), no traceback, nothing written.

Each case of CASES runs `minigpt ARGS` in this process through `minigpt.cli.main` (a few run in a
real process too), and checks: the exit code; a single stderr line `error: ...` that names the
offending value (the case's fragment, formatted with the world's paths); no "Traceback"; and that
no file under the test's world (data folders, runs, outputs, the working directory) was created,
changed or removed. The untrusted-file tests at the end show that a malicious pickle is refused,
never run.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, run_cli, run_main

from minigpt.checkpoint import list_checkpoints, safe_torch_load
from minigpt.config import load_config
from minigpt.data.prepare import prepare
from minigpt.errors import MinigptError
from minigpt.train.trainer import train

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_CUDA = torch.cuda.is_available()

# `minigpt train` on the char data, into a fresh folder; a case appends overrides
TRAIN = ["train", "-", "data.dir={char}", "out_dir={root}/fresh", *TINY]
RESUME = ["train", "-", "data.dir={char}", *TINY]  # + out_dir=... --resume
SAMPLE = ["sample", "{run}", "--max-new-tokens", "2", "--prompt", "RO"]
EVAL = ["eval", "{run}"]
PREPARE = ["--tokenizer", "char", "--out", "{root}/prepared"]
ATTENTION = ["attention", "{run}", "--prompt", "ROMEO", "--out", "{root}/attention.png"]
PLOT_OUT = ["--out", "{root}/loss.png"]

CASES = [  # (name, argv, exit code, a fragment of the one error line)
    # --- the command line itself
    ("no-command", [], 2, "required: COMMAND"),
    ("unknown-command", ["fly"], 2, "invalid choice: 'fly'"),
    # --- prepare
    ("prepare-missing-source", ["prepare", "{root}/missing.txt", *PREPARE], 2, "missing.txt' not found: give a file"),
    ("prepare-empty-corpus", ["prepare", "{root}/empty.txt", *PREPARE], 2, "no text found in '{root}/empty.txt'"),
    (
        "prepare-binary-file-type",
        ["prepare", "{root}/image.bin", *PREPARE],
        2,
        "unsupported file type '.bin' for {root}/image.bin; accepted: .txt",
    ),
    ("prepare-binary-text", ["prepare", "{root}/binary.txt", *PREPARE], 2, "binary.txt is not a text file"),
    (
        "prepare-folder-without-text",
        ["prepare", "{root}/notext", *PREPARE],
        2,
        "no .txt, .md, .jsonl, .json or .parquet files found in '{root}/notext'",
    ),
    (
        "prepare-unknown-tokenizer",
        ["prepare", "{root}/small.txt", "--tokenizer", "words", "--out", "{root}/p"],
        2,
        "unknown tokenizer 'words'; accepted: char, gpt2",
    ),
    (
        "prepare-bpe-too-small",
        ["prepare", "{root}/small.txt", "--tokenizer", "bpe:10", "--out", "{root}/p"],
        2,
        "'bpe:10': bpe:N needs a whole N from 257",
    ),
    (
        "prepare-val-fraction",
        ["prepare", "{root}/small.txt", *PREPARE, "--val-fraction", "1.5"],
        2,
        "val_fraction must be in [0, 1), e.g. 0.1; got 1.5",
    ),
    (
        "prepare-val-fraction-not-a-number",
        ["prepare", "{root}/small.txt", *PREPARE, "--val-fraction", "abc"],
        2,
        "--val-fraction: invalid float value: 'abc'",
    ),
    (
        "prepare-num-proc-0",
        ["prepare", "{root}/small.txt", *PREPARE, "--num-proc", "0"],
        2,
        "num_proc must be a whole number >= 1; got 0",
    ),
    (
        "prepare-max-chars-0",
        ["prepare", "{root}/small.txt", *PREPARE, "--max-chars", "0"],
        2,
        "max_chars must be a whole number >= 1; got 0",
    ),
    (
        "prepare-out-is-a-file",
        ["prepare", "{root}/small.txt", "--tokenizer", "char", "--out", "{root}/empty.txt"],
        2,
        "--out {root}/empty.txt is a file; give a folder",
    ),
    (
        "prepare-out-under-a-file",
        ["prepare", "{root}/small.txt", "--tokenizer", "char", "--out", "{root}/empty.txt/data"],
        2,
        "--out {root}/empty.txt/data lies under {root}/empty.txt, which is a file",
    ),
    ("prepare-out-empty", ["prepare", "{root}/small.txt", "--out", ""], 2, "--out is empty (an unset variable?)"),
    (
        "prepare-over-a-users-train-bin",
        ["prepare", "{root}/small.txt", "--tokenizer", "char", "--out", "{root}/userdata"],
        2,
        "{root}/userdata already holds train.bin, which minigpt did not write",
    ),
    (
        "prepare-over-nanogpt-data",
        ["prepare", "{root}/small.txt", "--tokenizer", "char", "--out", "{root}/nanodata"],
        2,
        "{root}/nanodata already holds train.bin, val.bin, which minigpt did not write",
    ),
    (
        "prepare-empty-jsonl",
        ["prepare", "{root}/empty.jsonl", *PREPARE],
        2,
        "{root}/empty.jsonl is empty: it holds no rows",
    ),
    (
        "prepare-row-not-an-object",
        ["prepare", "{root}/list.jsonl", *PREPARE],
        2,
        "list.jsonl row 1 is list, not a JSON",
    ),
    (
        "prepare-bpe-size-absurd",
        ["prepare", "{root}/small.txt", "--tokenizer", "bpe:99999999999", "--out", "{root}/prepared"],
        2,
        "bpe:N needs a whole N from 257 (256 bytes + end-of-text) to 1,048,576",
    ),
    ("prepare-named-pipe", ["prepare", "{root}/pipe", *PREPARE], 2, "{root}/pipe is not a regular file or a folder"),
    ("prepare-dev-zero", ["prepare", "/dev/zero", *PREPARE], 2, "/dev/zero is not a regular file or a folder"),
    (
        "prepare-out-already-prepared",
        ["prepare", "{root}/small.txt", "--tokenizer", "char", "--out", "{tiny}"],
        2,
        "{tiny} already holds prepared data",
    ),
    (
        "prepare-malformed-jsonl",
        ["prepare", "{root}/bad.jsonl", *PREPARE],
        2,
        "could not read {root}/bad.jsonl as json",
    ),
    (
        "prepare-wrong-text-column",
        ["prepare", "{root}/rows.jsonl", *PREPARE],
        2,
        "column 'text' does not exist; columns: 'content' (str); choose one with --text-column",
    ),
    # --- train: the config
    ("train-config-missing", ["train", "{root}/missing.yaml"], 2, "config file {root}/missing.yaml does not exist"),
    ("train-config-is-a-folder", ["train", "{root}/notext"], 2, "{root}/notext does not exist (it is a folder)"),
    (
        "train-malformed-yaml",
        ["train", "{root}/bad.yaml"],
        2,
        "config {root}/bad.yaml is not valid YAML at line 3, column 6",
    ),
    ("train-yaml-not-a-mapping", ["train", "{root}/list.yaml"], 2, "must be a mapping of keys"),
    (
        "train-unknown-key",
        [*TRAIN, "train.max_step=3"],
        2,
        "unknown config key 'train.max_step'; did you mean train.max_steps",
    ),
    ("train-unknown-section", [*TRAIN, "trian.lr=1"], 2, "unknown config key 'trian'; did you mean train"),
    ("train-mistyped-value", [*TRAIN, "train.max_steps=abc"], 2, "train.max_steps must be int, got 'abc'"),
    (
        "train-override-without-value",
        [*TRAIN, "train.max_steps"],
        2,
        "override 'train.max_steps' is not of the form key=value",
    ),
    (
        "train-n-embd-not-divisible",
        [*TRAIN, "model.n_head=4", "model.n_embd=30"],
        2,
        "n_embd (30) must be divisible by n_head (4)",
    ),
    (
        "train-n-kv-head-not-dividing",
        [*TRAIN, "model.n_head=4", "model.n_kv_head=3"],
        2,
        "n_kv_head (3) must divide n_head (4)",
    ),
    ("train-batch-size-0", [*TRAIN, "train.batch_size=0"], 2, "train.batch_size must be at least 1, got 0"),
    ("train-negative-lr", [*TRAIN, "train.lr=-0.001"], 2, "train.lr must not be negative, got -0.001"),
    ("train-absurd-depth", [*TRAIN, "model.n_layer=10000000"], 2, "training this model would need at least"),
    (
        "train-absurd-batch",
        [*TRAIN, "train.batch_size=10000000"],
        2,
        "GB available; make the model or train.batch_size",
    ),
    ("train-absurd-context", [*TRAIN, "model.block_size=100000000"], 2, "training this model would need at least"),
    ("train-absurd-width", [*TRAIN, "model.n_embd=4000000"], 2, "training this model would need at least"),
    ("train-beta1-1.5", [*TRAIN, "train.beta1=1.5"], 2, "train.beta1 must be in [0, 1), e.g. 0.9; got 1.5"),
    ("train-beta2-negative", [*TRAIN, "train.beta2=-0.5"], 2, "train.beta2 must be in [0, 1), e.g. 0.9; got -0.5"),
    ("train-seed-negative", [*TRAIN, "seed=-1"], 2, "seed must be a whole number from 0 to 2**64 - 1, got -1"),
    ("train-seed-2**64", [*TRAIN, "seed=18446744073709551616"], 2, "seed must be a whole number from 0 to 2**64 - 1"),
    (
        "train-rope-base-0",
        [*TRAIN, "model.pos_encoding=rope", "model.rope_base=0"],
        2,
        "rope_base must be a number above 1 (10000 is usual), got 0",
    ),
    ("train-vocab-size-set", [*TRAIN, "model.vocab_size=100"], 2, "model.vocab_size cannot be set: vocab_size comes"),
    ("train-bad-choice", [*TRAIN, "train.on_nan=ignore"], 2, "train.on_nan is 'ignore'; expected one of stop, skip"),
    ("train-unknown-device", [*TRAIN, "device=tpu"], 2, "device is 'tpu'; expected auto, cpu, cuda"),
    ("train-cuda-missing", [*TRAIN, "device=cuda"], 2, "device 'cuda' was asked for but this machine has no CUDA GPU"),
    ("train-float16-on-cpu", [*TRAIN, "device=cpu", "dtype=float16"], 2, "dtype float16 is for GPUs"),
    # --- train: the data
    ("train-data-missing", [*TRAIN, "data.dir={root}/nodata"], 2, "data folder {root}/nodata does not exist"),
    ("train-data-without-meta", [*TRAIN, "data.dir={nometa}"], 2, "data folder {nometa} has no meta.json"),
    (
        "train-data-garbage-meta",
        [*TRAIN, "data.dir={badmeta}"],
        2,
        "{badmeta}/meta.json is unreadable or not valid JSON",
    ),
    (
        "train-block-size-beyond-the-data",
        [*TRAIN, "data.dir={tiny}", "model.block_size=64"],
        2,
        "a window of block_size + 1 = 65 is needed; use a block_size below",
    ),
    (
        "train-val-split-shorter-than-the-block",
        [*TRAIN, "data.dir={shortval}"],
        2,
        "{shortval}/val.bin holds 20 tokens, but a window of block_size + 1 = 33 is needed; use a block_size "
        "below 20 or prepare again with a larger --val-fraction",
    ),
    # --- train: the run folder and its checkpoints
    (
        "train-out-dir-a-file",
        [*RESUME, "out_dir={root}/empty.txt", "train.max_steps=2"],
        2,
        "out_dir {root}/empty.txt is a file; give a",
    ),
    (
        "train-out-dir-under-a-file",
        [*RESUME, "out_dir={root}/empty.txt/run", "train.max_steps=2"],
        2,
        "out_dir {root}/empty.txt/run lies under {root}/empty.txt, which is a file",
    ),
    ("train-out-dir-empty", [*RESUME, "out_dir=", "train.max_steps=2"], 2, "out_dir is empty (an unset variable?)"),
    ("train-resume-without-checkpoint", [*TRAIN, "--resume"], 2, "{root}/fresh holds no checkpoint to resume from"),
    (  # key=value overrides after a flag are taken as overrides (here: where to resume), not refused
        "train-overrides-after-a-flag",
        ["train", "-", "--resume", "data.dir={char}", "out_dir={root}/later", *TINY],
        2,
        "{root}/later holds no checkpoint to resume from",
    ),
    ("train-fresh-run-over-a-run", [*RESUME, "out_dir={run}"], 2, "{run} already holds checkpoints; add --resume"),
    (
        "train-into-a-users-folder",
        [*RESUME, "out_dir={root}/userrun"],
        2,
        "out_dir {root}/userrun already holds config.yaml, metrics.jsonl and no minigpt checkpoint",
    ),
    (
        "train-resume-other-architecture",
        [*RESUME, "out_dir={run}", "model.n_layer=3", "--resume"],
        2,
        "was trained with model.n_layer=2 but the config says 3",
    ),
    (
        "train-resume-other-optimizer",
        [*RESUME, "out_dir={run}", "train.optimizer=muon", "--resume"],
        2,
        "does not fit train.optimizer=muon; resume with the optimizer the run was trained with, adamw",
    ),
    ("train-resume-truncated-weights", [*RESUME, "out_dir={trunc}", "--resume"], 2, "step_0000004 is corrupted"),
    (
        "train-resume-truncated-state",
        [*RESUME, "out_dir={truncstate}", "--resume"],
        2,
        "refusing to load {truncstate}/checkpoints/step_0000004/state.pt",
    ),
    # --- sample
    ("sample-missing-path", ["sample", "{root}/norun"], 2, "{root}/norun does not exist"),
    ("sample-folder-without-checkpoint", ["sample", "{root}/notext"], 2, "{root}/notext holds no checkpoint"),
    (
        "sample-temperature-negative",
        [*SAMPLE, "--temperature", "-1"],
        2,
        "--temperature must be 0 (greedy) or a positive number, got -1.0",
    ),
    ("sample-temperature-nan", [*SAMPLE, "--temperature", "nan"], 2, "--temperature must be 0 (greedy) or a positive"),
    ("sample-top-p-0", [*SAMPLE, "--top-p", "0"], 2, "--top-p must be a number in (0, 1], got 0.0"),
    ("sample-top-p-1.5", [*SAMPLE, "--top-p", "1.5"], 2, "--top-p must be a number in (0, 1], got 1.5"),
    ("sample-top-k-0", [*SAMPLE, "--top-k", "0"], 2, "--top-k must be a whole number, 1 or more, got 0"),
    (
        "sample-max-new-tokens-negative",
        [*SAMPLE, "--max-new-tokens", "-1"],
        2,
        "--max-new-tokens must be a whole number, 1 or more, got -1",
    ),
    ("sample-num-samples-0", [*SAMPLE, "--num-samples", "0"], 2, "--num-samples must be at least 1, got 0"),
    ("sample-absurd-num-samples", [*SAMPLE, "--num-samples", "100000000"], 2, "100,000,000 samples at once would"),
    ("sample-char-vocab-without-chars", ["sample", "{nochars}"], 2, "char_vocab.json is damaged: it has no list"),
    ("sample-best-json-a-list", ["sample", "{badbest}"], 2, "badbest/checkpoints/best.json is damaged"),
    ("sample-absurd-vocabulary", ["sample", "{hugevocab}"], 2, "parameters) would need at least"),
    (
        "sample-prompt-file-a-pipe",
        ["sample", "{run}", "--prompt-file", "{root}/pipe"],
        2,
        "prompt file {root}/pipe is not a regular file",
    ),
    (
        "sample-prompt-file-dev-zero",
        ["sample", "{run}", "--prompt-file", "/dev/zero"],
        2,
        "prompt file /dev/zero is not a regular file",
    ),
    (
        "sample-unknown-characters",
        ["sample", "{run}", "--prompt", "café €"],
        2,
        "character(s) not in the char vocabulary: 'é', '€'",
    ),
    (
        "sample-cuda-missing",
        [*SAMPLE, "--device", "cuda"],
        2,
        "device 'cuda' was asked for but this machine has no CUDA",
    ),
    ("sample-unknown-dtype", [*SAMPLE, "--dtype", "float64"], 2, "unknown dtype 'float64'; expected auto, float32"),
    ("sample-truncated-weights", ["sample", "{trunc}"], 2, "checkpoint {trunc}/checkpoints/step_0000004 is corrupted"),
    ("sample-garbage-meta", ["sample", "{garbage}"], 2, "checkpoint {garbage}/checkpoints/step_0000004 is corrupted"),
    (
        "sample-meta-other-architecture",
        ["sample", "{archmeta}"],
        2,
        "does not match the model: it has no transformer.h.2",
    ),
    (
        "sample-prompt-file-missing",
        [*SAMPLE[:2], "--prompt-file", "{root}/nope.txt"],
        2,
        "prompt file {root}/nope.txt does not exist",
    ),
    (
        "sample-prompt-file-is-a-folder",
        [*SAMPLE[:2], "--prompt-file", "{root}/notext"],
        2,
        "prompt file {root}/notext is a folder",
    ),
    ("sample-gpt2-folder-corrupted-weights", ["sample", "{gpt2bad}"], 2, "{gpt2bad}/model.safetensors is corrupted"),
    # --- eval
    (
        "eval-data-of-another-tokenizer",
        [*EVAL, "--data", "{gpt2data}"],
        2,
        "was prepared with tokenizer 'gpt2' but the model uses 'char'",
    ),
    ("eval-data-of-another-char-vocabulary", [*EVAL, "--data", "{tiny}"], 2, "with a different 'char' vocabulary"),
    ("eval-data-without-meta", [*EVAL, "--data", "{nometa}"], 2, "data folder {nometa} has no meta.json"),
    (
        "eval-text-file-missing",
        [*EVAL, "--text-file", "{root}/nope.txt"],
        2,
        "text file {root}/nope.txt does not exist",
    ),
    ("eval-text-file-empty", [*EVAL, "--text-file", "{root}/empty.txt"], 2, "text file {root}/empty.txt is empty"),
    ("eval-text-file-binary", [*EVAL, "--text-file", "{root}/binary.txt"], 2, "{root}/binary.txt is not UTF-8 text"),
    (
        "eval-text-file-unknown-characters",
        [*EVAL, "--text-file", "{root}/unicode.txt"],
        2,
        "not in the char vocabulary: '5', '€'",
    ),
    ("eval-batch-size-0", [*EVAL, "--batch-size", "0"], 2, "--batch-size must be at least 1, got 0"),
    ("eval-text-file-a-pipe", [*EVAL, "--text-file", "{root}/pipe"], 2, "{root}/pipe is not a regular file"),
    ("eval-text-file-dev-zero", [*EVAL, "--text-file", "/dev/zero"], 2, "/dev/zero is not a regular file"),
    ("eval-truncated-weights", ["eval", "{trunc}"], 2, "checkpoint {trunc}/checkpoints/step_0000004 is corrupted"),
    ("eval-cuda-missing", [*EVAL, "--device", "cuda"], 2, "device 'cuda' was asked for but this machine has no CUDA"),
    # --- attention
    ("attention-layer-out-of-range", [*ATTENTION, "--layer", "5"], 2, "layer 5 is out of range"),
    ("attention-head-out-of-range", [*ATTENTION, "--head", "9"], 2, "head 9 is out of range"),
    (
        "attention-unknown-characters",
        ["attention", "{run}", "--prompt", "€", "--out", "{root}/a.png"],
        2,
        "not in the char vocabulary: '€'",
    ),
    (
        "attention-folder-without-checkpoint",
        ["attention", "{root}/notext", "--prompt", "RO", "--out", "{root}/a.png"],
        2,
        "{root}/notext holds no checkpoint",
    ),
    ("attention-out-a-folder", [*ATTENTION[:-1], "{root}/notext"], 2, "--out {root}/notext is a folder; give a file"),
    (
        "attention-out-under-a-file",
        [*ATTENTION[:-1], "{root}/empty.txt/a.png"],
        2,
        "--out {root}/empty.txt/a.png lies under {root}/empty.txt, which is a file",
    ),
    ("attention-out-empty", [*ATTENTION[:-1], ""], 2, "--out is empty (an unset variable?)"),
    (
        "attention-out-exists",
        [*ATTENTION[:-1], "{root}/existing.png"],
        2,
        "--out {root}/existing.png already exists; give a new file name, or add --force",
    ),
    # --- plot
    (
        "export-out-under-a-file",
        ["export", "{run}", "--format", "hf", "--out", "{root}/small.txt/sub"],
        2,
        "--out {root}/small.txt/sub lies under {root}/small.txt, which is a file",
    ),
    ("plot-out-a-folder", ["plot", "{run}", "--out", "{root}/notext"], 2, "--out {root}/notext is a folder"),
    (
        "plot-out-under-a-file",
        ["plot", "{run}", "--out", "{root}/empty.txt/loss.png"],
        2,
        "lies under {root}/empty.txt, which is a file",
    ),
    ("plot-out-empty", ["plot", "{run}", "--out", ""], 2, "--out is empty (an unset variable?)"),
    (
        "plot-out-exists",
        ["plot", "{run}", "--out", "{root}/existing.png"],
        2,
        "--out {root}/existing.png already exists",
    ),
    (
        "plot-folder-without-metrics",
        ["plot", "{root}/notext", *PLOT_OUT],
        2,
        "no metrics file at {root}/notext/metrics.jsonl",
    ),
    ("plot-missing-run", ["plot", "{root}/norun", *PLOT_OUT], 2, "no metrics file at {root}/norun"),
    ("plot-garbage-metrics", ["plot", "{root}/badmetrics", *PLOT_OUT], 2, "metrics.jsonl, line 1 is not JSON"),
    ("plot-bad-x", ["plot", "{run}", *PLOT_OUT, "--x", "epoch"], 2, "argument --x: invalid choice: 'epoch'"),
]

SKIP = {"train-cuda-missing": HAS_CUDA, "sample-cuda-missing": HAS_CUDA, "eval-cuda-missing": HAS_CUDA}
# cases that wait on fixes in modules other engineers own (see the report of issue #7)
PENDING: dict[str, str] = {}

# run in a real process as well: what a user sees, start-up included
IN_A_PROCESS = ["prepare-missing-source", "train-malformed-yaml", "sample-top-p-1.5", "eval-data-of-another-tokenizer"]


class Evil:
    """Unpickling this runs a command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.fixture(scope="module")
def world(tmp_path_factory, char_data, shakespeare_text) -> dict[str, Path]:
    """Every path the cases name: good and bad corpora, data folders, runs and checkpoints."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "empty.txt").write_text("")
    (root / "small.txt").write_text(shakespeare_text[:2000])
    (root / "image.bin").write_bytes(bytes(range(256)) * 4)
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    (root / "unicode.txt").write_text("ROMEO: a price of 5 €\n", encoding="utf-8")
    (root / "bad.yaml").write_text("model:\n  n_layer: [2\ntrain: {}\n")
    (root / "list.yaml").write_text("- model\n- train\n")
    (root / "bad.jsonl").write_text('{"text": "one"}\n{"text": \n')
    (root / "rows.jsonl").write_text('{"content": "one"}\n{"content": "two"}\n')
    (root / "notext").mkdir()
    (root / "notext" / "table.csv").write_text("a,b\n1,2\n")
    os.mkfifo(root / "pipe")  # reading it would block forever
    (root / "existing.png").write_bytes(b"the user's own picture")
    (root / "userdata").mkdir()
    (root / "userdata" / "notes.txt").write_text("my notes")
    (root / "userdata" / "train.bin").write_bytes(b"my own tokens")
    (root / "userrun").mkdir()  # the user's own config and metrics, in the folder they name as out_dir
    (root / "userrun" / "config.yaml").write_text("my: settings\n")
    (root / "userrun" / "metrics.jsonl").write_text('{"my": "numbers"}\n')
    (root / "nanodata").mkdir()
    for name in ("train.bin", "val.bin", "meta.pkl"):  # a nanoGPT-style data folder
        (root / "nanodata" / name).write_bytes(b"nanoGPT's")
    (root / "empty.jsonl").write_text("")
    (root / "list.jsonl").write_text("[1, 2, 3]\n")
    (root / "badmetrics").mkdir()
    (root / "badmetrics" / "metrics.jsonl").write_text('{"step": 1, "train_loss"\n{"step": 2, "train_loss": 3.0}\n')

    (root / "tiny.txt").write_text(shakespeare_text[:60])  # 54 train tokens: less than block_size 64 needs
    prepare(str(root / "tiny.txt"), "char", root / "tiny", num_proc=1, progress=False)
    prepare(str(root / "small.txt"), "gpt2", root / "gpt2data", num_proc=1, progress=False)
    prepare(str(root / "small.txt"), "char", root / "shortval", val_fraction=0.01, num_proc=1, progress=False)
    (root / "nometa").mkdir()
    for name in ("train.bin", "val.bin", "char_vocab.json"):
        shutil.copy(root / "tiny" / name, root / "nometa" / name)
    shutil.copytree(root / "tiny", root / "badmeta")
    (root / "badmeta" / "meta.json").write_text('{"tokenizer": "char", ')

    run = root / "run"
    train(
        load_config(
            None,
            [
                f"data.dir={char_data}",
                f"out_dir={run}",
                *TINY,
                "train.max_steps=4",
                "train.checkpoint_interval=4",
                "train.eval_interval=4",
            ],
        )
    )
    [step] = list_checkpoints(run / "checkpoints")
    assert step.name == "step_0000004"
    paths = {
        "root": root,
        "run": run,
        "char": char_data,
        "tiny": root / "tiny",
        "gpt2data": root / "gpt2data",
        "nometa": root / "nometa",
        "badmeta": root / "badmeta",
        "shortval": root / "shortval",
    }

    def broken(name: str, file: str, damage) -> None:
        copy = _copy_run(run, root / name)
        target = copy / "checkpoints" / "step_0000004" / file
        damage(target)
        paths[name] = copy

    broken("trunc", "model.safetensors", lambda p: os.truncate(p, p.stat().st_size // 2))
    broken("truncstate", "state.pt", lambda p: os.truncate(p, p.stat().st_size // 2))
    broken("garbage", "meta.json", lambda p: p.write_bytes(b"\x00\xff garbage"))

    def other_architecture(p: Path) -> None:
        meta = json.loads(p.read_text())
        meta["config"]["model"]["n_layer"] = 3
        p.write_text(json.dumps(meta))

    broken("archmeta", "meta.json", other_architecture)

    def absurd_vocabulary(p: Path) -> None:
        meta = json.loads(p.read_text())
        meta["config"]["model"].update(vocab_size=1_000_000_000, n_embd=64, n_head=1, n_layer=1, block_size=1)
        p.write_text(json.dumps(meta))

    broken("hugevocab", "meta.json", absurd_vocabulary)
    broken("nochars", "char_vocab.json", lambda p: p.write_text('{"eot": false}'))
    damaged_best = _copy_run(run, root / "badbest")
    (damaged_best / "checkpoints" / "best.json").write_text("[4]")
    paths["badbest"] = damaged_best
    gpt2bad = root / "gpt2bad"
    gpt2bad.mkdir()
    (gpt2bad / "config.json").write_text(
        json.dumps({"vocab_size": 16, "n_positions": 8, "n_layer": 1, "n_head": 1, "n_embd": 4})
    )
    (gpt2bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    paths["gpt2bad"] = gpt2bad
    return paths


def snapshot(*folders: Path) -> dict:
    """Every file and folder below `folders`: path -> (size, mtime) for files, None for folders."""
    state = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            stat = path.stat()
            state[path] = None if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return state


def fill(argv: list[str], paths: dict) -> list[str]:
    return [arg.format(**paths) for arg in argv]


def check_error(code, stderr: str, expected_code: int, fragment: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == expected_code, f"exit code {code}, expected {expected_code}: {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_main(capsys, *argv)


def _marks(name: str) -> list:
    marks = []
    if SKIP.get(name):
        marks.append(pytest.mark.skip(reason="this machine has a CUDA GPU"))
    if name in PENDING:
        marks.append(pytest.mark.xfail(strict=True, reason=PENDING[name]))
    return marks


@pytest.mark.parametrize("argv, code, fragment", [pytest.param(a, c, f, id=n, marks=_marks(n)) for n, a, c, f in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, argv, code, fragment, capsys, monkeypatch):
    monkeypatch.chdir(world["root"])  # relative outputs, if any, would land in the snapshot
    before = snapshot(world["root"], world["char"])
    got, _, err = run_in_process(fill(argv, world), capsys)
    check_error(got, err, code, fragment.format(**world))
    assert snapshot(world["root"], world["char"]) == before, "a file was written, changed or removed"


@pytest.mark.parametrize("name", IN_A_PROCESS)
def test_bad_input_in_a_real_process(world, name):
    [(argv, code, fragment)] = [(a, c, f) for n, a, c, f in CASES if n == name]
    before = snapshot(world["root"], world["char"])
    result = run_cli(*fill(argv, world), cwd=world["root"])
    check_error(result.returncode, result.stderr, code, fragment.format(**world))
    assert result.stdout == ""
    assert snapshot(world["root"], world["char"]) == before


def test_debug_shows_the_traceback(world):
    result = run_cli("--debug", "train", world["root"] / "missing.yaml", cwd=world["root"])
    assert result.returncode == 1  # an uncaught exception
    assert "Traceback (most recent call last)" in result.stderr
    assert "minigpt.errors.MinigptError: config file" in result.stderr


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_an_unreadable_file_is_one_line(world, command, capsys, monkeypatch, tmp_path):
    """chmod 000; as root (who reads any file) the read itself is made to fail with EACCES instead."""
    secret = tmp_path / ("corpus.txt" if command == "prepare" else "config.yaml")
    secret.write_text("ROMEO: hello\n" if command == "prepare" else "train:\n  max_steps: 3\n")
    secret.chmod(0)
    if IS_ROOT:
        real_open = Path.open

        def refuse(self, *args, **kwargs):
            if self == secret:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse)
    argv = (
        ["prepare", str(secret), "--tokenizer", "char", "--out", str(tmp_path / "out")]
        if command == "prepare"
        else ["train", str(secret)]
    )
    before = snapshot(tmp_path)
    code, _, err = run_in_process(argv, capsys)
    check_error(code, err, 2, f"cannot read {'config ' if command == 'train' else ''}{secret} (Permission denied)")
    assert snapshot(tmp_path) == before


def test_the_case_count():
    cases = len(CASES) + len(IN_A_PROCESS) + 1 + 2
    print(
        f"\nbad-input cases: {len(CASES)} in-process, {len(IN_A_PROCESS)} in a real process, 1 --debug, "
        f"2 unreadable files: {cases} in all, plus 4 malicious-file checks"
    )
    assert len(CASES) >= 30 and {n.split("-")[0] for n, *_ in CASES} >= {
        "prepare",
        "train",
        "sample",
        "eval",
        "attention",
        "plot",
    }
    assert len({n for n, *_ in CASES}) == len(CASES)


# ---- untrusted files: a malicious pickle is refused, never run ------------------------------------


def test_safe_torch_load_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"optimizers": Evil(marker)}, tmp_path / "state.pt")
    with pytest.raises(MinigptError, match="refusing to load .*state.pt: it is not a plain tensor file"):
        safe_torch_load(tmp_path / "state.pt")
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(np.int64(1))) == 1  # (the pickle module itself still works)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_resume_refuses_a_checkpoint_with_a_malicious_state(world, tmp_path, capsys, recwarn, how):
    run = _copy_run(world["run"], tmp_path / "run")
    marker = tmp_path / "pwned"
    state = run / "checkpoints" / "step_0000004" / "state.pt"
    if how == "torch.save":
        torch.save({"optimizers": [Evil(marker)], "rng": []}, state)
    else:
        state.write_bytes(pickle.dumps(Evil(marker)))
    before = snapshot(run)
    code, _, err = run_in_process(
        ["train", "-", f"data.dir={world['char']}", *TINY, f"out_dir={run}", "--resume"], capsys
    )
    check_error(code, err, 2, f"refusing to load {state}: it is not a plain tensor file")
    assert not marker.exists(), "the pickle's code ran"
    assert snapshot(run) == before
    assert not [str(w.message) for w in recwarn.list if "pickle" in str(w.message)]  # no second stderr line


def test_gpt2_weights_with_a_malicious_pickle_are_refused(tmp_path):
    from minigpt.formats.hf import load_hf

    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"vocab_size": 16, "n_positions": 8, "n_layer": 1, "n_head": 1, "n_embd": 4})
    )
    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": Evil(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(MinigptError, match="refusing to load .*pytorch_model.bin"):
        load_hf(str(folder))
    assert not marker.exists(), "the pickle's code ran"
