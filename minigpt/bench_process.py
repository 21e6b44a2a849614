"""Whole processes for the benchmarks that time what a user waits for: start-up and all."""

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
