"""Run configuration: YAML files read into dataclasses, dotted command-line overrides, validation.

A config has three sections, `model` (GPTConfig's fields), `data` and `train`, and a few top-level
keys. Every key is checked: a typo or a value of the wrong type stops the run before any work,
with a message that names the key and the nearest valid ones.
"""

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from .device import check_device_name
from .errors import SEED_LIMIT, MinigptError
from .lora import LoRASettings
from .model import GPTConfig


@dataclass
class DataConfig:
    dir: str = "data/pydocs"  # a folder made by `minigpt prepare`


@dataclass
class DPOConfig:
    """train.dpo: Direct Preference Optimization, for train.objective=dpo (minigpt/train/dpo.py)."""

    beta: float = 0.1  # how much moving away from the reference counts: smaller lets the policy stray further
    label_smoothing: float = 0.0  # conservative DPO: the share of pairs taken as mislabelled, in [0, 0.5)
    sft_weight: float = 0.0  # + this times the chosen answers' mean NLL per token (Llama 3, TRL's rpo_alpha)

    def validate(self) -> None:
        if not self.beta > 0:
            raise MinigptError(f"train.dpo.beta must be positive, e.g. 0.1; got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise MinigptError(f"train.dpo.label_smoothing must be in [0, 0.5), e.g. 0.1; got {self.label_smoothing}")
        if not self.sft_weight >= 0:
            raise MinigptError(f"train.dpo.sft_weight must be 0 or more, e.g. 1; got {self.sft_weight}")


@dataclass
class TrainConfig:
    batch_size: int = 12  # sequences per micro-step (per process)
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 2000
    max_seconds: float | None = None  # a wall-clock budget: the schedule is laid on time, max_steps ignored
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    parallel: str = "ddp"  # ddp | fsdp: how torchrun's processes share the model (see minigpt/parallel.py)
    lr: float = 1e-3  # peak learning rate of AdamW
    muon_lr: float = 0.02  # peak learning rate of Muon, when optimizer is muon
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | wsd (warmup, stable, then linear decay)
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying
    weight_decay: float = 0.1  # applied to matrices only, never to biases, norms
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    eval_interval: int = 250
    eval_steps: int = 20  # fixed val batches per evaluation
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2  # the newest K are kept, and the best
    log_interval: int = 10
    on_nan: str = "stop"  # stop | skip: what a non-finite loss does
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # log to out_dir/tensorboard if tensorboard is installed
    wandb_project: str | None = None  # log to Weights & Biases if wandb is installed
    init_from: str | None = None  # start from these weights: a run, a checkpoint, a Hugging Face folder or name
    lora: LoRASettings = field(default_factory=LoRASettings)  # rank > 0: train low-rank adapters only
    objective: str = "lm"  # lm: next-token loss | dpo: preference pairs against the init_from model (train.dpo)
    dpo: DPOConfig = field(default_factory=DPOConfig)


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "out/run"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: str = "auto"  # auto | true | false
    threads: int | None = None  # CPU threads for torch; None: $MINIGPT_THREADS if set, 0: torch's default (per core)
    seed: int = 1337

    def to_dict(self) -> dict:
        values = asdict(self)
        del values["model"]["vocab_size"]  # taken from the data, never from the config
        return values


CHOICES = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "compile": ("auto", "true", "false"),
    "train.optimizer": ("adamw", "muon"),
    "train.parallel": ("ddp", "fsdp"),
    "train.schedule": ("cosine", "linear", "wsd"),
    "train.on_nan": ("stop", "skip"),
    "train.objective": ("lm", "dpo"),
}
# What train.parallel=fsdp cannot take: (the setting, is it on?, why, what to use instead).
FSDP_REFUSES = (
    (
        "train.objective=dpo",
        lambda train: train.objective == "dpo",
        "the frozen reference would be a whole copy of the model in every process",
        "train.parallel=ddp",
    ),
    (
        "train.lora",
        lambda train: train.lora.enabled,
        "LoRA's gradients and optimizer state are a small fraction of the model's, which is what FSDP would shard",
        "train.parallel=ddp",
    ),
    (
        "train.optimizer=muon",
        lambda train: train.optimizer == "muon",
        "Muon orthogonalises whole matrices, FSDP splits them across processes",
        "train.optimizer=adamw or train.parallel=ddp",
    ),
)
POSITIVE = (
    "train.batch_size",
    "train.grad_accum",
    "train.max_steps",
    "train.eval_interval",
    "train.eval_steps",
    "train.checkpoint_interval",
    "train.log_interval",
    "train.keep_checkpoints",
)
NOT_NEGATIVE = ("train.lr", "train.muon_lr", "train.warmup_steps", "train.weight_decay", "train.grad_clip")
HIDDEN = {"model.vocab_size": "vocab_size comes from the prepared data (meta.json), not from the config"}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults, for None or "-"), apply `key=value` overrides, validate."""
    values = _read_yaml(Path(path)) if path not in (None, "-") else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MinigptError(f"override {item!r} is not of the form key=value, e.g. train.max_steps=200")
        _set_dotted(values, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    config = _build(RunConfig, values, prefix="")
    validate(config)
    return config


def parse_duration(text: str) -> float:
    """'90s', '5m', '1.5h' or plain seconds ('90') -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise MinigptError(f"--time {text!r} is not a duration; give seconds, minutes or hours: 90s, 5m, 1.5h")
    return seconds


