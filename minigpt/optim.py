"""The optimizer and the learning-rate schedule.

AdamW decays matrices only: biases and norm gains are few and decaying them only hurts. With
optimizer=muon, the hidden 2-D matrices (attention and MLP weights) are trained by Muon, which
orthogonalises each update, and embeddings, the LM head, norms and biases by AdamW (Muon is
meant for hidden layers only). `Optimizers` holds them and acts as one optimizer: adding an
optimizer is one more entry in `_build`, adding a schedule one more branch in `lr_multiplier`.
"""

import inspect
import math

import torch

from .config import TrainConfig
from .errors import MinigptError


class Optimizers:
    """One or more torch optimizers over disjoint parameter groups, used as one."""

    def __init__(self, model: torch.nn.Module, train: TrainConfig, device: torch.device):
        self.kind = train.optimizer
        self.optimizers = _build(model, train, device)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["peak_lr"] = group["lr"]

    def set_lr(self, multiplier: float) -> None:
        """Every group's rate: its peak rate times the schedule's multiplier."""
        for group in self._groups():
            group["lr"] = group["peak_lr"] * multiplier

    def step(self, scaler: torch.amp.GradScaler) -> None:
        """One update of every parameter (the scaler skips it if fp16 gradients overflowed)."""
        for optimizer in self.optimizers:
            scaler.step(optimizer)
        scaler.update()

    def unscale_(self, scaler: torch.amp.GradScaler) -> None:
        """Divide fp16-scaled gradients back before clipping (nothing to do without fp16)."""
        for optimizer in self.optimizers:
            scaler.unscale_(optimizer)

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        """Restore moments and step counts; the configured rates and decay stay (they may have changed)."""
        if state["kind"] != self.kind or len(state["optimizers"]) != len(self.optimizers):
            raise MinigptError(
                f"the saved optimizer state does not fit train.optimizer={self.kind}; "
                f"resume with the optimizer the run was trained with, {state['kind']}"
            )
        configured = [{k: g[k] for k in ("peak_lr", "weight_decay", "betas") if k in g} for g in self._groups()]
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        for group, values in zip(self._groups(), configured):
            group.update(values)

    def _groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]


def _build(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizers = []
    if train.optimizer == "muon":
        hidden = [p for n, p in params if p.dim() == 2 and n.startswith("transformer.h.")]
        optimizers.append(_without_dynamo(torch.optim.Muon)(hidden, lr=train.muon_lr, weight_decay=train.weight_decay))
        params = [(n, p) for n, p in params if not (p.dim() == 2 and n.startswith("transformer.h."))]
    groups = [
        {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters instead of several per tensor (on the CPU too: torch's
    # default there is a Python loop over the tensors, 4 ms a step for a 0.8M-parameter model)
    adamw = _without_dynamo(torch.optim.AdamW)
    optimizers.append(adamw(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=True))
    return optimizers


def _without_dynamo(optimizer_class: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """optimizer_class, spared the import of torch._dynamo (2 s of a CPU run's 5 s start-up).

    torch.optim guards a few Optimizer methods and every step() against being traced by torch.compile,
    and each guard imports torch._dynamo the first time it runs. We compile the model, never the
    optimizer, so the guards have nothing to do here: the methods are marked as already guarded (the
    mark the guard itself leaves, which it then calls directly), and step() runs under no_grad, which
    is all its guard does besides. The update itself is torch's own, unchanged.
    """
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        guarded = getattr(torch.optim.Optimizer, name)
        function = getattr(guarded, "__wrapped__", None)
        if function is not None and not hasattr(function, "__dynamo_disable"):
            setattr(function, "__dynamo_disable", function)
    unguarded_step = inspect.unwrap(optimizer_class.step)

    class Unguarded(optimizer_class):
        @torch.no_grad()
        def step(self, closure=None):
            return unguarded_step(self, closure)

    Unguarded.__name__ = Unguarded.__qualname__ = optimizer_class.__name__
    return Unguarded


def lr_multiplier(step: int, train: TrainConfig, budget_used: float | None = None) -> float:
    """The rate of optimizer step `step` (0 .. max_steps - 1) as a fraction of the peak rate.

    Linear warmup over warmup_steps, then cosine or linear decay to min_lr_ratio, or for wsd the
    peak rate held until the last decay_fraction of the run and a linear decay over it. The decay
    never starts before warmup ends (so the rate never jumps), and the last step is at min_lr_ratio.

    With a time budget (train.max_seconds), the run's length is wall-clock time: budget_used (0..1)
    places the decay, so the run ends fully decayed when its budget is spent; warmup still counts
    steps, and the rate is the lower of the warmup ramp and the decay curve (no jump either).
    """
    warmup = (step + 1) / train.warmup_steps if step < train.warmup_steps else 1.0
    if budget_used is not None:
        return min(warmup, _decay(budget_used, 0.0, 1.0, train))
    if step < train.warmup_steps:
        return warmup
    return _decay(step, train.warmup_steps, train.max_steps - 1, train)


def _decay(position: float, start: float, end: float, train: TrainConfig) -> float:
    """The schedule after warmup, for a position from start to end (steps, or shares of a time budget)."""
    if train.schedule == "wsd":
        start = max(start, end * (1 - train.decay_fraction))
    progress = min(1.0, max(0.0, (position - start) / max(end - start, 1e-12)))
    floor = train.min_lr_ratio
    if train.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - floor) * progress
