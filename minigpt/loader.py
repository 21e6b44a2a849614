"""One way to get a model from a PATH, for every command and for Python users.

    model, tokenizer = minigpt.load("out/shakespeare_char")
    model, tokenizer, source = load_model("out/run", latest=True)   # and where it came from

PATH is a run's out_dir (its best checkpoint; latest=True for the newest), a checkpoint folder, or
a Hugging Face folder or Hub name (a folder with config.json and no meta.json, or a name such as
`gpt2` or `owner/name` that is no local path; see minigpt/formats/). A path that looks local
(`./x`, `/x`, `~/x`, `a/b/c`, or `folder/x` under an existing folder) and does not exist is an error
naming it: it is never sent to the Hub as a repository id.

A LoRA run's checkpoint holds only its adapters (and the embedding rows of tokens its base lacks);
loading it loads its base through this same function, puts the adapters back and merges them, so
every command gets one plain model. The base is the one the run was trained on, pinned when it
started (base_pin): the absolute path of the exact checkpoint (not "the run's best", which moves as
the base trains on) and the sha256 of its weights; changed weights are refused in one line.

The function is called `load`, the module `loader`: `minigpt.load` stays the function whatever has
been imported (a submodule named `load` would replace the package attribute on import).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_weights, resolve
from .device import check_memory
from .errors import MinigptError
from .lora import VOCABULARY_MATRICES, restore_lora
from .model import GPT
from .nn.int8 import quantize_int8
from .run import RunRecord
from .tokenizers import Tokenizer, load_tokenizer

QUANTIZE_CHOICES = ("int8",)


@dataclass
class ModelSource:
    """Where a loaded model came from."""

    path: str  # the checkpoint folder, or the Hugging Face folder or name
    record: RunRecord | None  # the run's record; None for a model that minigpt did not train


def load(
    path: str | Path, *, latest: bool = False, device: torch.device | str = "cpu", quantize: str | None = None
) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer behind PATH (see load_model), for use in Python."""
    model, tokenizer, _ = load_model(path, latest=latest, device=device, quantize=quantize)
    return model, tokenizer


def load_model(
    path: str | Path, *, latest: bool = False, device: torch.device | str = "cpu", quantize: str | None = None
) -> tuple[GPT, Tokenizer, ModelSource]:
    """The model behind PATH in eval mode on device, its tokenizer, and where it came from.

    quantize "int8" stores its linear layers' weights in int8 for faster generation on a CPU (see
    minigpt/nn/int8.py); the model is then for inference only.
    """
    device = torch.device(device)
    check_quantize(quantize, device)  # before loading: a bad option costs no time
    model, tokenizer, source = _load(str(path), latest)
    model = model.to(device).eval()
    return (quantize_int8(model) if quantize else model), tokenizer, source


def check_quantize(method: str | None, device: torch.device) -> None:
    """Raise MinigptError unless method is None or a quantization this device runs."""
    if method is None:
        return
    if method not in QUANTIZE_CHOICES:
        raise MinigptError(f"--quantize is {method!r}; expected one of: {', '.join(QUANTIZE_CHOICES)}")
    if device.type != "cpu":
        raise MinigptError(f"--quantize {method} is for generation on the CPU; on {device.type} use --dtype instead")


def check_source(path: str, what: str = "the model path") -> None:
    """Refuse a path that looks local but does not exist, or an empty folder; a Hub name passes."""
    folder = Path(path)
    if folder.exists():
        if folder.is_dir() and not any(folder.iterdir()):
            raise MinigptError(f"{what} {path} is an empty folder; it holds no weights")
        return
    looks_local = (
        path.startswith((".", "/", "~", "\\"))
        or path.count("/") > 1
        or ("/" in path and folder.parent.is_dir())
        or not path.strip()
    )
    if looks_local:
        raise MinigptError(
            f"{what} {path} does not exist; give a run's out_dir, a checkpoint folder, "
            f"or a Hugging Face folder or model name"
        )


