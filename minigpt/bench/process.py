"""Whole processes for the benchmarks that time what a user waits for, start-up and all: running them,
and the minigpt commands and inputs the side-by-side and time-budget benchmarks share."""

import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from ..errors import MinigptError

MINIGPT = [sys.executable, "-m", "minigpt"]  # the minigpt command of this Python
# nanoGPT's README CPU recipe, as minigpt overrides (the side-by-side benchmarks run it on both)
NANOGPT_CPU = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64", "train.batch_size=12"]


def progress(message: str) -> None:
    """A benchmark's progress line, on stderr so that the results on stdout stay clean."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on n threads inside the block, back to its count before whatever way the block ends."""
    import torch  # here: the benchmarks' fresh processes import this module before they need torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux, VmHWM: getrusage's ru_maxrss would carry over the
    peak of the process that started this one (it survives fork and exec), so a benchmark run in a fresh
    process would report its parent's peak whenever that was higher."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024  # kB


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
