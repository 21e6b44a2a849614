"""Side by side with nanoGPT, whole processes as a user runs them: `minigpt bench --nanogpt DIR --text FILE`.

DIR is a nanoGPT checkout (the anchor we measure against: ../shared/anchors/nanoGPT, commit 3adf61e).
It is copied to a scratch folder and run with its own scripts on the CPU, and minigpt does the same
work in the same run, so that both sides see the same machine:

- nanoGPT's CPU recipe from its README (4 x 128, block 64, batch 12, no dropout, no compile) for 300
  and 2,000 steps, against `minigpt train configs/shakespeare_char.yaml` with that model and batch;
- 1,000 new tokens from a 6 x 384, block-256 char model (trained one step, so the weights have their
  real size), against `minigpt sample`, with float32 weights and with `--quantize int8`;
- `configs/shakespeare_char_fast.yaml` and `configs/shakespeare_char_speedrun.yaml`, against
  nanoGPT's 2,000 steps.

Each time is the whole process, start-up included. minigpt's losses are on the whole val split
(`minigpt eval`); nanoGPT's is what its own script prints (an estimate over 20 batches).
Config paths are relative to the working directory, as for `minigpt bench --config`.
"""

import re
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import MinigptError
from .process import (
    MINIGPT,
    NANOGPT_CPU,
    prepare_char,
    progress,
    require_text,
    run,
    timed,
    train_command,
    whole_val_loss,
)

CHAR_CONFIG = "configs/shakespeare_char.yaml"
RECIPES = ("configs/shakespeare_char_fast.yaml", "configs/shakespeare_char_speedrun.yaml")
# nanoGPT's own training script with its char-level Shakespeare config, on the CPU, as its README runs it
NANO_TRAIN = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False"]


def check_inputs(nanogpt_dir: str, text: str | None) -> None:
    """Raise MinigptError unless nanogpt_dir is a nanoGPT checkout and text a file (checked before any timing)."""
    source = Path(nanogpt_dir)
    if not (source / "train.py").is_file() or not (source / "sample.py").is_file():
        raise MinigptError(f"--nanogpt {nanogpt_dir} is not a nanoGPT checkout (no train.py and sample.py there)")
    require_text("--nanogpt", text)


def bench_nanogpt(
    nanogpt_dir: str,
    text: str,
    *,
    steps: tuple[int, ...] = (300, 2000),
    new_tokens: int = 1000,
    recipes: tuple[str, ...] = RECIPES,
) -> dict:
    """Seconds of each side, their ratios (nanoGPT's time over minigpt's), and minigpt's whole-val losses."""
    check_inputs(nanogpt_dir, text)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        nano = work / "nanoGPT"
        shutil.copytree(nanogpt_dir, nano)
        shutil.copy(text, nano / "data" / "shakespeare_char" / "input.txt")
        run([sys.executable, "prepare.py"], cwd=nano / "data" / "shakespeare_char")
        data = prepare_char(text, work)
        results = {"training": [], "generation": None, "recipes": []}
        for n in steps:
            results["training"].append(_training(nano, data, work, n))
            progress(f"nanoGPT's recipe, {n} steps: {results['training'][-1]['ratio']:.2f}x")
        results["generation"] = _generation(nano, data, work, new_tokens)
        progress(f"generation: {results['generation']['ratio']:.2f}x")
        longest = max(results["training"], key=lambda row: row["steps"], default=None)
        for config in recipes:
            results["recipes"].append(_recipe(config, data, work, longest))
    return results


def _training(nano: Path, data: Path, work: Path, steps: int) -> dict:
    nano_out, ours = work / f"nano_{steps}", work / f"mg_{steps}"
    nano_seconds, nano_output = timed(
        [
            *NANO_TRAIN,
            "--eval_iters=20",
            "--log_interval=100",
            "--block_size=64",
            "--batch_size=12",
            "--n_layer=4",
            "--n_head=4",
            "--n_embd=128",
            f"--max_iters={steps}",
            "--lr_decay_iters=2000",
            "--dropout=0.0",
            f"--out_dir={nano_out}",
        ],
        cwd=nano,
    )
    our_seconds, _ = timed(
        train_command(
            CHAR_CONFIG,
            data,
            ours,
            *NANOGPT_CPU,
            "model.dropout=0.0",
            "train.grad_accum=1",
            f"train.max_steps={steps}",
            "train.eval_interval=250",
            "train.eval_steps=20",
            "device=cpu",
        )
    )
    reported = re.findall(r"val loss ([0-9.]+)", nano_output)
    return {
        "steps": steps,
        "nanogpt_s": nano_seconds,
        "minigpt_s": our_seconds,
        "ratio": nano_seconds / our_seconds,
        "nanogpt_val_loss_estimate": float(reported[-1]) if reported else None,
        "minigpt_whole_val_loss": whole_val_loss(ours),
    }


