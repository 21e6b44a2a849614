"""The training loop: one process, or many through torchrun, on CPU or GPU.

    summary = train(load_config("configs/shakespeare_char.yaml"))                # minigpt train
    summary = train(load_config(None, ["out_dir=out/run"]), resume=True)         # minigpt train --resume

    for each step:  take the optimizer step (step.py: learning rate, grad_accum x forward and backward,
                    clip, finite check, update)
                    log (report.py), evaluate on fixed val batches, checkpoint (checkpointing.py)
    until train.max_steps, the time budget train.max_seconds (clock.py), or SIGINT / SIGTERM

The loss is train.objective's: next-token cross-entropy (lm), or DPO on preference pairs (dpo.py), whose
batches come from data/pairs.py and whose reward statistics are logged beside the loss.

A run is a folder (out_dir): config.yaml, metrics.jsonl, checkpoints/. Checkpoints carry the
optimizer, the data loader's position and every RNG state, so `--resume` continues exactly where
the run stopped: on CPU the resumed run's losses are bitwise those of an uninterrupted run.
dtype=auto's timing on CPUs with bf16 units is in precision.py, process set-up in parallel.py.
"""

import dataclasses
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..data.batches import BatchLoader, chat_files, check_fits, check_token_ids, fixed_batches, load_meta
from ..data.pairs import PairLoader, fixed_pairs
from ..device import autocast, check_memory, resolve_device, resolve_dtype
from ..errors import SEED_LIMIT, MinigptError
from ..lora import store_frozen_weights_in
from ..metrics import MetricsLog
from ..tokenizers import load_tokenizer
from .checkpointing import (
    check_not_foreign,
    check_out_dir,
    kept_checkpoints,
    restore,
    save,
    seed_everything,
    start_run_folder,
)
from .clock import RunClock
from .dpo import DPOObjective, check_data
from .finetune import build_model, saved_base
from .lock import out_dir_lock
from .optim import Optimizers
from .parallel import any_rank, init_distributed, mean_over_ranks, uses_cuda
from .precision import faster_cpu_dtype
from .report import RunReport, end_line, peak_flops, say, source_line, start_line
from .step import NonFiniteStop, TrainStep, lm_loss


def train(config: RunConfig, resume: bool = False) -> dict:
    """Train as the config says; returns the final step's summary (step, train_loss, val_loss, and
    stopped_by: the name of the signal that stopped the run early, if one did)."""
    rank, world_size, local_rank = init_distributed(config.device)
    try:
        if rank == 0:
            check_not_foreign(config.out_dir)
        with out_dir_lock(config.out_dir) if rank == 0 else nullcontext():  # one run per out_dir at a time
            with _end_setup_on_signals():
                trainer = Trainer(config, resume, rank, world_size, local_rank)
            return trainer.run()
    finally:
        if world_size > 1:
            dist.destroy_process_group()


class _SetupStopped(BaseException):
    """A signal during set-up; a BaseException, so that no `except Exception` on the way swallows it."""