def _load(path: str, latest: bool) -> tuple[GPT, Tokenizer, ModelSource]:
    check_source(path)
    folder = Path(path)
    is_hugging_face = (folder / "config.json").is_file() and not (folder / "meta.json").is_file()
    if is_hugging_face or not folder.exists():  # check_source let through only Hub names
        from .formats.hf import load_hf  # transformers-free, but only Hugging Face models need it

        model, tokenizer = load_hf(path)
        return model, tokenizer, ModelSource(path, None)
    checkpoint = load_checkpoint(folder, latest)
    config = checkpoint.record.config
    tokenizer = load_tokenizer(checkpoint.record.tokenizer, checkpoint.path)
    params = config.model.estimated_params()  # a damaged meta.json must not make the allocator fail
    check_memory(4 * params, f"{checkpoint.path}'s model ({params:,} parameters)", "is its meta.json damaged?")
    model = GPT(config.model)
    if config.train.lora.enabled:  # adapters only: put back on their base and merged
        record = checkpoint.record
        base, _, _ = _load(pinned_base(record.base) if record.base else _unpinned_base(config.train.init_from), False)
        _copy_base_weights(model, base)
        restore_lora(model, config.train.lora, checkpoint.weights, str(checkpoint.path))
    else:
        load_weights(model, checkpoint.weights, checkpoint.path)
    return model, tokenizer, ModelSource(str(checkpoint.path), checkpoint.record)


@torch.no_grad()
def _copy_base_weights(model: GPT, base: GPT) -> None:
    """Put base's weights into model, which may have more vocabulary rows (the run's added tokens:
    their rows come from the LoRA checkpoint)."""
    state = base.state_dict()
    own = model.state_dict()
    for name in VOCABULARY_MATRICES:
        rows = state[name]
        grown = own[name].clone()
        grown[: rows.shape[0]] = rows
        state[name] = grown
    model.load_state_dict(state)


def base_pin(init_from: str, source: ModelSource) -> dict:
    """What pins a run's base for good: init_from as given, the exact folder load_model read (absolute; a
    Hub model's cached snapshot, named by its revision), the sha256 of its weights and its step."""
    folder = Path(source.path)
    pin = {"init_from": init_from, "step": source.record.step if source.record else None}
    if not folder.exists():  # a Hub name: the snapshot just loaded, from the local cache
        folder = _hub_snapshot(source.path, local_only=True)
        pin["revision"] = folder.name
    return {**pin, "path": str(folder.absolute()), "sha256": weights_sha256(folder)}


def pinned_base(pin: dict) -> str:
    """The folder of a pinned base, whose weights must be as pinned. A base run's older checkpoints are
    rotated away as it trains on: then its best checkpoint serves if it holds the very same weights."""
    folder = Path(pin["path"])
    if not folder.exists() and "revision" in pin:  # a Hub model's snapshot, gone from this machine's cache
        folder = _hub_snapshot(pin["init_from"], revision=pin["revision"])
    if not folder.exists():
        if folder.parent.name != "checkpoints" or not folder.parent.is_dir():
            raise MinigptError(
                f"the base of this LoRA run, {folder} (sha256 {pin['sha256'][:16]}), is gone; put it back there"
            )
        folder = resolve(folder.parent.parent)
    now = weights_sha256(folder)
    if now != pin["sha256"]:
        instead = "" if str(folder) == pin["path"] else f" (it is gone; its run's best is {folder})"
        raise MinigptError(
            f"the base of this LoRA run changed: {pin['path']} was sha256 {pin['sha256'][:16]}, now {now[:16]}"
            f"{instead}; put the base back as it was, or train the LoRA run again on the base as it is"
        )
    return str(folder)


def _unpinned_base(init_from: str) -> str:
    """A LoRA run from before bases were pinned: its train.init_from, from the working directory as it was.
    A name that is no local path is sent to the Hub only in the form owner/name (`base` is a missing folder)."""
    if Path(init_from).exists() or init_from.count("/") == 1:
        return init_from
    try:  # a bare Hugging Face name such as gpt2, if this machine has it: looked up locally, never online
        return str(_hub_snapshot(init_from, local_only=True))
    except MinigptError:
        raise MinigptError(
            f"the base of this LoRA run, train.init_from={init_from}, is no folder in {Path.cwd()} and no Hugging "
            "Face model this machine has; load the run from the folder it was trained in (it is older than pinned "
            "bases, so only that path names it), or fetch the model once (`minigpt sample NAME`)"
        ) from None


def _hub_snapshot(name: str, revision: str | None = None, local_only: bool = False) -> Path:
    """The folder of a Hugging Face model in this machine's cache (fetched first unless local_only)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=local_only))
    except (OSError, ValueError) as e:  # not cached, offline, no such model or revision, a name the Hub refuses
        at = f" at revision {revision}" if revision else ""
        raise MinigptError(f"the Hugging Face model {name}{at} could not be had ({type(e).__name__})") from None


def weights_sha256(folder: Path) -> str:
    """One sha256 over the weight files of a checkpoint or Hugging Face folder, in name order."""
    digest = hashlib.sha256()
    for file in sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]):
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):  # 16 MB at a time: a base may be gigabytes
                digest.update(block)
    return digest.hexdigest()
