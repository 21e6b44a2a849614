"""The training loop: one process, or many through torchrun, on CPU or GPU.

    for each step:  set the learning rate
                    grad_accum x (next batch -> forward under autocast -> backward)   [DDP syncs on the last]
                    clip gradients -> check they are finite -> optimizer step
                    log, evaluate on fixed val batches, checkpoint

A run is a folder (out_dir): config.yaml, metrics.jsonl, checkpoints/. Checkpoints carry the
optimizer, the data loader's position and every RNG state, so `--resume` continues exactly where
the run stopped: on CPU the resumed run's losses are bitwise those of an uninterrupted run.
"""

import json
import math
import os
import random
import re
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import __version__
from .checkpoint import list_checkpoints, load_checkpoint, load_weights, read_best, save_checkpoint
from .config import RunConfig, save_config
from .data import BatchLoader, fixed_batches, load_meta
from .device import autocast, resolve_device, resolve_dtype
from .errors import MinigptError
from .model import GPT
from .optim import build_optimizers, lr_multiplier, set_lr
from .tokenizers import check_same_vocabulary, load_tokenizer

# dense bf16 peak FLOP/s by GPU model name, for MFU (the longest matching name wins)
PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


def train(config: RunConfig, resume: bool = False) -> dict:
    """Train as the config says; returns the final step's summary (step, train_loss, val_loss)."""
    rank, world_size, local_rank = _init_distributed(config)
    try:
        return Trainer(config, resume, rank, world_size, local_rank).run()
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _init_distributed(config: RunConfig) -> tuple[int, int, int]:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = config.device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        config.device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