@contextmanager
def _end_setup_on_signals():
    """SIGINT / SIGTERM during set-up (building a large model takes minutes) end the run at once, in one
    line with the shell's exit code (130, 143); the out_dir lock then removes a folder it made. The loop's
    own handlers (Trainer._stop_on_signals) take over from there: they finish the step and save."""

    def stop(signum, frame):
        raise _SetupStopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _SetupStopped as stopped:
        name = signal.Signals(stopped.args[0]).name
        raise MinigptError(
            f"stopped by {name} while setting up the run, before its first step; nothing was saved",
            exit_code=128 + stopped.args[0],
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def training_bytes(config: RunConfig) -> float:
    """A low estimate of the memory a training step takes in float32: weights, gradients and AdamW's two
    moments (16 bytes a parameter), and one micro-batch's activations (8 vectors of n_embd a token and
    layer; fused attention keeps no T x T weights) and logits (two vocabulary rows a token). Low on
    purpose: only what surely cannot fit is refused."""
    m, t = config.model, config.train
    per_token = 8 * m.n_layer * m.n_embd + 2 * m.vocab_size
    return 16 * m.estimated_params() + 4 * t.batch_size * m.block_size * per_token


class Trainer:
    """One process's part of a run: its model, data, optimizer step, clock and report, and the loop."""

    def __init__(self, config: RunConfig, resume: bool, rank: int, world_size: int, local_rank: int):
        self.rank, self.world_size = rank, world_size
        self.main = rank == 0
        self.out_dir = Path(config.out_dir)
        # each process of a multi-GPU run drives the GPU of its local rank
        self.device = resolve_device(
            f"cuda:{local_rank}" if world_size > 1 and uses_cuda(config.device) else config.device
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
        check_data(self.data_meta, t.objective, data_dir)
        self.dpo = t.objective == "dpo"
        check_out_dir(self.out_dir, resume)

        # ranks differ in dropout, agree in initial weights (set below)
        seed_everything((config.seed + rank) % SEED_LIMIT)
        torch.manual_seed(config.seed)
        if self.device.type == "cpu" and t.init_from is None:  # an absurd size is refused before it is built
            check_memory(training_bytes(config), "training this model", "make the model or train.batch_size smaller")
        # train.init_from: the source's weights and model section (its vocabulary grown for chat tokens)
        pin = saved_base(self.out_dir) if resume and t.lora.enabled else None  # adapters resume on their base
        model, self.base = build_model(config.model, self.tokenizer, t.init_from, t.lora, pin)
        self.base_vocab_size = self.base["vocab_size"] if self.base else None
        self.config = config = dataclasses.replace(config, model=model.config)
        self.model = model.to(self.device)
        # DPO's reference is the starting point: taken now, before a resume loads newer weights
        self.objective = DPOObjective(self.model, t.dpo, t.lora.enabled) if self.dpo else lm_loss
        block = config.model.block_size
        check_fits(self.data_meta, block, data_dir)
        for split in ("train", "val"):  # an id past the embedding would fail mid-run with an IndexError
            check_token_ids(data_dir / f"{split}.bin", self.data_meta["dtype"], config.model.vocab_size)
        if config.dtype == "auto" and self.dtype == torch.bfloat16 and self.device.type == "cpu" and not resume:
            self.dtype = faster_cpu_dtype(self.model, t.batch_size, self.device, world_size)
        self.sharded = t.parallel == "fsdp" and world_size > 1
        if self.sharded:
            from . import fsdp  # imported only by FSDP runs: FSDP's modules take seconds to import

            fsdp.shard_model(self.model, self.device, self.dtype)  # before the optimizer: it takes the shards
        torch.manual_seed((config.seed + rank) % SEED_LIMIT)
        self.optimizer = Optimizers(self.model, t)
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.loader = (PairLoader if self.dpo else BatchLoader)(
            data_dir / "train.bin",
            self.data_meta["dtype"],
            block,
            t.batch_size,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
            device=self.device,
            **chat_files(data_dir, "train"),  # chat data and pairs: masked targets, from sequence starts
        )
        self.val_batches = self._val_batches(data_dir)
        self.step, self.best_val = 0, math.inf
        self.last_val: tuple[int, float] | None = None  # (step, val loss) of the latest evaluation
        self.clock = RunClock(t.max_seconds, self.device, world_size)
        self.tokens_per_step = self.loader.tokens_per_batch * t.grad_accum * world_size
        self.flops_per_token = self.model.flops_per_token(block)
        peak = peak_flops(self.device)
        self.peak_flops = peak * world_size if peak else None  # no MFU for GPUs missing from PEAK_FLOPS
        metrics = (
            MetricsLog(self.out_dir, tensorboard=t.tensorboard, wandb_project=t.wandb_project, config=config)
            if self.main
            else None
        )
        self.report = RunReport(
            main=self.main,
            out_dir=self.out_dir,
            metrics=metrics,
            tokens_per_step=self.tokens_per_step,
            flops_per_token=self.flops_per_token,
            peak_flops=self.peak_flops,
        )
        if resume:
            restore(self)  # weights, optimizer, loader, RNG, step and clock; the dtype auto chose
        elif self.main:
            start_run_folder(self.out_dir, config, metrics)

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
        self.take_step = TrainStep(
            self.model,
            self.optimizer,
            self.scaler,
            self.loader.next_batch,
            t,
            self.device,
            self.dtype,
            forward_model=self.forward_model,
            world_size=world_size,
            objective=self.objective,
        )
        self.stop_signal = None

    def _val_batches(self, data_dir: Path) -> list:
        """The fixed val batches every evaluation uses (none, said once, for data without a val split)."""
        t = self.train_cfg
        if self.data_meta.get("val_tokens", 0) > 0:  # a val split shorter than the block is refused here
            return (fixed_pairs if self.dpo else fixed_batches)(
                data_dir / "val.bin",
                self.data_meta["dtype"],
                self.config.model.block_size,
                t.batch_size,
                t.eval_steps,
                self.device,
                **chat_files(data_dir, "val"),
            )
        if self.main:
            say(f"note: {data_dir} has no val split: no val loss, no best checkpoint (prepare with --val-fraction)")
        return []

    def run(self) -> dict:
        """Train until train.max_steps, the time budget or a signal; returns the last step's summary."""
        t = self.train_cfg
        if self.main:
            say(start_line(self.model, self.device, self.dtype, self.tokens_per_step, self.data_meta, self.step, t))
            if self.base is not None:
                say(source_line(self.base, self.model, t.lora.enabled))
        if t.max_seconds is None and self.step >= t.max_steps:
            if self.main:
                say(
                    f"note: the run in {self.out_dir} already reached train.max_steps={t.max_steps} "
                    f"(step {self.step}); nothing to do: raise train.max_steps to train longer"
                )
                say(end_line(self.out_dir))
            return {"step": self.step}
        self.report.open(self.step, t.max_steps if t.max_seconds is None else None, t.progress, self.clock)
        try:
            with self._stop_on_signals():
                summary = self._loop()
        finally:  # also when a NaN or a full disk stops the run: flush the logs
            self.report.close()
        if self.main:
            say(end_line(self.out_dir))
        return summary

    def _loop(self) -> dict:
        t = self.train_cfg
        # a check is a host sync on GPU; skipping steps (fp16 overflow, on_nan=skip) must see each one
        check_each_step = self.device.type != "cuda" or t.on_nan == "skip" or self.dtype == torch.float16
        summary = {"step": self.step}
        self.clock.start()  # wall-clock, carried across resumes: set-up is not training
        self.model.train()
        while not self._finished():
            step_start = time.perf_counter()
            self.clock.plan_next_step()
            log_now = (self.step + 1) % t.log_interval == 0
            save_now = (self.step + 1) % t.checkpoint_interval == 0
            loss = self.train_step(check_finite=check_each_step or log_now or save_now or t.max_seconds is not None)
            self.clock.step_took(time.perf_counter() - step_start)
            stopping = self._agreed_stop()  # read once: a signal arriving later is handled after the next step
            done = self._finished() or stopping is not None
            log_now, save_now = log_now or done, save_now or done
            self.report.step_done(self.step, done, t.max_steps - self.step if t.max_seconds is None else None)
            if log_now:
                loss_value = mean_over_ranks(loss, self.world_size)
                stats = {k: mean_over_ranks(v, self.world_size) for k, v in self.take_step.stats.items()}
                lr = self.take_step.lr_multiplier * t.lr
                self.report.train_record(self.step, self.clock.seconds(), loss_value, lr, stats)
                summary = {"step": self.step, "train_loss": loss_value}

            paused = time.perf_counter()
            if self.step % t.eval_interval == 0 or (done and self.val_batches):
                summary["val_loss"] = self._evaluate()
            if save_now:
                self._save()
            pause = time.perf_counter() - paused
            self.report.exclude(pause)  # evaluating and saving are not training throughput
            if save_now and self.step % t.eval_interval == 0:
                self.clock.closing_took(pause)  # a time budget leaves room for the final evaluation and save

            if stopping is not None:
                if self.main:
                    say(f"stopped by {stopping} at step {self.step}; checkpoint saved. Continue with --resume")
                summary["stopped_by"] = self.stop_signal or "SIGTERM"  # a peer's signal: stopped all the same
                break
        return summary

    def train_step(self, check_finite: bool = True) -> torch.Tensor:
        """One optimizer step (step.py); returns its mean loss as a tensor. A skipped update counts as a step."""
        self.step += 1
        try:
            return self.take_step(self.step - 1, self.clock.budget_used, check_finite)
        except NonFiniteStop as stop:  # name what the run keeps to resume from
            kept = kept_checkpoints(self.out_dir)
            raise MinigptError(f"{stop.where}; stopped, {kept}. {stop.advice}", exit_code=1) from None

    def _finished(self) -> bool:
        """max_steps reached, or the time budget's last step taken."""
        if self.train_cfg.max_seconds is None:
            return self.step >= self.train_cfg.max_steps
        return self.clock.budget_spent()

    def _agreed_stop(self) -> str | None:
        """The stop signal, agreed by every rank: all of them must save and stop after the same step."""
        if not any_rank(self.stop_signal is not None, self.device, self.world_size):
            return None
        return self.stop_signal or "a signal to another process"

    @torch.no_grad()
    def _evaluate(self) -> float | None:
        """Mean loss (and DPO's statistics) over the fixed val batches (the same every time, on every rank)."""
        if not self.val_batches:
            return None
        self.model.eval()
        values = []
        for x, y in self.val_batches:
            with autocast(self.device, self.dtype):
                loss, stats = self.objective(self.model, x, y)
            values.append({"loss": loss.float(), **stats})
        self.model.train()
        means = {f"val_{k}": torch.stack([v[k] for v in values]).mean().item() for k in values[0]}
        val_loss = means["val_loss"]
        self.last_val = (self.step, val_loss)
        if not self.dpo:
            means["val_perplexity"] = math.exp(min(val_loss, 50))
        self.report.log({"step": self.step, "time": self.clock.seconds(), **means})
        if self.main:
            rewards = f", reward accuracy {means['val_reward_accuracy']:.3f}" if self.dpo else ""
            say(f"step {self.step}: val loss {val_loss:.4f}{rewards}")
        return val_loss

    def _save(self) -> None:
        if self.last_val is None or self.last_val[0] != self.step:
            self._evaluate()  # every checkpoint knows its val loss, so "best" is well defined
        val_loss = self.last_val[1] if self.last_val and self.last_val[0] == self.step else None
        usable = val_loss if val_loss is not None and math.isfinite(val_loss) else None
        if usable is not None:
            self.best_val = min(self.best_val, usable)
        save(self, usable)

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
