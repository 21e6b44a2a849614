"""Checkpoints: atomic to write, safe to load, complete enough to resume a run bit for bit.

A checkpoint is a folder out_dir/checkpoints/step_NNNNNNN/ holding
    model.safetensors  the weights (safetensors cannot carry code)
    state.pt           optimizer state and RNG states: tensors and plain containers only,
                       read back with torch.load(weights_only=True), which refuses anything else
    meta.json          the run record (minigpt/run.py): step, config, loader positions, val loss, ...
    <tokenizer files>  so that sampling needs nothing but this folder
It is written under a temporary name and renamed into place: a run killed at any moment leaves
only complete checkpoints (and perhaps a temporary folder, removed at the next save).
checkpoints/best.json names the step with the lowest val loss; it is replaced atomically.
"""

import json
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import MinigptError, first_line, write_fix
from .run import RunRecord

PREFIX = "step_"
SHARDS = "shards"  # an FSDP run's sharded weights and optimizer state (torch.distributed.checkpoint)


def checkpoint_dir(out_dir: Path | str, step: int) -> Path:
    """The folder of a run's checkpoint at `step`: the one place its name is made."""
    return Path(out_dir) / "checkpoints" / f"{PREFIX}{step:07d}"


@dataclass
class Checkpoint:
    path: Path
    record: RunRecord
    weights: dict

    def state(self) -> dict:
        """Optimizer, gradient scaler and RNG states (loaded only when resuming): checkpointing.state_dict()."""
        state = safe_torch_load(self.path / "state.pt")
        if self.record.format == 1:  # the first release saved a bare list of optimizers and no scaler
            optimizer = {"kind": self.record.config.train.optimizer, "optimizers": state["optimizers"]}
            state = {"optimizer": optimizer, "scaler": {}, "rng": state["rng"]}
        return state


def model_state(model, state: dict | None = None) -> dict:
    """The weights of a plain GPT (not a compiled or DDP wrapper) to save, without the tied lm_head copy.

    state: the model's whole state dict where model.state_dict() holds only shards (FSDP gathers it)."""
    state = model.state_dict() if state is None else state
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if model.config.tie_weights:
        state.pop("lm_head.weight")
    return state


def save_checkpoint(
    out_dir: Path,
    record: RunRecord,
    model,
    state: dict,
    tokenizer,
    *,
    keep: int,
    weights: dict | None = None,
    shards: Path | None = None,
) -> Path:
    """Write the checkpoint of record.step atomically, update best.json, prune old ones. Returns its folder.

    state is what resuming needs beyond the record (optimizer and RNG states: tensors and plain
    containers); record.val_loss, when finite, competes for best.json. weights: the tensors to save
    instead of the whole model's (a LoRA run saves its adapters, an FSDP run the weights it gathered);
    shards: the folder of an FSDP run's sharded state, moved in as shards/.
    """
    final = checkpoint_dir(out_dir, record.step)
    root = final.parent
    tmp = root / f".tmp-{final.name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        save_file(model_state(model) if weights is None else weights, tmp / "model.safetensors")
        with open(tmp / "state.pt", "wb") as f:  # written through Python, so a full disk shows as an OSError
            torch.save(state, f)
        if shards is not None:
            os.replace(shards, tmp / SHARDS)
        tokenizer.save(tmp)
        _write_json(tmp / "meta.json", record.to_dict())
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again: set the old one aside whole, never half-deleted
            os.replace(final, root / f".tmp-old-{final.name}")
        os.replace(tmp, final)
        shutil.rmtree(root / f".tmp-old-{final.name}", ignore_errors=True)
        _fsync_dir(root)
        best = read_best(root)
        if record.val_loss is not None and (best is None or record.val_loss < best["val_loss"]):
            _write_json_atomic(root / "best.json", {"step": record.step, "val_loss": record.val_loss})
    except (OSError, SafetensorError, RuntimeError) as e:
        error = _os_error(e)
        if error is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        fix = write_fix(error, root)
        kept = (
            f"the previous checkpoint is intact; {fix} and resume with --resume"
            if list_checkpoints(root)
            else f"no checkpoint was saved yet; {fix} and run again"
        )
        reason = error.strerror or str(error)
        raise MinigptError(f"could not save checkpoint to {final} ({reason}); {kept}", exit_code=1) from e
    _prune(root, keep)
    return final


