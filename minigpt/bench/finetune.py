"""Fine-tuning throughput: minigpt against a plain `transformers` (+ `peft` for LoRA) loop.

    results = bench_finetune(quick=True)
    print(format_finetune_table(results))

Both sides train a model of GPT-2 small's shapes (12 layers, 12 heads, 768 wide, 50,257 tokens, 1,024
positions, tied head) from random weights, offline, on the same batches of random tokens, block 256:
the same autocast dtype, AdamW with the same rate, betas and weight decay (matrices only), gradients
clipped at 1.0, dropout off. Full fine-tuning trains every weight; LoRA (rank 8, alpha 16) adapts the
attention and MLP projections (c_attn, c_proj, c_fc) and freezes everything else, on both sides.
minigpt's side times the Trainer's own step (minigpt/train/step.py), not a copy of it.

Each measurement runs in a fresh Python process, so its peak RSS (resident memory) is its own: the
imports, the model, its gradients and optimizer state and the activations of one step. Tokens/s is
the median over the timed steps, after warm-up steps that pay for first-touch allocation.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .process import progress

GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "positions": 1024}
SIDES = ("minigpt", "transformers")
MODES = ("full", "lora")


def bench_finetune(
    *,
    quick: bool = False,
    batch_size: int | None = None,
    block_size: int = 256,
    dtype: str = "auto",
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lr: float = 1e-4,
    shapes: dict = GPT2_SMALL,
) -> dict:
    """tokens/s and peak RSS of full and LoRA fine-tuning, minigpt against transformers + peft, with the
    ratios (speedup: minigpt's tokens/s over theirs; memory: minigpt's peak RSS over theirs).

    dtype: auto picks what minigpt trains with on this CPU (bf16 autocast where the CPU has bf16 units);
    both sides then use it. quick: batch 2, one warm-up and two timed steps (about a minute on 2 cores).
    shapes: the model's (GPT2_SMALL's keys); smaller ones are for tests.
    """
    import torch

    from ..device import resolve_dtype

    dtype_name = str(resolve_dtype(dtype, torch.device("cpu"))).removeprefix("torch.")
    settings = {
        "batch_size": batch_size or (2 if quick else 4),
        "block_size": block_size,
        "dtype": dtype_name,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lr": lr,
        "warmup_steps": 1 if quick else 2,
        "steps": 2 if quick else 5,
        "threads": torch.get_num_threads(),
        "shapes": shapes,
    }
    model = "GPT-2 124M shapes" if shapes == GPT2_SMALL else f"{shapes['n_layer']} x {shapes['n_embd']}"
    results = {"model": f"{model}, random weights", "settings": settings, "load_average": os.getloadavg()}
    for mode in MODES:
        row = {side: _in_fresh_process(side=side, mode=mode, **settings) for side in SIDES}
        ours, theirs = row["minigpt"], row["transformers"]
        row["speedup"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2)
        row["memory_ratio"] = round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 2)
        results[mode] = row
        progress(
            f"fine-tuning, {mode}: minigpt {ours['tokens_per_s']:,.0f} tokens/s, transformers "
            f"{theirs['tokens_per_s']:,.0f} ({row['speedup']:.2f}x)"
        )
    return results


def format_finetune_table(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"fine-tuning, {results['model']}: batch {s['batch_size']} x {s['block_size']} tokens, {s['dtype']}, "
        f"AdamW, {s['threads']} threads, LoRA rank {s['lora_rank']}; load average "
        + ", ".join(f"{x:.1f}" for x in results["load_average"]),
        "",
        "| | minigpt tokens/s | transformers tokens/s | speedup | minigpt peak RSS | transformers peak RSS | memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        row = results[mode]
        ours, theirs = row["minigpt"], row["transformers"]
        lines.append(
            f"| {mode} | {ours['tokens_per_s']:,.0f} | {theirs['tokens_per_s']:,.0f} | {row['speedup']:.2f}x "
            f"| {ours['peak_rss_mb']:,.0f} MB | {theirs['peak_rss_mb']:,.0f} MB | {row['memory_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def _in_fresh_process(**kwargs) -> dict:
    """measure(**kwargs) in a new Python process (its JSON result is the last line it prints)."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding minigpt/, not minigpt/ itself
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    code = (
        "import json, sys; from minigpt.bench.finetune import measure; "
        "print(json.dumps(measure(**json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {kwargs['side']} {kwargs['mode']} measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    *,
    side: str,
    mode: str,
    batch_size: int,
    block_size: int,
    dtype: str,
    lora_rank: int,
    lora_alpha: float,
    lr: float,
    warmup_steps: int,
    steps: int,
    threads: int,
    shapes: dict,
) -> dict:
    """One side's training steps in this process: tokens/s (median over steps) and this process's peak RSS."""
    import torch

    from .process import peak_rss_mb

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype)
    build = _minigpt_step if side == "minigpt" else _transformers_step
    step, trainable = build(shapes, mode, lora_rank, lora_alpha, lr, dtype)
    generator = torch.Generator().manual_seed(0)
    tokens = batch_size * block_size
    times = []
    for i in range(warmup_steps + steps):
        batch = torch.randint(0, shapes["vocab_size"], (batch_size, block_size + 1), generator=generator)
        start = time.perf_counter()
        loss = step(batch)
        if i >= warmup_steps:
            times.append(time.perf_counter() - start)
    return {
        "tokens_per_s": round(tokens / statistics.median(times), 1),
        "step_seconds": [round(t, 3) for t in times],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "trainable_params": trainable,
        "last_loss": round(loss, 4),
    }


