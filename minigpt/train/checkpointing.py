"""A run's folder and checkpoints, from the trainer's side: starting a run, saving a checkpoint, and
resuming from the newest one exactly.

    check_out_dir(out_dir, resume)    # a new run never writes over checkpoints; --resume needs one
    save(trainer, val_loss)           # every process calls it: the checkpoint gathers from them all
    restore(trainer)                  # --resume: weights, optimizer, scaler, loader, RNG, step and clock

Besides the weights, a checkpoint holds the run's record (run_record: step, config, data, every
process's loader position, the dtype) and its state (state_dict: optimizer, gradient scaler, every
process's RNG states), so on CPU a resumed run's losses are bitwise those of an uninterrupted run.
The functions read and set the Trainer's attributes (model, optimizer, scaler, loader, step, ...).
"""

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import (
    Checkpoint,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    read_best,
    save_checkpoint,
)
from ..config import RunConfig, save_config
from ..errors import MinigptError
from ..metrics import MetricsLog
from ..paths import check_output_folder
from ..run import RunRecord
from ..tokenizers import check_same_vocabulary, load_tokenizer
from .finetune import checkpoint_weights, load_run_weights
from .lock import LOCK_FILE
from .parallel import gather_from_ranks
from .report import say


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A new run must not mix with an old one's checkpoints; a resumed run needs one."""
    has_checkpoints = bool(list_checkpoints(out_dir / "checkpoints"))
    if has_checkpoints and not resume:
        raise MinigptError(
            f"{out_dir} already holds checkpoints; add --resume to continue that run, "
            "or choose another out_dir (nothing was changed)"
        )
    if resume and not has_checkpoints:
        raise MinigptError(f"--resume: {out_dir} holds no checkpoint to resume from; run without --resume")


def check_not_foreign(out_dir: str | Path) -> None:
    """A folder that holds files but neither a minigpt checkpoint nor the lock file every run leaves
    (one stopped before its first checkpoint) is the user's: their own config.yaml or metrics.jsonl.
    A run never writes into it. Checked before the out_dir lock adds its file."""
    out_dir = check_output_folder(out_dir, "out_dir")  # an empty string is no folder to look into
    if not out_dir.is_dir() or list_checkpoints(out_dir / "checkpoints") or (out_dir / LOCK_FILE).exists():
        return
    others = sorted(p.name for p in out_dir.iterdir())
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise MinigptError(
            f"out_dir {out_dir} already holds {shown} and no minigpt checkpoint; "
            "choose a new or empty out_dir (nothing was changed)"
        )


