"""How a run that starts from trained weights builds, saves and reloads its model (train.init_from, train.lora).

    model, base_vocab = build_model(config.model, tokenizer, init_from="out/quickstart", lora=LoRASettings(rank=8))
    weights = checkpoint_weights(model, lora, base_vocab)    # the adapters only, for a LoRA run

Both settings are part of the run's config, so every checkpoint's record names the base and the
LoRA settings. A LoRA checkpoint holds the adapters and the embedding rows of tokens the base
lacks, so it needs its base (train.init_from, as the run gave it) to load: minigpt/loader.py does that.
"""

import torch

from ..errors import MinigptError
from ..lora import LoRASettings, apply_lora, load_lora_checkpoint_state, lora_checkpoint_state
from ..model import GPT, GPTConfig
from ..tokenizers import Tokenizer
from .init_from import init_model


def build_model(
    requested: GPTConfig, tokenizer: Tokenizer, init_from: str | None, lora: LoRASettings
) -> tuple[GPT, int | None]:
    """A fresh model (requested config), or the source's weights with LoRA adapters when lora.rank > 0.

    Returns the model and the source's vocabulary size (None for a fresh model)."""
    if init_from is None:
        if lora.enabled:
            raise MinigptError("train.lora needs trained weights to adapt: set train.init_from to a run or model")
        return GPT(requested), None
    model, source = init_model(init_from, tokenizer, requested)
    if lora.enabled:
        apply_lora(model, lora)
    return model, source["vocab_size"]


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
