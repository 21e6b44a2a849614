"""One optimizer step: what the Trainer takes each iteration and `minigpt bench --finetune` times.

    step = TrainStep(model, optimizer, scaler, loader.next_batch, config.train, device, dtype)
    loss = step(0)      # optimizer step 0; call with 1, 2, ... for the next ones
    step.stats          # the objective's other numbers for that step (DPO's rewards; none for lm)

A step, top to bottom:

    learning rate from the schedule
    grad_accum x (next batch -> objective's loss under autocast -> backward)   [DDP syncs on the last]
    clip gradients -> check they are finite -> optimizer step (or skip it)
"""

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch

from ..config import TrainConfig
from ..device import autocast
from ..errors import MinigptError
from .optim import Optimizers, lr_multiplier
from .parallel import clip_gradients, no_gradient_sync
from .report import say

# fp16 overflow skips a step and halves the gradient scale; this many in a row is divergence, not overflow
MAX_SKIPPED_STEPS = 25


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """train.objective=lm: the mean cross-entropy of y's targets, and no other statistics.

    An objective takes the model the forward pass runs and a batch; it returns (loss, statistics)."""
    return model(x, y)[1], {}


class NonFiniteStop(MinigptError):
    """Non-finite gradients that may not be skipped: the run stops (the caller says what it keeps)."""

    def __init__(self, where: str, advice: str):
        super().__init__(f"{where}; stopped. {advice}", exit_code=1)
        self.where, self.advice = where, advice


class TrainStep:
    """The step's parts (model, optimizer, gradient scaler, batches, settings); call it to take a step.

    forward_model is what the forward pass runs: the model compiled and/or wrapped in DDP (the model
    itself by default); the model is what gradients are clipped on. next_batch() returns (x, y), and
    objective(forward_model, x, y) the loss and its statistics (lm_loss by default; DPO's is in dpo.py).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Optimizers,
        scaler: torch.amp.GradScaler,
        next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        train: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
        *,
        forward_model: torch.nn.Module | None = None,
        world_size: int = 1,
        objective: Callable = lm_loss,
    ):
        self.model, self.forward_model = model, forward_model or model
        self.optimizer, self.scaler, self.next_batch = optimizer, scaler, next_batch
        self.train, self.device, self.dtype, self.world_size = train, device, dtype, world_size
        self.objective = objective
        self.stats: dict[str, torch.Tensor] = {}  # the objective's statistics of the latest step, as tensors
        self.lr_multiplier = 1.0  # the rate of the latest step, as a fraction of the peak rate
        self.skipped_in_a_row = 0

    def __call__(self, step: int, budget_used: float | None = None, check_finite: bool = True) -> torch.Tensor:
        """Optimizer step `step` (counted from 0; budget_used: the share of train.max_seconds spent).

        Returns the step's mean loss as a tensor (reading it is left to the caller: on a GPU that is
        a sync). With check_finite, a non-finite gradient skips the update or raises NonFiniteStop.
        """
        self.lr_multiplier = lr_multiplier(step, self.train, budget_used)
        self.optimizer.set_lr(self.lr_multiplier)
        loss, grad_norm = self.accumulate_gradients()
        if check_finite and not torch.isfinite(grad_norm):
            self.skip_update(step + 1, loss)
        else:
            self.update()
        return loss

    def accumulate_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """grad_accum forward/backward passes, then clipping; returns (mean loss, gradient norm) as tensors."""
        accum = self.train.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        stats_sum = {}
        for micro in range(accum):
            x, y = self.next_batch()
            last = micro == accum - 1
            sync = nullcontext() if last or self.world_size == 1 else no_gradient_sync(self.forward_model)
            with sync:
                with autocast(self.device, self.dtype):
                    loss, stats = self.objective(self.forward_model, x, y)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
            stats_sum = {name: stats_sum.get(name, 0) + value for name, value in stats.items()}
        self.stats = {name: value / accum for name, value in stats_sum.items()}
        self.optimizer.unscale_(self.scaler)
        grad_norm = clip_gradients(self.model, self.train.grad_clip or math.inf)
        return loss_sum / accum, grad_norm

    def update(self) -> None:
        """The optimizer step itself (the gradient scaler skips it if fp16 gradients overflowed)."""
        self.optimizer.step(self.scaler)
        self.optimizer.zero_grad()
        self.skipped_in_a_row = 0

    def skip_update(self, step: int, loss: torch.Tensor) -> None:
        """Skip this update (fp16 overflow, or train.on_nan=skip) or stop; a long run of skips is divergence."""
        self.optimizer.zero_grad()
        self.skipped_in_a_row += 1
        where = f"non-finite loss or gradients at step {step} (loss {loss.item():.4g})"
        skipping = self.dtype == torch.float16 or self.train.on_nan == "skip"
        if skipping and self.skipped_in_a_row <= MAX_SKIPPED_STEPS:
            if self.dtype == torch.float16:  # fp16 overflow is routine: the scaler lowers its scale and we go on
                self.scaler.update()
            else:
                say(f"{where}: step skipped (train.on_nan=skip)")
            return
        if skipping:
            where = f"{MAX_SKIPPED_STEPS + 1} steps in a row had non-finite gradients (last at step {step})"
        raise NonFiniteStop(where, "Lower train.lr" + ("" if skipping else ", or set train.on_nan=skip"))
