"""train.init_from: start a run from trained weights instead of random ones.

SOURCE is a run's out_dir (its best checkpoint), a checkpoint folder, or a Hugging Face folder or
name; a LoRA run counts as its merged model. Only the weights come along: the optimizer, the
schedule and the step count start fresh, and the run's own checkpoints, best.json and curves
describe the fine-tuning alone.

The source is pinned when the run begins (loader.base_pin: the exact checkpoint folder, absolute, and
the sha256 of its weights) and every checkpoint's record keeps the pin as `base`: a LoRA run, whose
checkpoints hold only adapters, loads and resumes on that very base, wherever it is run from.

The model section comes from the source. A model.* setting in the run's config that differs from
both the default and the source is a conflict (one line), except dropout, which fine-tuning often
changes. The data must be encoded with the source's tokenizer (`minigpt prepare SOURCE
--tokenizer-from PATH`); chat data adds the chat special tokens after the source's vocabulary, and
the embedding (and an untied output layer) then gets rows for them: the mean of the existing rows
(an average token, not noise) plus a small fixed perturbation, so that the new tokens differ from
each other even where the embedding stays frozen (LoRA).
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import MinigptError
from ..loader import base_pin, check_source, load_model, pinned_base
from ..model import GPT, GPTConfig
from ..tokenizers import Tokenizer

FREE_SETTINGS = ("dropout", "vocab_size")  # may differ from the source's


def source_tokenizer(source: str) -> Tokenizer:
    """The tokenizer of SOURCE (for `minigpt prepare ... --tokenizer-from SOURCE`)."""
    check_source(source, "--tokenizer-from")
    return load_model(source)[1]


def init_model(
    source: str, data_tokenizer: Tokenizer, requested: GPTConfig, pin: dict | None = None
) -> tuple[GPT, dict]:
    """A model with SOURCE's architecture and weights, ready to fine-tune on data_tokenizer's data.

    pin: the source as a run pinned it (resuming that run), loaded exactly as pinned. Returns the model
    (on the CPU, in training mode) and the pin: init_from, path, sha256 and step (loader.base_pin), and
    vocab_size (before rows for new tokens were added).
    """
    if pin is None:
        check_source(source, "train.init_from")
    base, tokenizer, info = load_model(source if pin is None else pinned_base(pin))
    check_tokenizer(tokenizer, data_tokenizer, source)
    config = merged_config(base.config, requested, source)
    config.vocab_size = base.config.vocab_size
    model = GPT(config)
    model.load_state_dict(base.state_dict())
    model = grow_vocabulary(model, data_tokenizer.vocab_size)
    return model.train(), pin or {**base_pin(source, info), "vocab_size": base.config.vocab_size}


def grow_vocabulary(model: GPT, vocab_size: int) -> GPT:
    """The model with embedding (and untied output) rows added up to vocab_size; itself if it has enough."""
    old = model.config.vocab_size
    if vocab_size <= old:
        return model
    grown = GPT(dataclasses.replace(model.config, vocab_size=vocab_size))
    state = model.state_dict()
    noise = torch.Generator().manual_seed(0)
    for name in ("transformer.wte.weight", "lm_head.weight"):
        rows = state[name]
        extra = torch.randn(vocab_size - old, rows.shape[1], generator=noise).to(rows) * rows.std() * 0.1
        state[name] = torch.cat([rows, rows.mean(dim=0, keepdim=True) + extra])
    grown.load_state_dict(state)
    return grown.to(model.lm_head.weight.device)


def check_tokenizer(source: Tokenizer, data: Tokenizer, where: str) -> None:
    """The data's tokenizer must be the source's, optionally with chat tokens added after its vocabulary."""
    hint = f"prepare the data with `minigpt prepare SOURCE --tokenizer-from {where} --out DIR`"
    if data.spec != source.spec:
        raise MinigptError(
            f"the data was prepared with tokenizer {data.spec!r} but {where} uses {source.spec!r}; {hint}"
        )
    for attribute in ("chars", "ranks"):
        if getattr(data, attribute, None) != getattr(source, attribute, None):
            raise MinigptError(f"the data's {data.spec!r} vocabulary differs from the one of {where}; {hint}")
    if source.has_chat_template and data.chat_template != source.chat_template:
        raise MinigptError(f"the data's chat template differs from the one of {where}; {hint}")


def merged_config(source: GPTConfig, requested: GPTConfig, where: str) -> GPTConfig:
    """The source's model settings, with dropout (and the vocabulary) as requested; other changes refused."""
    default = GPTConfig()
    values = {}
    for field in dataclasses.fields(GPTConfig):
        mine, theirs = getattr(requested, field.name), getattr(source, field.name)
        if field.name in FREE_SETTINGS:
            values[field.name] = mine
        elif mine != theirs and mine != getattr(default, field.name):
            raise MinigptError(
                f"model.{field.name} is {mine!r} in the config but {theirs!r} in {where}; with train.init_from "
                f"the model comes from the source: remove model.{field.name} (only model.dropout may change)"
            )
        else:
            values[field.name] = theirs
    return GPTConfig(**values)
