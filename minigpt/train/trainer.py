"""The training loop: one process, or many through torchrun, on CPU or GPU.

    for each step:  set the learning rate
                    grad_accum x (next batch -> forward under autocast -> backward)   [DDP syncs on the last]
                    clip gradients -> check they are finite -> optimizer step
                    log, evaluate on fixed val batches, checkpoint

A run is a folder (out_dir): config.yaml, metrics.jsonl, checkpoints/. Checkpoints carry the
optimizer, the data loader's position and every RNG state, so `--resume` continues exactly where
the run stopped: on CPU the resumed run's losses are bitwise those of an uninterrupted run.
"""

import dataclasses
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
from ..data.batches import BatchLoader, chat_files, fixed_batches, load_meta
from ..data.chat import check_fits
from ..device import autocast, resolve_device, resolve_dtype, time_dtypes
from ..errors import MinigptError
from ..lora import store_frozen_weights_in
from ..metrics import MetricsLog
from ..run import RunRecord
from ..tokenizers import check_same_vocabulary, load_tokenizer
from .finetune import build_model, checkpoint_weights, load_run_weights
from .lock import out_dir_lock
from .optim import Optimizers, lr_multiplier
from .parallel import clip_gradients, no_gradient_sync

DTYPE_TIMING_TOKENS = 2048  # tokens a pass of dtype=auto's timing runs on a CPU (see _faster_cpu_dtype)
TIMED_STEPS = 10  # steps the start-up estimate of the step time is measured over
# fp16 overflow skips a step and halves the gradient scale; this many in a row is divergence, not overflow
MAX_SKIPPED_STEPS = 25

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
    """Train as the config says; returns the final step's summary (step, train_loss, val_loss, and
    stopped_by: the name of the signal that stopped the run early, if one did)."""
    rank, world_size, local_rank = _init_distributed(config)
    try:
        with out_dir_lock(config.out_dir) if rank == 0 else nullcontext():  # one run per out_dir at a time
            return Trainer(config, resume, rank, world_size, local_rank).run()
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _init_distributed(config: RunConfig) -> tuple[int, int, int]:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = _uses_cuda(config.device)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def _uses_cuda(device: str) -> bool:
    return device in ("auto", "cuda") and torch.cuda.is_available()


