"""The optimizer and the learning-rate schedule.

AdamW decays matrices only: biases and norm gains are few and decaying them only hurts. With
optimizer=muon, the hidden 2-D matrices (attention and MLP weights) are trained by Muon, which
orthogonalises each update, and embeddings, the LM head, norms and biases by AdamW (Muon is
meant for hidden layers only). `Optimizers` holds them and acts as one optimizer: adding an
optimizer is one more entry in `_build`, adding a schedule one more branch in `lr_multiplier`.

torch.optim.Muon came with torch 2.9, newer than minigpt's floor: only optimizer=muon needs it.
"""

import inspect
import math

import torch

from ..config import TrainConfig
from ..device import cpu_has_bf16
from ..errors import MinigptError

MUON_TORCH = "2.9"  # the first torch with torch.optim.Muon


class Optimizers:
    """One or more torch optimizers over disjoint parameter groups, used as one."""

    def __init__(self, model: torch.nn.Module, train: TrainConfig):
        self.kind = train.optimizer
        self.optimizers = _build(model, train)
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


def _build(model: torch.nn.Module, train: TrainConfig) -> list[torch.optim.Optimizer]:
    _skip_compile_guards()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizers = []
    if train.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise MinigptError(
                f"train.optimizer=muon needs torch {MUON_TORCH} or newer (torch.optim.Muon); this is torch "
                f"{torch.__version__}: upgrade torch, or use train.optimizer=adamw"
            )
        hidden = [p for n, p in params if p.dim() == 2 and n.startswith("transformer.h.")]
        optimizers.append(Muon(hidden, lr=train.muon_lr, weight_decay=train.weight_decay))
        params = [(n, p) for n, p in params if not (p.dim() == 2 and n.startswith("transformer.h."))]
    groups = [
        {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters instead of several per tensor (on the CPU too: torch's
    # default there is a Python loop over the tensors, 4 ms a step for a 0.8M-parameter model)
    optimizers.append(AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=True))
    return optimizers


# torch.optim guards a few Optimizer methods and every step() against being traced by torch.compile,
# and each guard imports torch._dynamo the first time it runs: 2 s of a 5 s CPU start-up. We compile
# the model, never the optimizer, so the guards have nothing to do here. Our step()s run under no_grad
# (all the step guard does besides), and the other methods carry the mark the guard itself leaves.
def _skip_compile_guards() -> None:
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        function = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if function is not None and not hasattr(function, "__dynamo_disable"):
            setattr(function, "__dynamo_disable", function)


class AdamW(torch.optim.AdamW):
    """torch's AdamW, its update unchanged; step() without the compile guard."""

    @torch.no_grad()
    def step(self, closure=None):
        return inspect.unwrap(torch.optim.AdamW.step)(self, closure)


# on an older torch the class is defined all the same (importing minigpt must work there), never built
class Muon(getattr(torch.optim, "Muon", torch.optim.Optimizer)):
    """torch's Muon (default adjust_lr_fn), with the Newton-Schulz iterations of all the matrices of one
    shape run as one batch of products: same numbers, and 10 ms a step instead of 28 for the 16
    matrices of a 4 x 128 model on a 2-core CPU, where each small product is mostly overhead."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            momentum, by_shape = group["momentum"], {}
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                by_shape.setdefault(p.shape, []).append((p, update))
            for (rows, cols), pairs in by_shape.items():
                updates = torch.stack([update for _, update in pairs])
                dtype = newton_schulz_dtype(updates.device)
                orthogonal = _newton_schulz(updates, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                rate = group["lr"] * math.sqrt(max(1, rows / cols))  # wide steps for tall matrices
                for (p, _), o in zip(pairs, orthogonal):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(o, alpha=-rate)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16, as torch's Muon and its authors run the iteration, where bf16 is fast: GPUs and CPUs with bf16
    units. Elsewhere (AVX2-only CPUs) torch emulates bf16 and it is float32 that is fast: on our AVX2
    machine the quickstart's steps took 1,160 ms with bf16 iterations against 310 ms for AdamW alone."""
    return torch.bfloat16 if device.type != "cpu" or cpu_has_bf16() else torch.float32


def _newton_schulz(x: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype):
    """Approximately orthogonalise each matrix of x (n, rows, cols) in dtype: a quintic Newton-Schulz
    iteration that pushes every singular value towards 1 (Jordan et al., Muon)."""
    a, b, c = coefficients
    x = x.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


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
