"""A run's log: out_dir/metrics.jsonl, one JSON object per line, and optional TensorBoard / W&B copies.

The trainer writes it (MetricsLog); resuming cuts it back to the checkpoint's step; `minigpt plot`
and the tests read it (read_metrics). A run killed mid-write may leave a cut-off last line: every
reader skips it, and resuming drops it.
"""

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .errors import MinigptError, write_fix

FILE = "metrics.jsonl"


def metrics_file(path: str | Path) -> Path:
    """The metrics.jsonl of a run folder, or the file itself."""
    path = Path(path)
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise MinigptError(f"no metrics file at {file}: pass a run directory holding {FILE}, or the file")
    return file


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl (the run folder or the file), skipping a cut-off last line."""
    file = metrics_file(path)
    lines = file.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # a run killed mid-write
                break
            raise MinigptError(f"{file}, line {number} is not JSON: {e}") from None
    return records


class MetricsLog:
    """Appends records to out_dir/metrics.jsonl and to the optional TensorBoard / W&B writers."""

    def __init__(self, out_dir: Path, *, tensorboard: bool = False, wandb_project: str | None = None, config=None):
        self.file = Path(out_dir) / FILE
        self.writers = _extra_writers(Path(out_dir), tensorboard, wandb_project, config)

    def start(self) -> None:
        """A new run: an empty log."""
        with self._writing("run again"):
            self.file.write_text("")

    def truncate_after(self, step: int) -> None:
        """Resuming from `step`: forget what was logged after it (the resumed run logs it again)."""
        kept = [r for r in read_metrics(self.file) if r.get("step", 0) <= step] if self.file.exists() else []
        tmp = self.file.with_name(FILE + ".tmp")
        with self._writing("resume with --resume"):
            try:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
                os.replace(tmp, self.file)
            finally:
                tmp.unlink(missing_ok=True)  # gone after the replace; a failed one leaves nothing behind

    def append(self, record: dict) -> None:
        with self._writing("resume with --resume"):  # the last checkpoint is still there to resume from
            with open(self.file, "a") as f:
                f.write(json.dumps(record) + "\n")
        for writer in self.writers:
            writer.log(record)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    @contextmanager
    def _writing(self, then: str):
        """A failed write of the log as one line: what the OS said, and what to do (`then` after it)."""
        try:
            yield
        except OSError as e:
            fix = write_fix(e, self.file)
            raise MinigptError(f"could not write {self.file} ({e.strerror or e}); {fix} and {then}", exit_code=1) from e


class _TensorBoard:
    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(out_dir / "tensorboard")

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, project: str, config):
        import wandb

        self.run = wandb.init(project=project, config=config.to_dict() if config is not None else None)

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def _extra_writers(out_dir: Path, tensorboard: bool, wandb_project: str | None, config) -> list:
    """TensorBoard and Weights & Biases, when asked for and installed (metrics.jsonl is always written)."""
    wanted = [
        (tensorboard, lambda: _TensorBoard(out_dir), "tensorboard"),
        (wandb_project, lambda: _WandB(wandb_project, config), "wandb"),
    ]
    writers = []
    for wanted_here, make, package in wanted:
        if not wanted_here:
            continue
        try:
            writers.append(make())
        except ImportError:
            tqdm.write(
                f"note: {package} is not installed (pip install {package}); logging to {FILE} only", file=sys.stderr
            )
    return writers