class Trainer:
    def __init__(self, config: RunConfig, resume: bool, rank: int, world_size: int, local_rank: int):
        self.rank, self.world_size = rank, world_size
        self.main = rank == 0
        self.out_dir = Path(config.out_dir)
        # each process of a multi-GPU run drives the GPU of its local rank
        self.device = resolve_device(
            f"cuda:{local_rank}" if world_size > 1 and _uses_cuda(config.device) else config.device
        )
        self.dtype = resolve_dtype(config.dtype, self.device)

        data_dir = Path(config.data.dir).absolute()  # saved with the run: eval finds it from any folder
        self.data_meta = load_meta(data_dir)
        self.tokenizer = load_tokenizer(self.data_meta["tokenizer"], data_dir)
        # the run's own copy of the config, with the vocabulary of its data (the caller's is left as it was)
        model_config = dataclasses.replace(config.model, vocab_size=self.data_meta["vocab_size"])
        data_config = dataclasses.replace(config.data, dir=str(data_dir))
        self.config = config = dataclasses.replace(config, model=model_config, data=data_config)
        t = self.train_cfg = config.train
        self._check_out_dir(resume)

        self._seed(config.seed + rank)  # ranks differ in dropout, agree in initial weights (set below)
        torch.manual_seed(config.seed)
        # train.init_from: the source's weights and model section (its vocabulary grown for chat tokens)
        model, self.base_vocab_size = build_model(config.model, self.tokenizer, t.init_from, t.lora)
        self.config = config = dataclasses.replace(config, model=model.config)
        self.model = model.to(self.device)
        check_fits(self.data_meta, config.model.block_size, data_dir)
        if config.dtype == "auto" and self.dtype == torch.bfloat16 and self.device.type == "cpu" and not resume:
            self.dtype = self._faster_cpu_dtype()
        self.sharded = t.parallel == "fsdp" and world_size > 1
        if self.sharded:
            from . import fsdp  # imported only here and in _save/_restore: FSDP's modules take seconds to import

            fsdp.shard_model(self.model, self.device, self.dtype)  # before the optimizer: it takes the shards
        torch.manual_seed(config.seed + rank)
        self.optimizer = Optimizers(self.model, t)
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
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
            **chat_files(data_dir, "train"),  # chat data: masked targets, windows from conversation starts
        )
        self.val_batches = []
        if self.data_meta.get("val_tokens", 0) > 0:  # a val split shorter than the block is refused here
            self.val_batches = fixed_batches(
                data_dir / "val.bin",
                self.data_meta["dtype"],
                block,
                t.batch_size,
                t.eval_steps,
                self.device,
                **chat_files(data_dir, "val"),
            )
        elif self.main:
            _print(f"note: {data_dir} has no val split: no val loss, no best checkpoint (prepare with --val-fraction)")
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.skipped_in_a_row = 0
        self.last_val: tuple[int, float] | None = None
        self.metrics = (
            MetricsLog(self.out_dir, tensorboard=t.tensorboard, wandb_project=t.wandb_project, config=config)
            if self.main
            else None
        )
        if resume:
            self._restore()
        elif self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "checkpoints" / "best.json").unlink(missing_ok=True)  # left beside deleted checkpoints
            save_config(config, self.out_dir / "config.yaml")
            self.metrics.start()

        if t.lora.enabled and self.dtype != torch.float32:  # the dtype is final now, a resume's included
            store_frozen_weights_in(self.model, self.dtype)
        self.forward_model = self.model
        if config.compile == "true" or (config.compile == "auto" and self.device.type == "cuda"):
            self.forward_model = torch.compile(self.model)
        if world_size > 1 and not self.sharded:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[local_rank] if self.device.type == "cuda" else None
            )
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls where bf16 autocast does not reach
            torch.backends.cudnn.allow_tf32 = True
        self.tokens_per_step = t.batch_size * block * t.grad_accum * world_size
        self.flops_per_token = self.model.flops_per_token(block)
        peak = _peak_flops(self.device) if self.device.type == "cuda" else None
        self.peak_flops = peak * world_size if peak else None  # no MFU for GPUs missing from PEAK_FLOPS
        self.stop_signal = None
        self.started = time.perf_counter() - self.elapsed  # reset when the loop starts: set-up is not training
        self.step_seconds = 0.0  # how long a step takes (the fastest so far)
        self.budget_used = None if config.train.max_seconds is None else 0.0  # share of train.max_seconds
        self.closing_seconds = 0.0  # how long the final evaluation and save take: a time budget leaves room

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
        """Continue from the newest checkpoint: weights, then everything state_dict holds."""
        checkpoint = load_checkpoint(self.out_dir, latest=True)
        self._check_same_run(checkpoint)
        if self.sharded:  # this process's shards of the weights and the optimizer state
            from . import fsdp

            fsdp.load_sharded_checkpoint(checkpoint.path, self.model, self.optimizer.optimizers)
        elif not load_run_weights(self.model, self.train_cfg.lora, checkpoint.weights, str(checkpoint.path)):
            load_weights(self.model, checkpoint.weights, checkpoint.path)
        self.load_state_dict(checkpoint.record, checkpoint.state())
        if self.main:
            self.metrics.truncate_after(self.step)
            _print(f"resuming from {checkpoint.path} at step {self.step}")

    def _faster_cpu_dtype(self) -> torch.dtype:
        """dtype=auto on a CPU with bf16 units: time a forward and backward pass of this model on
        rows of this run's shape in float32 and in bf16, and train in the faster (every process
        agrees). Nothing of the run changes: the batch is made up, gradients and RNG are put back.
        At most DTYPE_TIMING_TOKENS tokens a pass: a wide model's whole batch would take a minute."""
        c, t = self.config.model, self.train_cfg
        rows = max(1, min(t.batch_size, DTYPE_TIMING_TOKENS // c.block_size))
        x = torch.randint(0, c.vocab_size, (rows, c.block_size), generator=torch.Generator().manual_seed(0))
        rng = torch.get_rng_state()

        def forward_backward(dtype: torch.dtype) -> None:
            with autocast(self.device, dtype):
                _, loss = self.model(x, x)
            loss.backward()

        seconds = time_dtypes(forward_backward, (torch.float32, torch.bfloat16))
        self.model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        times = torch.tensor([seconds[torch.float32], seconds[torch.bfloat16]])
        if self.world_size > 1:
            dist.all_reduce(times)
        return torch.float32 if times[0] <= times[1] else torch.bfloat16

    def _check_same_run(self, checkpoint: Checkpoint) -> None:
        saved = checkpoint.record
        ours = dataclasses.asdict(self.config.model)
        for key, value in dataclasses.asdict(saved.config.model).items():
            if key != "vocab_size" and ours[key] != value:
                raise MinigptError(
                    f"the checkpoint in {checkpoint.path} was trained with model.{key}={value!r} "
                    f"but the config says {ours[key]!r}; resume with the same model"
                )
        fresh_start = f"to train on other data, start a new run with train.init_from={self.out_dir}"
        # the same data, even moved or prepared again: the counts prepare recorded must agree
        identity = ("tokenizer", "vocab_size", "train_tokens", "val_tokens", "train_bytes", "val_bytes", "documents")
        if any(saved.data.get(k) != self.data_meta.get(k) for k in identity if k in saved.data):
            raise MinigptError(
                f"--resume continues the run on its own data ({saved.data_dir}), not {self.config.data.dir}; "
                f"{fresh_start}"
            )
        try:
            check_same_vocabulary(
                self.tokenizer, load_tokenizer(saved.tokenizer, checkpoint.path), f"the data in {self.config.data.dir}"
            )
        except MinigptError as e:
            raise MinigptError(f"{e}; {fresh_start}") from None
        if saved.config.train.parallel != self.train_cfg.parallel:
            raise MinigptError(
                f"the checkpoint was written with train.parallel={saved.config.train.parallel}; "
                f"resume with the same (now {self.train_cfg.parallel})"
            )
        if saved.world_size != self.world_size:
            raise MinigptError(
                f"the checkpoint was written by {saved.world_size} process(es); resume with the "
                f"same number (now {self.world_size}) so that every process continues its own batches"
            )

    def state_dict(self) -> dict:
        """What resuming needs besides the weights and the record: optimizer, gradient scaler and
        every process's RNG states (tensors and plain containers, for state.pt). An FSDP run's
        optimizer state is sharded: it is saved beside, through torch.distributed.checkpoint."""
        state = {"scaler": self.scaler.state_dict(), "rng": self._gather(_rng_state())}
        if not self.sharded:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, record: RunRecord, state: dict) -> None:
        """Take up the run where `record` and `state` (a checkpoint's) left it."""
        if self.config.dtype == "auto" and record.dtype is not None:  # what auto chose when the run began
            self.dtype = getattr(torch, record.dtype)
        if not self.sharded:  # else read with the weights' shards
            self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without fp16 (or by the first release)
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(record.loader[self.rank])
        self.step, self.elapsed = record.step, record.elapsed
        self.best_val = record.best_val_loss if record.best_val_loss is not None else math.inf
        _set_rng_state(state["rng"][self.rank])

    def record(self, val_loss: float | None) -> RunRecord:
        """The run as it stands, for a checkpoint's meta.json (loader positions of every process)."""
        return RunRecord(
            step=self.step,
            config=self.config,
            tokenizer=self.tokenizer.spec,
            data=self.data_meta,
            elapsed=self._clock(),
            val_loss=val_loss,
            best_val_loss=None if math.isinf(self.best_val) else self.best_val,
            world_size=self.world_size,
            loader=self._gather(self.loader.state_dict()),
            dtype=str(self.dtype).removeprefix("torch."),
        )

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        t = self.train_cfg
        if self.main:
            _print(self._start_line())
        if t.max_seconds is None and self.step >= t.max_steps:
            if self.main:
                _print(
                    f"note: the run in {self.out_dir} already reached train.max_steps={t.max_steps} "
                    f"(step {self.step}); nothing to do: raise train.max_steps to train longer"
                )
                _print(self._end_line())
            return {"step": self.step}
        bar = tqdm(
            total=self.train_cfg.max_steps if self.train_cfg.max_seconds is None else None,
            initial=self.step,
            disable=not (self.main and self.train_cfg.progress),
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
            unit="step",
        )
        try:
            with self._stop_on_signals():
                summary = self._loop(bar)
        finally:  # also when a NaN or a full disk stops the run: flush the logs
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        if self.main:
            _print(self._end_line())
        return summary

    def _start_line(self) -> str:
        """What this run is: size, device, precision, tokens per step, data (the step time follows, measured)."""
        t = self.train_cfg
        dtype = str(self.dtype).removeprefix("torch.")
        until = f"to step {t.max_steps:,}" if t.max_seconds is None else f"for {_duration(t.max_seconds)}"
        return (
            f"training {self.model.num_params() / 1e6:.2f}M parameters on {self.device.type}, {dtype}: "
            f"{self.tokens_per_step:,} tokens per step, {self.data_meta['train_tokens']:,} train tokens, "
            f"{self.data_meta['val_tokens']:,} val tokens; from step {self.step:,} {until}"
        )

    def _end_line(self) -> str:
        """Where the result is: the best checkpoint and the command that samples it."""
        best = read_best(self.out_dir / "checkpoints")
        if best is None:
            return f"no best checkpoint (no val loss); sample the newest with: minigpt sample {self.out_dir} --latest"
        return (
            f"best checkpoint: step {best['step']} (val loss {best['val_loss']:.4f}); "
            f"sample it with: minigpt sample {self.out_dir}"
        )

    def _report_step_time(self, seconds: float) -> None:
        message = f"step time {seconds * 1e3:.1f} ms ({1 / seconds:.1f} steps/s)"
        if self.train_cfg.max_seconds is None:  # with a time budget, the budget says when it ends
            left = self.train_cfg.max_steps - self.step
            message += f": the remaining {left:,} steps take about {_duration(left * seconds)} plus evaluation"
        _print(message)

    def _loop(self, bar) -> dict:
        t = self.train_cfg
        # a check is a host sync on GPU; skipping steps (fp16 overflow, on_nan=skip) must see each one
        check_each_step = self.device.type != "cuda" or t.on_nan == "skip" or self.dtype == torch.float16
        summary = {"step": self.step}
        self.started = time.perf_counter() - self.elapsed  # wall-clock, carried across resumes
        window_start, window_step = time.perf_counter(), self.step
        timer = _StepTimer(TIMED_STEPS, self._synced_clock)
        self.model.train()
        while not self._finished():
            step_start = time.perf_counter()
            self._plan_next_step()
            next_step = self.step + 1
            log_now = next_step % t.log_interval == 0
            save_now = next_step % t.checkpoint_interval == 0
            loss = self.train_step(check_finite=check_each_step or log_now or save_now or t.max_seconds is not None)
            took = time.perf_counter() - step_start
            # the fastest step yet: first steps (kernel set-up) and a busy moment must not end a budget early
            self.step_seconds = min(self.step_seconds, took) if self.step_seconds else took
            stopping = self._agreed_stop()  # read once: a signal arriving later is handled after the next step
            done = self._finished() or stopping is not None
            log_now, save_now = log_now or done, save_now or done
            bar.update(1)
            step_time = timer.tick(self.step, done)
            if step_time is not None and self.main:
                self._report_step_time(step_time)
            if log_now:
                loss_value = self._global_mean(loss)
                now = time.perf_counter()
                tokens_per_s = self.tokens_per_step * (self.step - window_step) / max(now - window_start, 1e-9)
                window_start, window_step = now, self.step
                record = {
                    "step": self.step,
                    "time": self._clock(),
                    "train_loss": loss_value,
                    "lr": self.lr_multiplier * t.lr,
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
            pause = time.perf_counter() - paused
            window_start += pause  # evaluating and saving are not training throughput
            timer.exclude(pause)
            if save_now and self.step % t.eval_interval == 0:
                self.closing_seconds = max(self.closing_seconds, pause)
            if stopping is not None:
                if self.main:
                    _print(f"stopped by {stopping} at step {self.step}; checkpoint saved. Continue with --resume")
                summary["stopped_by"] = self.stop_signal or "SIGTERM"  # a peer's signal: stopped all the same
                break
        return summary

    def train_step(self, check_finite: bool = True) -> torch.Tensor:
        """One optimizer step: set the learning rate, accumulate gradients, clip, update.

        Returns the step's mean loss as a tensor (reading it is left to the caller: on a GPU that is
        a sync). With check_finite, a non-finite gradient stops the run or skips the update.
        """
        self.lr_multiplier = lr_multiplier(self.step, self.train_cfg, self.budget_used)
        self.optimizer.set_lr(self.lr_multiplier)
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
            sync = nullcontext() if last or self.world_size == 1 else no_gradient_sync(self.forward_model)
            with sync:
                with autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
        self.optimizer.unscale_(self.scaler)
        clip = self.train_cfg.grad_clip or math.inf
        grad_norm = clip_gradients(self.model, clip)
        return loss_sum / accum, grad_norm

    def _optimizer_step(self) -> None:
        self.optimizer.step(self.scaler)
        self.optimizer.zero_grad()
        self.skipped_in_a_row = 0

    def _non_finite(self, loss: torch.Tensor) -> None:
        """Skip this update (fp16 overflow, or train.on_nan=skip) or stop; a long run of skips is divergence."""
        self.optimizer.zero_grad()
        self.skipped_in_a_row += 1
        where = f"non-finite loss or gradients at step {self.step} (loss {loss.item():.4g})"
        skipping = self.dtype == torch.float16 or self.train_cfg.on_nan == "skip"
        if skipping and self.skipped_in_a_row <= MAX_SKIPPED_STEPS:
            if self.dtype == torch.float16:  # fp16 overflow is routine: the scaler lowers its scale and we go on
                self.scaler.update()
            else:
                _print(f"{where}: step skipped (train.on_nan=skip)")
            return
        if skipping:
            where = f"{MAX_SKIPPED_STEPS + 1} steps in a row had non-finite gradients (last at step {self.step})"
        last = list_checkpoints(self.out_dir / "checkpoints")
        kept = f"the newest checkpoint is {last[-1]}" if last else "no checkpoint was saved yet"
        best = read_best(self.out_dir / "checkpoints")
        if best and last and last[-1] != checkpoint_dir(self.out_dir, best["step"]):  # newest may have diverged
            kept += f", the best is step {best['step']} (val loss {best['val_loss']:.4g})"
        advice = "Lower train.lr" + ("" if skipping else ", or set train.on_nan=skip")
        raise MinigptError(f"{where}; stopped, {kept}. {advice}", exit_code=1)

    def _plan_next_step(self) -> None:
        """With train.max_seconds: the share of the budget spent once the next step is done, or 1.0
        if there is no time for one more after it (so the last step runs at the schedule's end). The
        final evaluation and save are set aside; every process agrees on the slowest clock."""
        budget = self.train_cfg.max_seconds
        if budget is None:
            return
        used = torch.tensor([time.perf_counter() - self.started + self.step_seconds], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(used, op=dist.ReduceOp.MAX)
        available = max(budget - self.closing_seconds, 1e-9)
        self.budget_used = 1.0 if used.item() + self.step_seconds >= available else used.item() / available

    def _finished(self) -> bool:
        """max_steps reached, or the time budget's last step taken."""
        if self.train_cfg.max_seconds is None:
            return self.step >= self.train_cfg.max_steps
        return self.budget_used == 1.0

    def _agreed_stop(self) -> str | None:
        """The stop signal, agreed by every rank: all of them must save and stop after the same step."""
        if self.world_size == 1:
            return self.stop_signal
        flag = torch.tensor([1.0 if self.stop_signal else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return (self.stop_signal or "a signal to another process") if flag.item() else None

    def _synced_clock(self) -> float:
        """time.perf_counter() once the GPU has finished the work queued so far."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

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
        usable_val = val_loss if val_loss is not None and math.isfinite(val_loss) else None
        record, state = self.record(usable_val), self.state_dict()  # every rank takes part in the gathers
        if self.sharded:
            from . import fsdp

            fsdp.save_sharded_checkpoint(
                self.out_dir,
                record,
                self.model,
                self.optimizer.optimizers,
                state,
                self.tokenizer,
                keep=self.train_cfg.keep_checkpoints,
            )
        elif self.main:
            save_checkpoint(
                self.out_dir,
                record,
                self.model,
                state,
                self.tokenizer,
                keep=self.train_cfg.keep_checkpoints,
                weights=checkpoint_weights(self.model, self.train_cfg.lora, self.base_vocab_size),
            )

    def _gather(self, value) -> list:
        """Every rank's value, in rank order (a list of one without DDP)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def _log(self, record: dict) -> None:
        if self.main:
            self.metrics.append(record)

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


def _peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None for GPUs not in the table."""
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_FLOPS if re.search(rf"\b{re.escape(key)}\b", name)]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


class _StepTimer:
    """The mean step time over `steps` steps after a process's first (which warms up), measured once."""

    def __init__(self, steps: int, clock):
        self.steps, self.clock = steps, clock
        self.start = self.first = None
        self.measured = False

    def tick(self, step: int, last: bool) -> float | None:
        """Call after each step; returns the step time when it has just been measured."""
        if self.measured:
            return None
        now = self.clock()
        if self.start is None:
            self.start, self.first = now, step
            return None
        if step - self.first >= self.steps or last:
            self.measured = True
            return (now - self.start) / (step - self.first)
        return None

    def exclude(self, seconds: float) -> None:
        """Leave out time spent on something else (evaluation, checkpoints)."""
        if self.start is not None:
            self.start += seconds


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _print(message: str) -> None:
    tqdm.write(message, file=sys.stderr)