def start_run_folder(out_dir: Path, config: RunConfig, metrics: MetricsLog) -> None:
    """A new run's folder: its config.yaml and an empty metrics log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoints" / "best.json").unlink(missing_ok=True)  # left beside deleted checkpoints
    save_config(config, out_dir / "config.yaml")
    metrics.start()


def save(trainer, val_loss: float | None) -> None:
    """A checkpoint of the run as it stands (val_loss: this step's, when finite)."""
    record, state = run_record(trainer, val_loss), state_dict(trainer)  # every rank takes part in the gathers
    t = trainer.train_cfg
    if trainer.sharded:
        from . import fsdp  # FSDP's modules take seconds to import: only FSDP runs do

        fsdp.save_sharded_checkpoint(
            trainer.out_dir,
            record,
            trainer.model,
            trainer.optimizer.optimizers,
            state,
            trainer.tokenizer,
            keep=t.keep_checkpoints,
        )
    elif trainer.main:
        save_checkpoint(
            trainer.out_dir,
            record,
            trainer.model,
            state,
            trainer.tokenizer,
            keep=t.keep_checkpoints,
            weights=checkpoint_weights(trainer.model, t.lora, trainer.base_vocab_size),
        )


def restore(trainer) -> None:
    """Continue from the newest checkpoint: weights, then everything state_dict holds."""
    checkpoint = load_checkpoint(trainer.out_dir, latest=True)
    check_same_run(trainer, checkpoint)
    if trainer.sharded:  # this process's shards of the weights and the optimizer state
        from . import fsdp

        fsdp.load_sharded_checkpoint(checkpoint.path, trainer.model, trainer.optimizer.optimizers)
    elif not load_run_weights(trainer.model, trainer.train_cfg.lora, checkpoint.weights, str(checkpoint.path)):
        load_weights(trainer.model, checkpoint.weights, checkpoint.path)
    load_state_dict(trainer, checkpoint.record, checkpoint.state())
    if trainer.main:
        trainer.report.metrics.truncate_after(trainer.step)
        say(f"resuming from {checkpoint.path} at step {trainer.step}")


def run_record(trainer, val_loss: float | None) -> RunRecord:
    """The run as it stands, for a checkpoint's meta.json (loader positions of every process)."""
    return RunRecord(
        step=trainer.step,
        config=trainer.config,
        tokenizer=trainer.tokenizer.spec,
        data=trainer.data_meta,
        elapsed=trainer.clock.seconds(),
        val_loss=val_loss,
        best_val_loss=None if math.isinf(trainer.best_val) else trainer.best_val,
        world_size=trainer.world_size,
        loader=gather_from_ranks(trainer.loader.state_dict(), trainer.world_size),
        dtype=str(trainer.dtype).removeprefix("torch."),
        base=trainer.base,
    )


def state_dict(trainer) -> dict:
    """What resuming needs besides the weights and the record: optimizer, gradient scaler and
    every process's RNG states (tensors and plain containers, for state.pt). An FSDP run's
    optimizer state is sharded: it is saved beside, through torch.distributed.checkpoint."""
    state = {"scaler": trainer.scaler.state_dict(), "rng": gather_from_ranks(rng_state(), trainer.world_size)}
    if not trainer.sharded:
        state["optimizer"] = trainer.optimizer.state_dict()
    return state


def load_state_dict(trainer, record: RunRecord, state: dict) -> None:
    """Take up the run where `record` and `state` (a checkpoint's) left it."""
    if trainer.config.dtype == "auto" and record.dtype is not None:  # what auto chose when the run began
        trainer.dtype = getattr(torch, record.dtype)
    if not trainer.sharded:  # else read with the weights' shards
        trainer.optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:  # empty when saved without fp16 (or by the first release)
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.loader.load_state_dict(record.loader[trainer.rank])
    trainer.step = record.step
    trainer.clock.start(elapsed=record.elapsed)
    trainer.best_val = record.best_val_loss if record.best_val_loss is not None else math.inf
    set_rng_state(state["rng"][trainer.rank])


def check_same_run(trainer, checkpoint: Checkpoint) -> None:
    """--resume continues the run the checkpoint is of: same model, data, vocabulary, parallelism and processes."""
    saved, config = checkpoint.record, trainer.config
    ours = dataclasses.asdict(config.model)
    for key, value in dataclasses.asdict(saved.config.model).items():
        if key != "vocab_size" and ours[key] != value:
            raise MinigptError(
                f"the checkpoint in {checkpoint.path} was trained with model.{key}={value!r} "
                f"but the config says {ours[key]!r}; resume with the same model"
            )
    fresh_start = f"to train on other data, start a new run with train.init_from={trainer.out_dir}"
    # the same data, even moved or prepared again: the counts prepare recorded must agree
    identity = ("tokenizer", "vocab_size", "train_tokens", "val_tokens", "train_bytes", "val_bytes", "documents")
    if any(saved.data.get(k) != trainer.data_meta.get(k) for k in identity if k in saved.data):
        raise MinigptError(
            f"--resume continues the run on its own data ({saved.data_dir}), not {config.data.dir}; {fresh_start}"
        )
    try:
        check_same_vocabulary(
            trainer.tokenizer, load_tokenizer(saved.tokenizer, checkpoint.path), f"the data in {config.data.dir}"
        )
    except MinigptError as e:
        raise MinigptError(f"{e}; {fresh_start}") from None
    if saved.config.train.parallel != config.train.parallel:
        raise MinigptError(
            f"the checkpoint was written with train.parallel={saved.config.train.parallel}; "
            f"resume with the same (now {config.train.parallel})"
        )
    if saved.world_size != trainer.world_size:
        raise MinigptError(
            f"the checkpoint was written by {saved.world_size} process(es); resume with the "
            f"same number (now {trainer.world_size}) so that every process continues its own batches"
        )


def kept_checkpoints(out_dir: Path) -> str:
    """What a stopped run leaves to resume from: its newest checkpoint, and its best when that differs."""
    last = list_checkpoints(out_dir / "checkpoints")
    kept = f"the newest checkpoint is {last[-1]}" if last else "no checkpoint was saved yet"
    best = read_best(out_dir / "checkpoints")
    if best and last and last[-1] != checkpoint_dir(out_dir, best["step"]):  # the newest may have diverged
        kept += f", the best is step {best['step']} (val loss {best['val_loss']:.4g})"
    return kept


def seed_everything(seed: int) -> None:
    """Seed every RNG a step may draw from: Python's, NumPy's and torch's."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy's global seed is 32-bit; minigpt's seeds are 64-bit
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a step may draw from, as plain Python values (loadable with weights_only, and
    sendable between ranks)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Put back what rng_state() took."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