def _generation(nano: Path, data: Path, work: Path, new_tokens: int) -> dict:
    """One training step on each side (real-sized weights, saved), then the timed sampling."""
    nano_out, ours = work / "nano_gen", work / "mg_gen"
    run(
        [
            *NANO_TRAIN,
            "--max_iters=1",
            "--eval_iters=1",
            "--eval_interval=1",
            "--batch_size=4",
            "--always_save_checkpoint=True",
            f"--out_dir={nano_out}",
        ],
        cwd=nano,
    )
    one_step = ["train.max_steps=1", "train.batch_size=4", "train.eval_interval=1", "train.eval_steps=1"]
    one_step.append("train.checkpoint_interval=1")
    run(train_command(CHAR_CONFIG, data, ours, *one_step, "device=cpu"))
    nano_seconds, _ = timed(
        [
            sys.executable,
            "sample.py",
            f"--out_dir={nano_out}",
            "--device=cpu",
            "--num_samples=1",
            f"--max_new_tokens={new_tokens}",
            "--compile=False",
        ],
        cwd=nano,
    )
    sample = [*MINIGPT, "sample", str(ours), "--latest", "--prompt", "ROMEO:", "--device", "cpu", "--ignore-eos"]
    sample += ["--max-new-tokens", str(new_tokens)]
    our_seconds, _ = timed(sample)
    int8_seconds, _ = timed([*sample, "--quantize", "int8"])
    return {
        "new_tokens": new_tokens,
        "nanogpt_s": nano_seconds,
        "minigpt_s": our_seconds,
        "minigpt_int8_s": int8_seconds,
        "ratio": nano_seconds / our_seconds,
        "int8_ratio": nano_seconds / int8_seconds,
    }


def _recipe(config: str, data: Path, work: Path, nanogpt: dict | None) -> dict:
    if not Path(config).is_file():
        raise MinigptError(f"{config} not found: run minigpt bench --nanogpt from the project's root folder")
    out = work / Path(config).stem
    seconds, _ = timed(train_command(config, data, out))
    row = {"config": config, "minigpt_s": seconds, "minigpt_whole_val_loss": whole_val_loss(out)}
    if nanogpt is not None:
        row["nanogpt_steps"], row["nanogpt_s"] = nanogpt["steps"], nanogpt["nanogpt_s"]
        row["share_of_nanogpt_time"] = seconds / nanogpt["nanogpt_s"]
    return row


def format_nanogpt_table(results: dict) -> str:
    lines = ["| side by side with nanoGPT, whole process | nanoGPT | minigpt | ratio |", "|---|---|---|---|"]
    for row in results["training"]:
        lines.append(
            f"| nanoGPT's CPU recipe, {row['steps']:,} steps (minigpt whole-val loss "
            f"{row['minigpt_whole_val_loss']:.3f}; nanoGPT's own estimate {row['nanogpt_val_loss_estimate']}) "
            f"| {row['nanogpt_s']:.1f} s | {row['minigpt_s']:.1f} s | {row['ratio']:.2f}x |"
        )
    g = results["generation"]
    lines.append(
        f"| {g['new_tokens']:,} new tokens, 6 x 384 block 256 | {g['nanogpt_s']:.1f} s | {g['minigpt_s']:.1f} s "
        f"| {g['ratio']:.2f}x |"
    )
    lines.append(
        f"| the same, `--quantize int8` | {g['nanogpt_s']:.1f} s | {g['minigpt_int8_s']:.1f} s "
        f"| {g['int8_ratio']:.2f}x |"
    )
    for row in results["recipes"]:
        share = f"{row['share_of_nanogpt_time']:.2f}x nanoGPT's time" if "nanogpt_s" in row else ""
        reference = f"{row['nanogpt_s']:.1f} s ({row['nanogpt_steps']:,} steps)" if "nanogpt_s" in row else ""
        lines.append(
            f"| {row['config']} (whole-val loss {row['minigpt_whole_val_loss']:.3f}) | {reference} "
            f"| {row['minigpt_s']:.1f} s | {share} |"
        )
    return "\n".join(lines)
