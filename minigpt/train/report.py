"""What a training run tells its user and writes to its metrics log.

    say(start_line(model, device, dtype, tokens_per_step, data_meta, step, config.train))
    say(source_line(base, model, config.train.lora.enabled))     # a fine-tune: what it starts from
    report = RunReport(main=True, out_dir=out_dir, metrics=MetricsLog(out_dir), tokens_per_step=6144)
    report.open(step=0, total=2000, show_bar=True, clock=clock)   # progress bar, tokens/s, step time
    report.train_record(step, clock.seconds(), loss, lr, stats)   # a metrics line every log_interval

Messages are single lines on stderr, written above the progress bar; only the main process writes.
"""

import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import read_best
from ..config import TrainConfig
from ..device import running_on
from ..lora import count_parameters
from ..metrics import MetricsLog
from .clock import TIMED_STEPS, RunClock, StepTimer, duration

# dense bf16 peak FLOP/s by GPU model name, for MFU (the longest matching name wins)
PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the device's GPU, for MFU; None on CPUs and for GPUs not in PEAK_FLOPS."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_FLOPS if re.search(rf"\b{re.escape(key)}\b", name)]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def say(message: str) -> None:
    """One line for the user, on stderr, above the progress bar."""
    tqdm.write(message, file=sys.stderr)


def start_line(
    model, device: torch.device, dtype: torch.dtype, tokens_per_step: int, data_meta: dict, step: int, t: TrainConfig
) -> str:
    """What this run is: size, device, precision, tokens per step, data (the step time follows, measured)."""
    until = f"to step {t.max_steps:,}" if t.max_seconds is None else f"for {duration(t.max_seconds)}"
    return (
        f"training {model.num_params() / 1e6:.2f}M parameters on {running_on(device, dtype)}: "
        f"{tokens_per_step:,} tokens per step, {data_meta['train_tokens']:,} train tokens, "
        f"{data_meta['val_tokens']:,} val tokens; from step {step:,} {until}"
    )


def source_line(base: dict, model, lora: bool) -> str:
    """What a fine-tune starts from (its train.init_from, pinned: loader.base_pin) and, for LoRA, what it trains."""
    step = f" (step {base['step']:,})" if base.get("step") is not None else ""
    line = f"init_from {base['init_from']}{step}: {base['path']}"
    if lora:
        trainable, total = count_parameters(model)
        line += f"; LoRA: {trainable:,} trainable of {total / 1e6:.3g}M parameters ({100 * trainable / total:.2f}%)"
    return line


def end_line(out_dir: Path) -> str:
    """Where the result is: the best checkpoint and the command that samples it."""
    best = read_best(out_dir / "checkpoints")
    if best is None:
        return f"no best checkpoint (no val loss); sample the newest with: minigpt sample {out_dir} --latest"
    return (
        f"best checkpoint: step {best['step']} (val loss {best['val_loss']:.4f}); "
        f"sample it with: minigpt sample {out_dir}"
    )


def step_time_line(seconds: float, steps_left: int | None) -> str:
    """The measured step time, and how long the remaining steps take (None with a time budget: it says when)."""
    message = f"step time {seconds * 1e3:.1f} ms ({1 / seconds:.1f} steps/s)"
    if steps_left is not None:
        message += f": the remaining {steps_left:,} steps take about {duration(steps_left * seconds)} plus evaluation"
    return message


class RunReport:
    """The run's metrics log and, while the loop runs, its progress bar, tokens/s between metrics lines
    (evaluation and saving left out) and the step time, measured once after the first steps."""

    def __init__(
        self,
        *,
        main: bool,
        out_dir: Path,
        metrics: MetricsLog | None,
        tokens_per_step: int,
        flops_per_token: float = 0.0,
        peak_flops: float | None = None,
    ):
        self.main, self.out_dir, self.metrics = main, out_dir, metrics
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self.bar = None

    def open(self, step: int, total: int | None, show_bar: bool, clock: RunClock) -> None:
        """The loop begins at `step` (of `total`; None: a time budget's, unknown)."""
        self.bar = tqdm(
            total=total,
            initial=step,
            disable=not (self.main and show_bar),
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
            unit="step",
        )
        self.window_start, self.window_step = time.perf_counter(), step
        self.timer = StepTimer(TIMED_STEPS, clock.synced)

    def step_done(self, step: int, last: bool, steps_left: int | None) -> None:
        """After each step: the bar moves on, and the step time is said once it is measured."""
        self.bar.update(1)
        seconds = self.timer.tick(step, last)
        if seconds is not None and self.main:
            say(step_time_line(seconds, steps_left))

    def train_record(self, step: int, seconds: float, loss: float, lr: float, stats: dict[str, float]) -> None:
        """A training metrics line: loss, the objective's statistics (DPO's rewards), rate, tokens/s since the
        previous one (and MFU on known GPUs)."""
        now = time.perf_counter()
        tokens_per_s = self.tokens_per_step * (step - self.window_step) / max(now - self.window_start, 1e-9)
        self.window_start, self.window_step = now, step
        record = {"step": step, "time": seconds, "train_loss": loss, **stats, "lr": lr}
        record["tokens_per_s"] = round(tokens_per_s, 1)
        if self.peak_flops:
            record["mfu"] = round(self.flops_per_token * tokens_per_s / self.peak_flops, 4)
        self.log(record)
        self.bar.set_postfix(
            loss=f"{loss:.4f}",
            **{name: f"{value:.3g}" for name, value in stats.items()},
            lr=f"{lr:.2e}",
            tok_s=f"{tokens_per_s:,.0f}",
            **({"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}),
        )

    def exclude(self, seconds: float) -> None:
        """Time spent evaluating and saving: not training throughput, nor step time."""
        self.window_start += seconds
        self.timer.exclude(seconds)

    def log(self, record: dict) -> None:
        """One line of metrics.jsonl (and TensorBoard / W&B)."""
        if self.main:
            self.metrics.append(record)

    def close(self) -> None:
        """Flush the logs and take the bar away (also when the run stopped with an error)."""
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
