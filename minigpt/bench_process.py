"""Whole processes for the benchmarks that time what a user waits for, start-up and all: running them,
and the minigpt commands and inputs the side-by-side and time-budget benchmarks share."""

import json
import subprocess
import sys
import time
from pathlib import Path

from .errors import MinigptError

MINIGPT = [sys.executable, "-m", "minigpt"]  # the minigpt command of this Python


def run(command: list[str], cwd: Path | None = None) -> str:
    """Run a command to its end and return its stdout; if it fails, an error with the tail of its output."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-1500:]
        raise MinigptError(f"`{' '.join(command[:4])} ...` failed (exit {done.returncode}):\n{tail}", exit_code=1)
    return done.stdout


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """(seconds the whole process took, its stdout)."""
    start = time.perf_counter()
    stdout = run(command, cwd)
    return time.perf_counter() - start, stdout


def whole_val_loss(run_dir: Path) -> float:
    """The run's loss on its whole val split, as `minigpt eval` reports it."""
    return json.loads(run([*MINIGPT, "eval", str(run_dir), "--json"]).splitlines()[-1])["loss"]


def require_text(option: str, text: str | None) -> None:
    """Raise MinigptError unless text names a file: the corpus `option` trains on (checked before any timing)."""
    if text is None or not Path(text).is_file():
        raise MinigptError(f"{option} needs --text: tiny Shakespeare's text file (got {text!r})")


def prepare_char(text: str, work: Path) -> Path:
    """text prepared at character level in work/char, by `minigpt prepare`."""
    run([*MINIGPT, "prepare", text, "--tokenizer", "char", "--out", str(work / "char")])
    return work / "char"


def train_command(config: str, data_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    """`minigpt train CONFIG` on data_dir into out_dir, with overrides."""
    return [*MINIGPT, "train", config, f"data.dir={data_dir}", f"out_dir={out_dir}", *overrides]
