"""Read and write Hugging Face causal-LM folders: config.json + model.safetensors (or pytorch_model.bin).

    model, tokenizer = load_hf("path/to/folder")   # or a Hub name such as "gpt2" (needs the network once)
    save_hf(model, tokenizer, "out/hf")           # transformers' AutoModelForCausalLM reads it back

Every architecture is one table (hf_architectures.py) read in both directions: which config fields
map to which of ours, what the rest of our config must be, and how tensor names correspond.
A config field that would change the computation in a way our blocks do not reproduce is refused
by name rather than loaded silently wrong. A model that no standard class expresses is written with
its own modeling code (hf_own_code.py), which transformers runs with trust_remote_code=True.
"""

import json
import shutil
from pathlib import Path

import torch

from ..checkpoint import safe_torch_load
from ..errors import MinigptError
from ..model import GPT, GPTConfig
from ..tokenizers import HF_FILE, HFTokenizer, Tokenizer, load_tokenizer
from .hf_architectures import ARCHITECTURES, Architecture
from .hf_own_code import MINIGPT
from .hf_tokenizer import to_hf_tokenizer


def load_hf(path_or_name: str) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a Hugging Face folder, or of a Hub name (downloaded once, then cached)."""
    folder = _resolve(path_or_name)
    model = load_hf_model(folder)
    if (folder / HF_FILE).is_file():
        return model, HFTokenizer.load(folder)
    if _architecture(_read_config(folder), folder).model_type == "gpt2":
        return model, load_tokenizer("gpt2")  # tiktoken's copy of GPT-2's BPE
    raise MinigptError(f"{folder} has no {HF_FILE}; copy the model's tokenizer files into it")


def load_hf_model(path_or_name: str | Path) -> GPT:
    """The model alone (a folder without tokenizer files is fine)."""
    folder = _resolve(str(path_or_name))
    hf = _read_config(folder)
    architecture = _architecture(hf, folder)
    model = GPT(architecture.to_config(hf))
    model.load_state_dict(architecture.import_tensors(_read_weights(folder), model, folder))
    return model.eval()


def save_hf(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> None:
    """Write model and tokenizer as a Hugging Face folder: the first standard architecture that can
    express the model's config (GPT-2, Llama, Qwen2, Qwen3), else the model with its own modeling code
    (export_note says which), and a tokenizer.json of the same ids.

    out_dir must be new or empty: nothing already there is overwritten.
    """
    architecture = _export_architecture(model.config)
    directory = Path(out_dir)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise MinigptError(f"{directory} already exists and is not an empty folder; choose a new output folder")
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = architecture.export_tensors(model.state_dict(), model.config)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = architecture.from_model(model)
    # the end-of-text token starts and ends documents (GPT-2's convention); without one inside the
    # vocabulary, none: the classes' own defaults (GPT-2's 50256) would name a token the model lacks
    eot = tokenizer.eot_token
    config["bos_token_id"] = config["eos_token_id"] = eot if eot is not None and eot < model.config.vocab_size else None
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in architecture.code:
        shutil.copyfile(Path(__file__).with_name(name), directory / name)
    to_hf_tokenizer(tokenizer, model.config.block_size).save(directory)


def export_note(config: GPTConfig) -> str | None:
    """What a user of the folder save_hf writes for config must know, or None for a standard class."""
    if _export_architecture(config) is not MINIGPT:
        return None
    closest = min(ARCHITECTURES, key=lambda a: len(a.cannot_express(config)))
    return (
        f"no standard transformers class runs {', '.join(closest.cannot_express(config))} ({closest.model_type}, "
        f"the closest, runs the rest): the folder carries its own {', '.join(MINIGPT.code)}; load it with "
        f"AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)"
    )


def _export_architecture(config: GPTConfig) -> Architecture:
    """The first standard architecture that can express config, else our own modeling code."""
    return next((arch for arch in ARCHITECTURES if not arch.cannot_express(config)), MINIGPT)


def _architecture(hf: dict, folder: Path) -> Architecture:
    model_type = hf.get("model_type", "gpt2")  # hand-written GPT-2 configs often carry none
    for arch in (*ARCHITECTURES, MINIGPT):
        if arch.model_type == model_type:
            return arch
    known = ", ".join(a.model_type for a in (*ARCHITECTURES, MINIGPT))
    raise MinigptError(f"{folder} holds a {model_type!r} model; the architectures minigpt loads are {known}")


def _read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MinigptError(f"{folder} has no config.json; expected a Hugging Face model folder")
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinigptError(f"{config_file} is not valid JSON ({e})") from None


def _resolve(path_or_name: str) -> Path:
    path = Path(path_or_name)
    if path.is_dir():
        return path
    if path.exists():
        raise MinigptError(f"{path_or_name} is not a folder with config.json and model weights")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_name, allow_patterns=["*.json", "*.safetensors", "*.jinja"]))
    except Exception as e:  # offline, unknown name, or no hub library: one message for the user
        raise MinigptError(
            f"{path_or_name!r} is no local folder and could not be downloaded from the Hugging Face "
            f"Hub ({type(e).__name__}); give a run's out_dir, a checkpoint folder or a Hugging Face folder"
        ) from None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder: one model.safetensors, shards listed in its index, or pytorch_model.bin."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif (folder / "pytorch_model.bin").is_file():
        return safe_torch_load(folder / "pytorch_model.bin")  # weights_only: a pickle from the internet runs no code
    else:
        raise MinigptError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    tensors = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except FileNotFoundError:
            raise MinigptError(f"{file} is missing; the index lists it; download it again") from None
        except SafetensorError as e:
            raise MinigptError(f"{file} is corrupted ({e}); download it again") from None
    return tensors
