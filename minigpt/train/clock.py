"""A run's clock: wall-clock seconds carried across resumes, the time budget (train.max_seconds) and
the step time.

    clock = RunClock(max_seconds=300.0, device=device, world_size=1)
    clock.start()                     # when the loop begins: set-up is not training
    clock.plan_next_step()            # before each step: how much of the budget it will have used
    clock.step_took(seconds)          # after it: the fastest step so far says whether one more fits

With a budget, the learning-rate schedule runs on clock.budget_used (0 to 1) instead of steps, and the
last step is the one after which no other fits before the final evaluation and save.
"""

import time

import torch

from .parallel import max_over_ranks

TIMED_STEPS = 10  # steps the start-up estimate of the step time is measured over


class RunClock:
    """Seconds since the run began (before a resume included), and the share of its budget used."""

    def __init__(self, max_seconds: float | None, device: torch.device, world_size: int):
        self.max_seconds, self.device, self.world_size = max_seconds, device, world_size
        self.elapsed = 0.0  # seconds the run had trained before this process (a resumed run's)
        self.started = time.perf_counter()
        self.step_seconds = 0.0  # how long a step takes (the fastest so far)
        self.budget_used = None if max_seconds is None else 0.0  # share of train.max_seconds
        self.closing_seconds = 0.0  # how long the final evaluation and save take: a time budget leaves room

    def start(self, elapsed: float | None = None) -> None:
        """Count from now, on top of `elapsed` seconds (a resumed run's; by default those already carried)."""
        if elapsed is not None:
            self.elapsed = elapsed
        self.started = time.perf_counter() - self.elapsed

    def seconds(self) -> float:
        """Wall-clock seconds of this run so far, evaluation and checkpoints included."""
        return round(time.perf_counter() - self.started, 3)

    def synced(self) -> float:
        """time.perf_counter() once the GPU has finished the work queued so far."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step_took(self, seconds: float) -> None:
        # the fastest step yet: first steps (kernel set-up) and a busy moment must not end a budget early
        self.step_seconds = min(self.step_seconds, seconds) if self.step_seconds else seconds

    def closing_took(self, seconds: float) -> None:
        """An evaluation and save took this long: the final ones need as much room in the budget."""
        self.closing_seconds = max(self.closing_seconds, seconds)

    def plan_next_step(self) -> None:
        """With train.max_seconds: the share of the budget spent once the next step is done, or 1.0
        if there is no time for one more after it (so the last step runs at the schedule's end). The
        final evaluation and save are set aside; every process agrees on the slowest clock."""
        if self.max_seconds is None:
            return
        used = time.perf_counter() - self.started + self.step_seconds
        used = max_over_ranks(used, self.device, self.world_size)
        available = max(self.max_seconds - self.closing_seconds, 1e-9)
        self.budget_used = 1.0 if used + self.step_seconds >= available else used / available

    def budget_spent(self) -> bool:
        """The time budget's last step has been taken."""
        return self.budget_used == 1.0


class StepTimer:
    """The mean step time over `steps` steps after a process's first (which warms up), measured once."""

    def __init__(self, steps: int, clock):
        self.steps, self.clock = steps, clock
        self.start = self.first = None
        self.measured = False

    def tick(self, step: int, last: bool) -> float | None:
        """Call after each step; returns the step time when it has just been measured."""
        if self.measured:
            return None
        now = self.clock()
        if self.start is None:
            self.start, self.first = now, step
            return None
        if step - self.first >= self.steps or last:
            self.measured = True
            return (now - self.start) / (step - self.first)
        return None

    def exclude(self, seconds: float) -> None:
        """Leave out time spent on something else (evaluation, checkpoints)."""
        if self.start is not None:
            self.start += seconds


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
