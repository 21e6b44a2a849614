"""LoRA fine-tuning of a GPT: which layers get adapters, freezing the rest, adapter weights, merging.

    settings = LoRASettings(rank=8, alpha=16)
    apply_lora(model, settings)      # adapters on the attention and MLP projections; all else frozen
    ... train: only the adapters have requires_grad ...
    lora_checkpoint_state(model, base_vocab)   # what a LoRA checkpoint holds (a small fraction of the model)
    merge_lora(model)                # plain nn.Linear layers again, for sampling, eval and export
    with adapters_off(model): ...    # the base model, for as long as the block runs (DPO's reference)

A LoRA checkpoint names its base (the run's train.init_from) and holds the adapters, plus the
embedding rows of tokens the base lacks (chat tokens added for fine-tuning: a few rows). Loading it
rebuilds the base, puts the adapters and rows back and merges: `restore_lora`.

Targets are patterns (fnmatch) matched against each nn.Linear's dotted name, either whole or as its
ending: `attn.c_attn` matches `transformer.h.3.attn.c_attn`, `h.0.*` every Linear of block 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from torch import nn

from .errors import MinigptError
from .nn.lora import LoRALinear

DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
ADAPTER_PARAMETERS = ("lora_a", "lora_b")
ADDED_ROWS = "added_rows."  # checkpoint key prefix: embedding rows beyond the base's vocabulary
VOCABULARY_MATRICES = ("transformer.wte.weight", "lm_head.weight")


@dataclass
class LoRASettings:
    """train.lora: rank 0 turns LoRA off."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 0:
            raise MinigptError(f"train.lora.rank must be a whole number >= 0 (0 = off), got {self.rank!r}")
        if self.alpha <= 0:
            raise MinigptError(f"train.lora.alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise MinigptError(f"train.lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise MinigptError(
                f"train.lora.targets must be a non-empty list of layer name patterns, got {self.targets!r}"
            )


def matching_layers(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The nn.Linear layers whose names match a target pattern, by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(fnmatch(name, t) or fnmatch(name, f"*.{t}") for t in targets)
    }


def apply_lora(model: nn.Module, settings: LoRASettings) -> dict[str, LoRALinear]:
    """Put adapters on the target layers and freeze every other parameter; returns the adapted layers."""
    settings.validate()
    layers = matching_layers(model, settings.targets)
    if not layers:
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        shown = ", ".join(linear[:6]) + (" ..." if len(linear) > 6 else "")
        raise MinigptError(
            f"train.lora.targets {settings.targets} match no Linear layer of the model; its layers: {shown}"
        )
    shared = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if "wte" in name}
    adapted = {}
    for name, layer in layers.items():
        smallest = min(layer.in_features, layer.out_features)
        if settings.rank > smallest:
            raise MinigptError(
                f"train.lora.rank {settings.rank} is larger than layer {name} ({layer.out_features} x "
                f"{layer.in_features}) allows; use a rank of at most {smallest}"
            )
        if id(layer.weight) in shared:
            raise MinigptError(
                f"LoRA cannot adapt {name}: it shares the token embedding matrix; leave it out of targets"
            )
        adapted[name] = LoRALinear.from_linear(layer, settings.rank, settings.alpha, settings.dropout)
        _replace(model, name, adapted[name])
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] in ADAPTER_PARAMETERS)
    return adapted


def store_frozen_weights_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the frozen weight and bias of each adapted layer in dtype, the run's autocast dtype.

    Autocast rounds every float32 weight to bf16 (or fp16) in each forward pass. A frozen weight
    never changes, so rounding it once gives the very same matmuls without the per-step cast and
    the rounded copy it keeps in memory. The adapters stay in float32; checkpoints hold only them.
    """
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            for p in (layer.weight, layer.bias):
                if p is not None and not p.requires_grad:
                    p.data = p.data.to(dtype)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone, by their names in the model's state dict."""
    return {name: t for name, t in model.state_dict().items() if name.rsplit(".", 1)[-1] in ADAPTER_PARAMETERS}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load adapter tensors into a model that apply_lora prepared the same way."""
    expected = adapter_state(model)
    if sorted(state) != sorted(expected):
        raise MinigptError(f"{source}: its LoRA adapters do not fit this model (other targets or layers)")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise MinigptError(
                f"{source}: adapter {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)


def lora_checkpoint_state(model: nn.Module, base_vocab_size: int) -> dict[str, torch.Tensor]:
    """The adapters, and the embedding / output rows of tokens beyond the base's vocabulary."""
    state = {name: t.detach().cpu().contiguous() for name, t in adapter_state(model).items()}
    full = model.state_dict()
    for name in VOCABULARY_MATRICES:
        if full[name].shape[0] > base_vocab_size:
            state[ADDED_ROWS + name] = full[name][base_vocab_size:].detach().cpu().contiguous()
    return state


def load_lora_checkpoint_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Put a LoRA checkpoint's adapters and added rows into a model apply_lora prepared (to resume training)."""
    added = {name.removeprefix(ADDED_ROWS): t for name, t in state.items() if name.startswith(ADDED_ROWS)}
    load_adapter_state(model, {name: t for name, t in state.items() if not name.startswith(ADDED_ROWS)}, source)
    with torch.no_grad():
        for name, rows in added.items():
            matrix = model.get_parameter(name)
            matrix[matrix.shape[0] - rows.shape[0] :] = rows.to(matrix)


def restore_lora(model: nn.Module, settings: LoRASettings, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """A LoRA checkpoint's merged model, from its base (already grown to the run's vocabulary) and its state."""
    apply_lora(model, settings)
    load_lora_checkpoint_state(model, state, source)
    return merge_lora(model)


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """The model with every (unmerged) adapter switched off: its base, computed with the base's own
    tensors, no copy made. The adapters are on again when the block ends."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if any(layer.merged for layer in layers):
        raise ValueError("adapters_off needs unmerged adapters: a merged one is part of its weight")
    for layer in layers:
        layer.adapter_on = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.adapter_on = True


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer and put plain nn.Linear layers back; all parameters trainable again."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.to_linear())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