def _minigpt_step(shapes: dict, mode: str, lora_rank: int, lora_alpha: float, lr: float, dtype):
    """minigpt's model, LoRA and optimizer, and the step the Trainer takes (minigpt/train/step.py: forward
    under autocast, backward, clip, finite check, update) at a constant rate, as the transformers side has."""
    import torch

    from ..config import TrainConfig
    from ..lora import LoRASettings, apply_lora, store_frozen_weights_in
    from ..model import GPT, GPTConfig
    from ..train.optim import Optimizers
    from ..train.step import TrainStep

    sizes = {k: v for k, v in shapes.items() if k != "positions"}
    model = GPT(GPTConfig(**sizes, block_size=shapes["positions"], dropout=0.0))
    if mode == "lora":
        apply_lora(model, LoRASettings(rank=lora_rank, alpha=lora_alpha))
        if dtype != torch.float32:
            store_frozen_weights_in(model, dtype)  # as the Trainer does
    # no warmup and no decay (min_lr_ratio 1): the rate stays lr; gradients clipped at 1.0, one micro-batch
    train = TrainConfig(lr=lr, weight_decay=0.1, beta1=0.9, beta2=0.95, warmup_steps=0, min_lr_ratio=1.0, grad_clip=1.0)
    batches = []  # measure() hands each step its batch: the step draws it from here
    take_step = TrainStep(
        model,
        Optimizers(model, train),
        torch.amp.GradScaler(enabled=False),
        lambda: (batches[-1][:, :-1], batches[-1][:, 1:]),
        train,
        torch.device("cpu"),
        dtype,
    )
    model.train()

    def step(batch) -> float:
        batches[:] = [batch]
        return take_step(0).item()  # checks the gradients are finite, as the Trainer does on a CPU

    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _transformers_step(shapes: dict, mode: str, lora_rank: int, lora_alpha: float, lr: float, dtype):
    """GPT2LMHeadModel (+ peft LoRA) and the plain loop its documentation shows: labels in, loss out."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=shapes["vocab_size"],
        n_positions=shapes["positions"],
        n_embd=shapes["n_embd"],
        n_layer=shapes["n_layer"],
        n_head=shapes["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=0.0,
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,  # GPT-2's Conv1D stores weights as (in, out)
        )
        model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    model.train()

    def step(batch) -> float:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=batch[:, 1:], labels=batch[:, 1:]).loss  # the model shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step, sum(p.numel() for p in trainable)
