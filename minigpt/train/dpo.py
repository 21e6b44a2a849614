"""Direct Preference Optimization (Rafailov et al. 2023): `train.objective: dpo` on preference pairs.

    objective = DPOObjective(model, config.train.dpo, lora=True)   # the starting point is the reference
    loss, stats = objective(forward_model, x, y)    # x, y: a PairLoader batch, the chosen rows then the rejected

For each pair, with the log-probabilities logp summed over the answer's tokens alone:

    chosen_reward   = beta * (logp_policy(chosen)   - logp_reference(chosen))
    rejected_reward = beta * (logp_policy(rejected) - logp_reference(rejected))
    margin = chosen_reward - rejected_reward
    loss   = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin)

The loss falls as the policy favours the chosen answer over the rejected one more than the reference
does; beta (train.dpo.beta) sets how much a log-probability moved away from the reference counts, so a
small beta lets the policy stray further. eps (train.dpo.label_smoothing, conservative DPO) takes a
share eps of the pairs as mislabelled: the loss then stops rewarding ever larger margins and is
lowest at margin = log((1 - eps) / eps). Logged with the loss: reward accuracy (the share of pairs
whose chosen reward is the larger), the mean margin, and the mean chosen and rejected rewards.

train.dpo.sft_weight w > 0 adds w times the chosen answers' negative log-likelihood, a mean over their
tokens (the NLL term of Llama 3's DPO and of RPO, TRL's rpo_alpha), logged as chosen_nll. DPO alone only
asks for a larger margin: on pairs that differ in one place, a small model may raise the chosen token
everywhere (every answer becomes "....") while the margin still grows; the NLL term keeps the chosen
answers whole.

The reference is the run's starting point (train.init_from), frozen and without dropout. With LoRA it
is the model itself with its adapters switched off: no second copy of the weights. Without LoRA it is
a copy made before the first step (and before a resume loads newer weights), in float32.

Reference log-probabilities are computed each step for the batch at hand, not once up front for the
whole data set: one forward pass without backward, and only for the pairs the run trains on (a run
over part of an epoch pays for that part; a cache pays for every pair before the first step), with
nothing more to save: resuming, time budgets and several processes work as for any run.
"""

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..config import DPOConfig
from ..data.batches import IGNORE_INDEX
from ..errors import MinigptError
from ..lora import adapters_off

STATS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")


def check_data(meta: dict, objective: str, data_dir) -> None:
    """Preference pairs train with objective dpo, and dpo trains on nothing else."""
    pairs = meta.get("format") == "preference"
    if pairs and objective != "dpo":
        raise MinigptError(
            f"the data in {data_dir} is preference pairs (prepare --format preference); "
            "train on them with train.objective=dpo"
        )
    if objective == "dpo" and not pairs:
        kind = "chat conversations" if meta.get("format") == "chat" else "plain text"
        raise MinigptError(
            f"train.objective=dpo trains on preference pairs, but the data in {data_dir} is {kind}; prepare "
            "pairs with `minigpt prepare FILE --format preference --tokenizer-from RUN`"
        )


def answer_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, T, V) logits, (N, T) targets -> (N,): each row's summed log-probability of its targets
    (IGNORE_INDEX positions, prompt and padding, add nothing)."""
    logp = -F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return logp.view(targets.shape).sum(dim=1)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """policy, reference: (2B,) answer log-probabilities, the B chosen then their B rejected.

    Returns the mean loss over the B pairs and their mean statistics (STATS, detached)."""
    chosen_reward, rejected_reward = (beta * (policy - reference)).chunk(2)
    margin = chosen_reward - rejected_reward
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    stats = {
        "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
        "reward_margin": margin.mean(),
        "chosen_reward": chosen_reward.mean(),
        "rejected_reward": rejected_reward.mean(),
    }
    return losses.mean(), {name: value.detach() for name, value in stats.items()}


class DPOObjective:
    """The DPO loss of a batch of pairs, against the frozen reference (see the module docstring).

    Make it from the model as training starts (a copy of it is the reference without LoRA); call it with
    the model the forward pass runs (compiled or wrapped in DDP) and a batch: (loss, stats)."""

    def __init__(self, model: torch.nn.Module, settings: DPOConfig, lora: bool):
        self.beta, self.label_smoothing, self.lora = settings.beta, settings.label_smoothing, lora
        self.sft_weight = settings.sft_weight
        self.reference = model if lora else copy.deepcopy(model).requires_grad_(False).eval()

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        reference = self.reference_logprobs(x, y)
        policy = answer_logprobs(model(x)[0], y)
        loss, stats = dpo_loss(policy, reference, self.beta, self.label_smoothing)
        if self.sft_weight:
            chosen = len(y) // 2  # the chosen rows come first
            nll = -policy[:chosen].sum() / (y[:chosen] != IGNORE_INDEX).sum().clamp(min=1)
            loss = loss + self.sft_weight * nll
            stats["chosen_nll"] = nll.detach()
        return loss, stats

    @torch.no_grad()
    def reference_logprobs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        training = self.reference.training
        self.reference.eval()  # the LoRA model is training: the reference is computed without dropout
        try:
            with adapters_off(self.reference) if self.lora else nullcontext():
                return answer_logprobs(self.reference(x)[0], y)
        finally:
            self.reference.train(training)

    def reference_bytes(self) -> int:
        """The memory the reference adds: its own weights' (none with LoRA)."""
        if self.lora:
            return 0
        tensors = [*self.reference.parameters(), *self.reference.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)
