"""How a run that starts from trained weights builds, saves and reloads its model (train.init_from, train.lora).

    model, record = build_model(config.model, tokenizer, init_from="out/quickstart", lora=LoRASettings(rank=8))
    weights = checkpoint_weights(model, record)     # the adapters only, for a LoRA run
    model = rebuild_model(record, model_config, weights, tokenizer, source)   # when loading the checkpoint

A run's `FinetuneRecord` goes into its checkpoints' metadata: where its weights came from, and for
a LoRA run the settings and the base's vocabulary size (rows beyond it are saved with the adapters).
A LoRA checkpoint needs its base to load: the base path is kept as the run gave it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .errors import MinigptError
from .init_from import init_model
from .lora import LoRASettings, apply_lora, load_lora_checkpoint_state, lora_checkpoint_state, restore_lora
from .model import GPT, GPTConfig
from .tokenizers import Tokenizer


@dataclass
class FinetuneRecord:
    init_from: str | None = None
    lora: LoRASettings = field(default_factory=LoRASettings)
    base_vocab_size: int | None = None  # the source model's vocabulary, before chat tokens were added

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict | None) -> FinetuneRecord:
        values = dict(values or {})
        values["lora"] = LoRASettings(**values.get("lora", {}))
        return cls(**values)


def build_model(
    requested: GPTConfig, tokenizer: Tokenizer, init_from: str | None, lora: LoRASettings
) -> tuple[GPT, FinetuneRecord]:
    """A fresh model (requested config), or the source's weights; LoRA adapters on top when lora.rank > 0."""
    if init_from is None:
        if lora.enabled:
            raise MinigptError("train.lora needs trained weights to adapt: set train.init_from to a run or model")
        return GPT(requested), FinetuneRecord()
    model, source = init_model(init_from, tokenizer, requested)
    record = FinetuneRecord(init_from, lora, source["vocab_size"])
    if lora.enabled:
        apply_lora(model, lora)
    return model, record


def checkpoint_weights(model: GPT, record: FinetuneRecord) -> dict[str, torch.Tensor] | None:
    """A LoRA run's checkpoint tensors (adapters and added rows); None: save the whole model as usual."""
    if not record.lora.enabled:
        return None
    return lora_checkpoint_state(model, record.base_vocab_size)


def load_run_weights(model: GPT, record: FinetuneRecord, weights: dict[str, torch.Tensor], source: str) -> bool:
    """Resuming a LoRA run: put its checkpoint's tensors into the model build_model made. False: not a LoRA run
    (load the whole model's weights as usual)."""
    if not record.lora.enabled:
        return False
    load_lora_checkpoint_state(model, weights, source)
    return True


def rebuild_model(record: FinetuneRecord, config: GPTConfig, weights: dict, tokenizer: Tokenizer, source: str) -> GPT:
    """The merged model of a LoRA checkpoint: its base (record.init_from) with the saved adapters and rows."""
    base, _ = init_model(record.init_from, tokenizer, config)
    return restore_lora(base, record.lora, weights, source).eval()