def config_from_dict(values: dict, source: Path | str) -> RunConfig:
    """A saved run's config (a checkpoint's record, which keeps model.vocab_size) back as a RunConfig."""
    values = {**values, "model": dict(values.get("model", {}))}
    vocab_size = values["model"].pop("vocab_size", None)
    try:
        config = _build(RunConfig, values, prefix="")
    except MinigptError as e:
        raise MinigptError(f"the config saved in {source} does not fit this minigpt: {e}") from None
    if vocab_size is not None:
        config.model.vocab_size = vocab_size
    return config


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise MinigptError(
            f"config file {path} does not exist"
            + (" (it is a folder)" if path.is_dir() else "")
            + "; pass a YAML file such as configs/quickstart.yaml"
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MinigptError(f"cannot read config {path} ({e.strerror or e}); pass a readable YAML file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise MinigptError(f"config {path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise MinigptError(
            f"config {path} must be a mapping of keys (model:, data:, train:, out_dir: ...), "
            f"not a {type(values).__name__}"
        )
    return values


def _set_dotted(values: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MinigptError(f"cannot set {key}: {part} is not a section")
    node[leaf] = value


def _build(cls, values, prefix: str):
    if not isinstance(values, dict):
        raise MinigptError(f"{prefix.rstrip('.')} must be a section of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if dotted in HIDDEN:
            raise MinigptError(f"{dotted} cannot be set: {HIDDEN[dotted]}")
        if key not in names:
            valid = [f"{prefix}{n}" for n in names if f"{prefix}{n}" not in HIDDEN]
            close = difflib.get_close_matches(dotted, valid, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise MinigptError(f"unknown config key {dotted!r}; {hint}")
        kind = hints[key]
        kwargs[key] = _build(kind, value, f"{dotted}.") if is_dataclass(kind) else _coerce(value, kind, dotted)
    return cls(**kwargs)


def _coerce(value, kind, key: str):
    """Check value against the field's type; accept ints for floats and numeric strings like 1e-3."""
    if typing.get_origin(kind) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise MinigptError(f"{key} must be a list of strings, e.g. [attn.c_attn, mlp.c_fc], got {value!r}")
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)  # YAML reads 1e-3 (no dot) as a string
            except ValueError:
                continue
            if not math.isfinite(number):
                raise MinigptError(f"{key} must be a finite number, got {value!r}")
            return number
        if t is str and isinstance(value, (str, bool)) and key == "compile":
            return str(value).lower()  # compile: true / false / auto
        if t is str and isinstance(value, str):
            return value
    expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise MinigptError(f"{key} must be {expected}, got {value!r}")


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    flat = _flatten(config.to_dict())
    for key, choices in CHOICES.items():
        if choices and flat[key] not in choices:
            raise MinigptError(f"{key} is {flat[key]!r}; expected one of {', '.join(choices)}")
    for key in POSITIVE:
        if flat[key] < 1:
            raise MinigptError(f"{key} must be at least 1, got {flat[key]}")
    for key in NOT_NEGATIVE:
        if flat[key] < 0:
            raise MinigptError(f"{key} must not be negative, got {flat[key]}")
    if config.train.max_seconds is not None and config.train.max_seconds <= 0:
        raise MinigptError(
            f"train.max_seconds must be positive (or null for no budget), got {config.train.max_seconds}"
        )
    config.train.lora.validate()
    config.train.dpo.validate()
    if config.train.objective == "dpo" and config.train.init_from is None:
        raise MinigptError(
            "train.objective=dpo needs train.init_from: the chat-tuned run to start from, which is also "
            "the frozen reference"
        )
    for key in ("beta1", "beta2"):  # Adam's moment decays: 1 would never forget, below 0 is no average
        value = getattr(config.train, key)
        if not 0 <= value < 1:
            raise MinigptError(f"train.{key} must be in [0, 1), e.g. 0.9; got {value}")
    if isinstance(config.seed, bool) or not 0 <= config.seed < SEED_LIMIT:
        raise MinigptError(f"seed must be a whole number from 0 to 2**64 - 1, got {config.seed}")
    if not 0 <= config.train.min_lr_ratio <= 1:
        raise MinigptError(f"train.min_lr_ratio must be in [0, 1], got {config.train.min_lr_ratio}")
    if not 0 < config.train.decay_fraction <= 1:
        raise MinigptError(f"train.decay_fraction must be in (0, 1], got {config.train.decay_fraction}")
    for setting, is_on, why, instead in FSDP_REFUSES:
        if config.train.parallel == "fsdp" and is_on(config.train):
            raise MinigptError(f"{setting} cannot be used with train.parallel=fsdp ({why}); use {instead}")
    check_device_name(config.device)
    dataclasses.replace(config.model, vocab_size=1).validate()  # the vocabulary comes later, from the data


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
