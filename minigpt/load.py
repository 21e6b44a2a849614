"""One way to get a model from a PATH, for every command and for Python users.

    model, tokenizer = minigpt.load("out/shakespeare_char")

PATH is a run's out_dir (its best checkpoint; latest=True for the newest), a checkpoint folder, or
a Hugging Face folder or Hub name (a folder with config.json and no meta.json, or a name that is no
local path; see minigpt/formats/).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_weights
from .finetune import rebuild_model
from .model import GPT
from .quantize import check_quantize, quantize_model
from .run import RunRecord
from .tokenizers import Tokenizer, load_tokenizer


@dataclass
class ModelSource:
    """Where a loaded model came from."""

    path: str  # the checkpoint folder, or the Hugging Face folder or name
    record: RunRecord | None  # the run's record; None for a model that minigpt did not train


def load_model(
    path: str | Path, *, latest: bool = False, device: torch.device | str = "cpu", quantize: str | None = None
) -> tuple[GPT, Tokenizer, ModelSource]:
    """The model behind PATH in eval mode on device, its tokenizer, and where it came from.

    quantize "int8" stores its linear layers' weights in int8 for faster generation on a CPU (see
    minigpt/quantize.py); the model is then for inference only.
    """
    device = torch.device(device)
    check_quantize(quantize, device)  # before loading: a bad option costs no time
    model, tokenizer, source = _load(path, latest, device)
    return quantize_model(model, quantize, device), tokenizer, source


def _load(path: str | Path, latest: bool, device: torch.device) -> tuple[GPT, Tokenizer, ModelSource]:
    folder = Path(path)
    is_hugging_face = (folder / "config.json").is_file() and not (folder / "meta.json").is_file()
    if is_hugging_face or not folder.exists():  # a name that is no local path may be on the Hub
        from .formats.hf import load_hf

        model, tokenizer = load_hf(str(path))
        return model.to(device).eval(), tokenizer, ModelSource(str(path), None)
    checkpoint = load_checkpoint(folder, latest)
    config = checkpoint.record.config
    tokenizer = load_tokenizer(checkpoint.record.tokenizer, checkpoint.path)
    if config.train.lora.enabled:  # adapters only: put back on their base and merged
        model = rebuild_model(
            config.train.init_from, config.train.lora, config.model, checkpoint.weights, tokenizer, str(checkpoint.path)
        )
        return model.to(device).eval(), tokenizer, ModelSource(str(checkpoint.path), checkpoint.record)
    model = GPT(config.model)
    load_weights(model, checkpoint.weights, checkpoint.path)
    return model.to(device).eval(), tokenizer, ModelSource(str(checkpoint.path), checkpoint.record)


def load(
    path: str | Path, *, latest: bool = False, device: torch.device | str = "cpu", quantize: str | None = None
) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer behind PATH (see load_model), for use in Python."""
    model, tokenizer, _ = load_model(path, latest=latest, device=device, quantize=quantize)
    return model, tokenizer
