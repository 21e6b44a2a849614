"""Helpers shared by the end-to-end tests: a small prepared corpus and running the CLI."""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a model small enough to train a few dozen steps in a second or two
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_steps=2",
    "train.progress=false",
    "train.warmup_steps=5",
    "dtype=float32",
]


def repo_env(**variables) -> dict:
    """The environment for a fresh Python process that imports this checkout's minigpt, with variables set."""
    return {**os.environ, "PYTHONPATH": str(REPO), **variables}


def run_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`python -m minigpt ARGS` in a fresh process, as a user would run it."""
    env = repo_env()
    return subprocess.run(
        [sys.executable, "-m", "minigpt", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def torchrun(*args, timeout=300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 ARGS`: two CPU processes (gloo), one thread each."""
    env = repo_env(OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def naive_generate(model, idx, max_new_tokens: int):
    """The tests' oracle: greedy generation without a KV cache, rerunning the whole text (its last
    block_size tokens) for every new token. Within the context the engine must equal it token for token."""
    import torch

    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.block_size :])
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def read_metrics(out_dir: Path, drop=("time", "tokens_per_s", "mfu")) -> list[dict]:
    """metrics.jsonl (through minigpt's one reader) without the fields that depend on wall-clock time."""
    from minigpt.metrics import read_metrics as read_all

    return [{k: v for k, v in record.items() if k not in drop} for record in read_all(out_dir)]


def save_untrained_run(
    run_dir: Path, model, tokenizer, data_dir: Path | None = None, *, step: int = 1, val_loss: float | None = None
) -> Path:
    """A run folder with one checkpoint of `model` as it is (no training), as `minigpt train` would save it."""
    import dataclasses

    from minigpt.checkpoint import save_checkpoint
    from minigpt.config import RunConfig
    from minigpt.data.batches import load_meta
    from minigpt.run import RunRecord

    config = RunConfig(model=dataclasses.replace(model.config))
    config.data.dir = str(data_dir) if data_dir is not None else ""
    data = load_meta(data_dir) if data_dir is not None else {}
    record = RunRecord(step=step, config=config, tokenizer=tokenizer.spec, data=data, val_loss=val_loss)
    save_checkpoint(run_dir, record, model, {}, tokenizer, keep=2)
    return run_dir


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """`minigpt ARGV` in this process; returns (exit code, stdout, stderr)."""
    from minigpt.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@contextmanager
def tmpfs(path: Path, size: str):
    """A fresh tmpfs of SIZE (e.g. "64k") mounted at PATH: a real small disk. Needs root; skips otherwise."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    """Change a tmpfs's mount options in place, e.g. "ro" or "size=4m"."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def multiple_choice_task(folder: Path, rows: list[dict], data_file: str = "rows.jsonl", metrics=("acc",)) -> Path:
    """An lm-eval task `tiny_mc` in folder: multiple choice over rows {question, choices, answer} written to
    rows.jsonl (data_file: the file its YAML names, another name for a missing one)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / data_file}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n"
        + "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in metrics)
    )
    return folder