def _os_error(e: Exception) -> OSError | None:
    """The OS's failure behind a failed write, as an OSError (None if this was no failed write).

    Each library reports a failed write its own way: Python raises OSError; safetensors raises
    SafetensorError "... (os error 28)"; torch.save, writing to a Python file, raises RuntimeError
    with the OSError as its context.
    """
    if isinstance(e, OSError):
        return e
    if isinstance(e, SafetensorError):
        code = re.search(r"os error (\d+)", str(e))
        return OSError(int(code.group(1)), os.strerror(int(code.group(1)))) if code else OSError(first_line(e))
    if isinstance(e.__context__, OSError):
        return e.__context__
    return None


def _prune(root: Path, keep: int) -> None:
    best = read_best(root)
    steps = list_checkpoints(root)
    for path in steps[:-keep]:
        if best is None or path != checkpoint_dir(root.parent, best["step"]):
            shutil.rmtree(path, ignore_errors=True)  # one left behind is only disk space, not a failed save


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root (a checkpoints folder), oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    )


def read_best(root: Path) -> dict | None:
    """checkpoints/best.json (None where there is none); a damaged one is a MinigptError naming it."""
    try:
        best = json.loads((root / "best.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(best, dict) or isinstance(best.get("step"), bool) or not isinstance(best.get("step"), int):
        raise MinigptError(
            f"{root / 'best.json'} is damaged: expected an object with the best step, such as "
            '{"step": 400, "val_loss": 1.8}; delete it to use the newest checkpoint'
        )
    return best


def resolve(path: str | Path, latest: bool = False) -> Path:
    """A run's out_dir or its checkpoints/ (the best checkpoint, or newest with latest=True), or a checkpoint folder."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if path.name == "checkpoints" and list_checkpoints(path):  # the run's checkpoints folder: the run
        path = path.parent
    root = path / "checkpoints"
    steps = list_checkpoints(root)
    if not path.exists():
        raise MinigptError(f"{path} does not exist; expected a run's out_dir or a checkpoint folder")
    if not steps:
        raise MinigptError(
            f"{path} holds no checkpoint; expected a run's out_dir (with checkpoints/) "
            "or a checkpoint folder (with model.safetensors)"
        )
    best = None if latest else read_best(root)
    if best is not None and checkpoint_dir(path, best["step"]).is_dir():
        return checkpoint_dir(path, best["step"])
    return steps[-1]


def load_checkpoint(path: str | Path, latest: bool = False) -> Checkpoint:
    """Read a checkpoint's meta and weights without running any code stored in it."""
    folder = resolve(path, latest)
    try:
        record = RunRecord.from_json((folder / "meta.json").read_text(), folder / "meta.json")
        weights = load_file(folder / "model.safetensors")
    except FileNotFoundError as e:
        raise MinigptError(f"checkpoint {folder} is incomplete: {Path(e.filename).name} is missing") from None
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinigptError(f"checkpoint {folder} is corrupted ({e}); use an earlier one in {folder.parent}") from None
    return Checkpoint(folder, record, weights)


def safe_torch_load(path: Path):
    """torch.load that only accepts tensors and plain containers: a malicious pickle is refused, not run."""
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MinigptError(f"{path} is missing") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise MinigptError(f"refusing to load {path}: it is not a plain tensor file ({first_line(e)[:160]})") from None


def load_weights(model, weights: dict, source) -> None:
    """Load saved weights into model; a mismatch names the first differing tensor."""
    expected = model.state_dict()
    if model.config.tie_weights:
        expected.pop("lm_head.weight")
    for name, tensor in expected.items():
        if name not in weights:
            raise MinigptError(f"checkpoint {source} does not match the model: it has no {name}")
        if weights[name].shape != tensor.shape:
            raise MinigptError(
                f"checkpoint {source} does not match the model: {name} is "
                f"{tuple(weights[name].shape)} there and {tuple(tensor.shape)} here"
            )
    extra = set(weights) - set(expected)
    if extra:
        raise MinigptError(f"checkpoint {source} does not match the model: unexpected {sorted(extra)[0]}")
    model.load_state_dict(weights, strict=False)


def _write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=2))


def _write_json_atomic(path: Path, values: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_json(tmp, values)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_dir():
            _fsync_tree(file)
            continue
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