class Trainer:
    def __init__(self, config: RunConfig, resume: bool, rank: int, world_size: int, local_rank: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.main = rank == 0
        t = self.train_cfg = config.train
        self.out_dir = Path(config.out_dir)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)

        data_dir = Path(config.data.dir)
        self.data_meta = load_meta(data_dir)
        self.tokenizer = load_tokenizer(self.data_meta["tokenizer"], data_dir)
        config.model.vocab_size = self.data_meta["vocab_size"]
        self._check_out_dir(resume)

        self._seed(config.seed + rank)  # ranks differ in dropout, agree in initial weights (set below)
        torch.manual_seed(config.seed)
        self.model = GPT(config.model).to(self.device)
        torch.manual_seed(config.seed + rank)
        self.optimizers = build_optimizers(self.model, t, self.device)
        block = config.model.block_size
        self.loader = BatchLoader(
            data_dir / "train.bin",
            self.data_meta["dtype"],
            block,
            t.batch_size,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
            device=self.device,
        )
        self.val_batches = []
        if self.data_meta.get("val_tokens", 0) > block:
            self.val_batches = fixed_batches(
                data_dir / "val.bin", self.data_meta["dtype"], block, t.batch_size, t.eval_steps, self.device
            )
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.last_val: tuple[int, float] | None = None
        if resume:
            self._restore()
        elif self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "checkpoints" / "best.json").unlink(missing_ok=True)  # left beside deleted checkpoints
            save_config(config, self.out_dir / "config.yaml")
            (self.out_dir / "metrics.jsonl").write_text("")

        self.forward_model = self.model
        if config.compile == "true" or (config.compile == "auto" and self.device.type == "cuda"):
            self.forward_model = torch.compile(self.model)
        if world_size > 1:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[local_rank] if self.device.type == "cuda" else None
            )
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls where bf16 autocast does not reach
            torch.backends.cudnn.allow_tf32 = True
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.tokens_per_step = t.batch_size * block * t.grad_accum * world_size
        self.flops_per_token = self.model.flops_per_token(block)
        peak = _peak_flops(self.device) if self.device.type == "cuda" else None
        self.peak_flops = peak * world_size if peak else None  # no MFU for GPUs missing from PEAK_FLOPS
        self.stop_signal = None
        self.writers = _extra_writers(t, self.out_dir, config) if self.main else []

    # ---- setup ---------------------------------------------------------------------------------

    def _check_out_dir(self, resume: bool) -> None:
        has_checkpoints = bool(list_checkpoints(self.out_dir / "checkpoints"))
        if has_checkpoints and not resume:
            raise MinigptError(
                f"{self.out_dir} already holds checkpoints; add --resume to continue that run, "
                "or choose another out_dir (nothing was changed)"
            )
        if resume and not has_checkpoints:
            raise MinigptError(f"--resume: {self.out_dir} holds no checkpoint to resume from; run without --resume")

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _restore(self) -> None:
        """Load the newest checkpoint: weights, optimizer, loader position, RNG states, metrics."""
        checkpoint = load_checkpoint(self.out_dir, latest=True)
        meta = checkpoint.meta
        saved_model = meta["config"]["model"]
        for key, value in self.config.to_dict()["model"].items():
            if saved_model.get(key) != value:
                raise MinigptError(
                    f"the checkpoint in {checkpoint.path} was trained with model.{key}="
                    f"{saved_model.get(key)!r} but the config says {value!r}; resume with the same model"
                )
        check_same_vocabulary(
            self.tokenizer, load_tokenizer(meta["tokenizer"], checkpoint.path), f"the data in {self.config.data.dir}"
        )
        if meta["world_size"] != self.world_size:
            raise MinigptError(
                f"the checkpoint was written by {meta['world_size']} process(es); resume with the "
                f"same number (now {self.world_size}) so that every process continues its own batches"
            )
        load_weights(self.model, checkpoint.weights, checkpoint.path)
        state = checkpoint.state()
        try:
            for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
                configured = [
                    {k: group[k] for k in ("peak_lr", "weight_decay", "betas") if k in group}
                    for group in optimizer.param_groups
                ]
                optimizer.load_state_dict(saved)
                for group, values in zip(optimizer.param_groups, configured):
                    group.update(values)  # the config's learning rate and decay apply to the resumed run
        except ValueError:
            raise MinigptError(
                f"the optimizer state in {checkpoint.path} does not fit train.optimizer="
                f"{self.train_cfg.optimizer}; resume with the optimizer the run was trained with, "
                f"{meta['config']['train']['optimizer']}"
            ) from None
        self.loader.load_state_dict(meta["loader"][self.rank])
        self.step, self.elapsed = meta["step"], meta["elapsed"]
        self.best_val = meta["best_val_loss"] if meta["best_val_loss"] is not None else math.inf
        _set_rng_state(state["rng"][self.rank])
        if self.main:  # forget what was logged after the checkpoint: the resumed run logs it again
            metrics = self.out_dir / "metrics.jsonl"
            kept = (
                [line for line in metrics.read_text().splitlines() if _logged_step(line) <= self.step]
                if metrics.exists()
                else []
            )
            tmp = metrics.with_name("metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, metrics)
            _print(f"resuming from {checkpoint.path} at step {self.step}")

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        bar = tqdm(
            total=self.train_cfg.max_steps,
            initial=self.step,
            disable=not (self.main and self.train_cfg.progress),
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
            unit="step",
        )
        try:
            with self._stop_on_signals():
                return self._loop(bar)
        finally:  # also when a NaN or a full disk stops the run: flush the logs
            bar.close()
            for writer in self.writers:
                writer.close()

    def _loop(self, bar) -> dict:
        t = self.train_cfg
        check_each_step = self.device.type != "cuda" or t.on_nan == "skip"  # a check is a host sync on GPU
        summary = {"step": self.step}
        self.started = time.perf_counter() - self.elapsed  # wall-clock, carried across resumes
        window_start, window_step = time.perf_counter(), self.step
        self.model.train()
        while self.step < t.max_steps:
            next_step = self.step + 1
            log_now = next_step % t.log_interval == 0 or next_step == t.max_steps
            save_now = next_step % t.checkpoint_interval == 0 or next_step == t.max_steps
            loss = self.train_step(check_finite=check_each_step or log_now or save_now)
            stopping = self._agreed_stop()  # read once: a signal arriving later is handled after the next step
            done = self.step == t.max_steps or stopping is not None
            save_now = save_now or done
            bar.update(1)
            if log_now:
                loss_value = self._global_mean(loss)
                now = time.perf_counter()
                tokens_per_s = self.tokens_per_step * (self.step - window_step) / max(now - window_start, 1e-9)
                window_start, window_step = now, self.step
                record = {
                    "step": self.step,
                    "time": self._clock(),
                    "train_loss": loss_value,
                    "lr": lr_multiplier(self.step - 1, t) * t.lr,
                    "tokens_per_s": round(tokens_per_s, 1),
                }
                if self.peak_flops:
                    record["mfu"] = round(self.flops_per_token * tokens_per_s / self.peak_flops, 4)
                self._log(record)
                bar.set_postfix(
                    loss=f"{loss_value:.4f}",
                    lr=f"{record['lr']:.2e}",
                    tok_s=f"{tokens_per_s:,.0f}",
                    **({"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}),
                )
                summary = {"step": self.step, "train_loss": loss_value}
            paused = time.perf_counter()
            if self.step % t.eval_interval == 0 or (done and self.val_batches):
                summary["val_loss"] = self._evaluate()
            if save_now:
                self._save()
            window_start += time.perf_counter() - paused  # evaluating and saving are not training throughput
            if stopping is not None:
                if self.main:
                    _print(f"stopped by {stopping} at step {self.step}; checkpoint saved. Continue with --resume")
                break
        return summary

    def train_step(self, check_finite: bool = True) -> torch.Tensor:
        """One optimizer step: set the learning rate, accumulate gradients, clip, update.

        Returns the step's mean loss as a tensor (reading it is left to the caller: on a GPU that is
        a sync). With check_finite, a non-finite gradient stops the run or skips the update.
        """
        set_lr(self.optimizers, lr_multiplier(self.step, self.train_cfg))
        loss, grad_norm = self._accumulate_gradients()
        self.step += 1
        if check_finite and not torch.isfinite(grad_norm):
            self._non_finite(loss)  # raises, or skips this update
        else:
            self._optimizer_step()
        return loss

    def _accumulate_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """grad_accum forward/backward passes; returns (mean loss, gradient norm) as tensors."""
        accum = self.train_cfg.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self.loader.next_batch()
            last = micro == accum - 1
            sync = nullcontext() if last or self.world_size == 1 else self.forward_model.no_sync()
            with sync:
                with autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        clip = self.train_cfg.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        return loss_sum / accum, grad_norm

    def _optimizer_step(self) -> None:
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _non_finite(self, loss: torch.Tensor) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self.dtype == torch.float16:  # fp16 overflow is routine: the scaler lowers its scale and we go on
            self.scaler.update()
            return
        where = f"non-finite loss or gradients at step {self.step} (loss {loss.item():.4g})"
        if self.train_cfg.on_nan == "skip":
            _print(f"{where}: step skipped (train.on_nan=skip)")
            return
        last = list_checkpoints(self.out_dir / "checkpoints")
        kept = f"the newest checkpoint is {last[-1]}" if last else "no checkpoint was saved yet"
        best = read_best(self.out_dir / "checkpoints")
        if best and last and last[-1].name != f"step_{best['step']:07d}":  # the newest may hold diverged weights
            kept += f", the best is step {best['step']} (val loss {best['val_loss']:.4g})"
        raise MinigptError(f"{where}; stopped, {kept}. Lower train.lr, or set train.on_nan=skip", exit_code=1)

    def _agreed_stop(self) -> str | None:
        """The stop signal, agreed by every rank: all of them must save and stop after the same step."""
        if self.world_size == 1:
            return self.stop_signal
        flag = torch.tensor([1.0 if self.stop_signal else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return (self.stop_signal or "a signal to another process") if flag.item() else None

    def _clock(self) -> float:
        """Wall-clock seconds of this run so far, evaluation and checkpoints included."""
        return round(time.perf_counter() - self.started, 3)

    def _global_mean(self, value: torch.Tensor) -> float:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value.item()

    @torch.no_grad()
    def _evaluate(self) -> float | None:
        """Mean loss over the fixed val batches (the same windows every time, on every rank)."""
        if not self.val_batches:
            return None
        self.model.eval()
        losses = []
        for x, y in self.val_batches:
            with autocast(self.device, self.dtype):
                losses.append(self.model(x, y)[1].float())
        self.model.train()
        val_loss = torch.stack(losses).mean().item()
        self.last_val = (self.step, val_loss)
        self._log(
            {
                "step": self.step,
                "time": self._clock(),
                "val_loss": val_loss,
                "val_perplexity": math.exp(min(val_loss, 50)),
            }
        )
        if self.main:
            _print(f"step {self.step}: val loss {val_loss:.4f}")
        return val_loss

    def _save(self) -> None:
        if self.last_val is None or self.last_val[0] != self.step:
            self._evaluate()  # every checkpoint knows its val loss, so "best" is well defined
        val_loss = self.last_val[1] if self.last_val and self.last_val[0] == self.step else None
        if val_loss is not None and math.isfinite(val_loss):
            self.best_val = min(self.best_val, val_loss)
        loader_states = self._gather(self.loader.state_dict())
        rng_states = self._gather(_rng_state())
        if not self.main:
            return
        meta = {
            "config": {
                **self.config.to_dict(),
                "model": {**self.config.to_dict()["model"], "vocab_size": self.config.model.vocab_size},
            },
            "tokenizer": self.tokenizer.spec,
            "data": self.data_meta,
            "loader": loader_states,
            "world_size": self.world_size,
            "elapsed": self._clock(),
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            "minigpt_version": __version__,
        }
        state = {"optimizers": [o.state_dict() for o in self.optimizers], "rng": rng_states}
        usable_val = val_loss if val_loss is not None and math.isfinite(val_loss) else None
        save_checkpoint(
            self.out_dir,
            self.step,
            self.model,
            meta,
            state,
            self.tokenizer,
            keep=self.train_cfg.keep_checkpoints,
            val_loss=usable_val,
        )

    def _gather(self, value) -> list:
        """Every rank's value, in rank order (a list of one without DDP)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def _log(self, record: dict) -> None:
        if not self.main:
            return
        try:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: one line, and the last checkpoint is still there to resume from
            raise MinigptError(
                f"could not write {self.out_dir / 'metrics.jsonl'} ({e.strerror or e}); "
                "free disk space and resume with --resume",
                exit_code=1,
            ) from e
        for writer in self.writers:
            writer.log(record)

    @contextmanager
    def _stop_on_signals(self):
        """SIGINT / SIGTERM (Ctrl-C, preemption) finish the current step, save, and exit cleanly."""

        def request_stop(signum, frame):
            self.stop_signal = signal.Signals(signum).name
            signal.signal(signum, previous[signum])  # a second Ctrl-C interrupts at once

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a blank line or one a kill cut short (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None for GPUs not in the table."""
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_FLOPS if re.search(rf"\b{re.escape(key)}\b", name)]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def _print(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class _TensorBoard:
    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(out_dir / "tensorboard")

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, project: str, config: RunConfig):
        import wandb

        self.run = wandb.init(project=project, config=config.to_dict())

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def _extra_writers(train_cfg, out_dir: Path, config: RunConfig) -> list:
    """TensorBoard and Weights & Biases, when asked for and installed (metrics.jsonl is always written)."""
    writers = []
    for wanted, make, package in (
        (train_cfg.tensorboard, lambda: _TensorBoard(out_dir), "tensorboard"),
        (train_cfg.wandb_project, lambda: _WandB(train_cfg.wandb_project, config), "wandb"),
    ):
        if not wanted:
            continue
        try:
            writers.append(make())
        except ImportError:
            _print(f"note: {package} is not installed (pip install {package}); logging to metrics.jsonl only")
    return writers
