"""How a run that starts from trained weights builds, saves and reloads its model (train.init_from, train.lora).

    model, base = build_model(config.model, tokenizer, init_from="out/quickstart", lora=LoRASettings(rank=8))
    weights = checkpoint_weights(model, lora, base["vocab_size"])    # the adapters only, for a LoRA run

Both settings are part of the run's config, and the base as pinned (init_from.py) is in every
checkpoint's record. A LoRA checkpoint holds the adapters and the embedding rows of tokens the base
lacks, so it needs that base to load (minigpt/loader.py) and to resume (saved_base).
"""

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..errors import MinigptError
from ..lora import LoRASettings, apply_lora, load_lora_checkpoint_state, lora_checkpoint_state
from ..model import GPT, GPTConfig
from ..tokenizers import Tokenizer
from .init_from import init_model


def build_model(
    requested: GPTConfig, tokenizer: Tokenizer, init_from: str | None, lora: LoRASettings, pin: dict | None = None
) -> tuple[GPT, dict | None]:
    """A fresh model (requested config), or the source's weights with LoRA adapters when lora.rank > 0.

    pin: the base as the run pinned it (saved_base), when resuming. Returns the model and the pinned
    source, with its vocab_size (None for a fresh model)."""
    if init_from is None:
        if lora.enabled:
            raise MinigptError("train.lora needs trained weights to adapt: set train.init_from to a run or model")
        return GPT(requested), None
    model, source = init_model(init_from, tokenizer, requested, pin)
    if lora.enabled:
        apply_lora(model, lora)
    return model, source


def saved_base(out_dir: Path) -> dict | None:
    """The base a run's newest checkpoint pinned (None for a run from before pins): a resumed LoRA run keeps it."""
    return load_checkpoint(out_dir, latest=True).record.base


def checkpoint_weights(model: GPT, lora: LoRASettings, base_vocab_size: int | None) -> dict[str, torch.Tensor] | None:
    """A LoRA run's checkpoint tensors (adapters and added rows); None: save the whole model as usual."""
    return lora_checkpoint_state(model, base_vocab_size) if lora.enabled else None


def load_run_weights(model: GPT, lora: LoRASettings, weights: dict[str, torch.Tensor], source: str) -> bool:
    """Resuming a LoRA run: put its checkpoint's tensors into the model build_model made. False: not a
    LoRA run (load the whole model's weights as usual)."""
    if not lora.enabled:
        return False
    load_lora_checkpoint_state(model, weights, source)
    return True
