"""`minigpt bench`: how fast this machine trains, generates and prepares data with minigpt.

Training throughput runs the real Trainer's step on random tokens (speed does not depend on what
the tokens say) and reports the median tokens/s over several timed windows after a warm-up,
for a plain float32 eager baseline and for the settings `auto` picks (bf16 autocast where the
hardware has it, torch.compile where it pays).
"""

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..device import cpu_features, resolve_device
from .process import MINIGPT, NANOGPT_CPU, peak_rss_mb, progress, require_text, timed


def write_random_data(folder: Path, vocab_size: int, n_tokens: int = 2_000_000, seed: int = 0) -> Path:
    """A data folder of random tokens in the layout `minigpt prepare` writes, for timing only."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_tokens), ("val", n_tokens // 10)):
        rng.integers(0, vocab_size, n, dtype=np.uint16).tofile(folder / f"{split}.bin")
    chars = [chr(32 + i) for i in range(vocab_size)]
    (folder / "char_vocab.json").write_text(json.dumps({"chars": chars, "eot": False}))
    meta = {
        "tokenizer": "char",
        "vocab_size": vocab_size,
        "eot_token": None,
        "dtype": "uint16",
        "train_tokens": n_tokens,
        "val_tokens": n_tokens // 10,
        "tokenizer_files": ["char_vocab.json"],
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def bench_training(
    config_path: str,
    overrides: list[str] = (),
    *,
    vocab_size: int = 65,
    warmup_steps: int = 2,
    windows: int = 5,
    window_seconds: float = 3.0,
) -> dict:
    """Median training tokens/s of the Trainer for a config (plus overrides) on random tokens.

    Each timed window runs as many whole steps as fit in about window_seconds (at least one).
    """
    from ..train.trainer import Trainer  # the real step, not a copy of it

    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_data(Path(tmp) / "data", vocab_size)
        config = load_config(
            config_path,
            [*overrides, f"data.dir={data}", f"out_dir={Path(tmp) / 'out'}", "train.progress=false", "model.dropout=0"],
        )
        trainer = Trainer(config, resume=False, rank=0, world_size=1, local_rank=0)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for _ in range(warmup_steps):  # first steps pay for allocation and compilation
            trainer.train_step(check_finite=False)
        sync()
        start = time.perf_counter()
        trainer.train_step(check_finite=False).item()
        sync()
        steps_per_window = max(1, round(window_seconds / (time.perf_counter() - start)))
        rates = []
        for _ in range(windows):
            start = time.perf_counter()
            for _ in range(steps_per_window):
                loss = trainer.train_step(check_finite=False)
            loss.item()
            sync()
            rates.append(trainer.tokens_per_step * steps_per_window / (time.perf_counter() - start))
        tokens_per_s = statistics.median(rates)
        result = {
            "config": config_path,
            "overrides": list(overrides),
            "dtype": str(trainer.dtype).removeprefix("torch."),
            "compile": trainer.forward_model is not trainer.model,
            "params": trainer.model.num_params(),
            "tokens_per_step": trainer.tokens_per_step,
            "tokens_per_s": round(tokens_per_s, 1),
            "windows": [round(r, 1) for r in rates],
        }
        if trainer.peak_flops:
            result["mfu"] = round(trainer.flops_per_token * tokens_per_s / trainer.peak_flops, 4)
        return result


def bench_startup(config_path: str) -> dict:
    """Whole-process seconds, as a user waits for them: `minigpt --help`; `minigpt train` to its first
    step (one step, evaluated and saved); `minigpt sample` to its first token, from that checkpoint."""

    def seconds(*args: str) -> float:
        return round(timed([*MINIGPT, *args])[0], 2)

    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_data(Path(tmp) / "data", 65, n_tokens=100_000)
        run = Path(tmp) / "run"
        steps = ["train.max_steps=1", "train.eval_steps=1", "train.progress=false"]
        return {
            "help_s": seconds("--help"),
            "first_step_s": seconds("train", config_path, f"data.dir={data}", f"out_dir={run}", *steps),
            "first_token_s": seconds("sample", str(run), "--max-new-tokens", "1"),
        }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def machine() -> str:
    device = resolve_device("auto")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu_features().items())
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"CPU features: {features}"
    )


BASELINE = ["dtype=float32", "compile=false"]  # a straightforward float32 eager loop


def run_bench(
    config: str,
    *,
    quick: bool = False,
    text: str | None = None,
    json_path: str | None = None,
    finetune: bool = False,
    serve: bool = False,
    nanogpt: str | None = None,
    budgets: bool = False,
    llama_cpp: bool = False,
    speculative: str | None = None,
    draft: str | None = None,
) -> dict:
    """Training (with the model of `config`), generation and prepare speed (on the file `text`), and
    peak memory; prints a table and JSON, and writes the JSON to json_path if given."""
    if nanogpt is not None:
        from .nanogpt import check_inputs

        check_inputs(nanogpt, text)  # before minutes of timing
    if budgets:
        require_text("--budgets", text)
    if speculative is not None:
        require_text("--speculative", text)
    device = resolve_device("auto")
    windows = dict(warmup_steps=1, windows=3, window_seconds=1.0) if quick else {}
    results = {"machine": machine(), "training": [], "generation": None, "prepare": None}
    results["startup"] = bench_startup(config)
    progress(f"start-up: {results['startup']}")
    for name, overrides in ((config, []), ("nanoGPT CPU recipe", NANOGPT_CPU)):
        base = bench_training(config, [*overrides, *BASELINE], **windows)
        fast = bench_training(config, overrides, **windows)
        results["training"].append(
            {
                "name": name,
                "baseline": base,
                "auto": fast,
                "speedup": round(fast["tokens_per_s"] / base["tokens_per_s"], 2),
            }
        )
        progress(f"training {name}: {base['tokens_per_s']:,.0f} -> {fast['tokens_per_s']:,.0f} tokens/s")

    from .generate import bench_generation

    # recomputation slows to seconds per token on long texts: it is timed on fewer tokens (shorter
    # texts favour it, so the reported speedup of the cache is, if anything, too small)
    results["generation"] = bench_generation(
        device=str(device), new_tokens=300 if quick else 1000, recompute_tokens=100 if quick else 300
    )
    progress(f"generation: {results['generation']['cache_speedup']:.1f}x with the KV cache")

    text_file = Path(text) if text else None
    if text_file is not None and text_file.is_file():
        from .data import measure_prepare_throughput

        results["prepare"] = measure_prepare_throughput(text_file, "gpt2", repeats=3)
    results["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    print(format_table(results))
    if finetune:
        from .finetune import bench_finetune, format_finetune_table

        results["finetune"] = bench_finetune(quick=quick)
        print(format_finetune_table(results["finetune"]))
    if serve:
        from .serve import bench_serving, serving_table

        results["serving"] = bench_serving()
        print(serving_table(results["serving"]))
    if speculative is not None:
        from .speculative import bench_speculative, speculative_table

        results["speculative"] = bench_speculative(speculative, text, draft=draft)
        print(speculative_table(results["speculative"]))
    if llama_cpp:
        from .llama_cpp import MODELS as LLAMA_CPP_MODELS
        from .llama_cpp import bench_llama_cpp, llama_cpp_table

        # --quick compiles the small model at 2 threads only: a compile takes 30-100 s on 2 cores
        quick_compile = dict(compiled=(2,), compiled_models=(next(iter(LLAMA_CPP_MODELS)),)) if quick else {}
        results["llama_cpp"] = bench_llama_cpp(new_tokens=32 if quick else 64, **quick_compile)
        if results["llama_cpp"] is not None:
            print(llama_cpp_table(results["llama_cpp"]))
        if serve:  # the same model behind llama.cpp's server and minigpt's, 1, 4 and 8 clients
            from .serve_llama_cpp import bench_serving_llama_cpp, serving_llama_cpp_table

            # --quick: serve --compile at 2 threads only
            serving_compiled = {"compiled": (2,)} if quick else {}
            results["serving_llama_cpp"] = bench_serving_llama_cpp(max_tokens=64 if quick else 128, **serving_compiled)
            if results["serving_llama_cpp"] is not None:
                print(serving_llama_cpp_table(results["serving_llama_cpp"]))
    if nanogpt is not None:
        from .nanogpt import RECIPES, bench_nanogpt, format_nanogpt_table

        results["nanogpt"] = bench_nanogpt(
            nanogpt, text, steps=(300,) if quick else (300, 2000), recipes=() if quick else RECIPES
        )
        print(format_nanogpt_table(results["nanogpt"]))
    if budgets:
        from .budgets import bench_budgets, format_budgets_table

        results["budgets"] = bench_budgets(text)
        print(format_budgets_table(results["budgets"]))
    print(json.dumps(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results


def format_table(results: dict) -> str:
    lines = [
        f"machine: {results['machine']}",
        "",
        "| training | float32 eager tokens/s | auto tokens/s (dtype, compile) | speedup |",
        "|---|---|---|---|",
    ]
    for row in results["training"]:
        fast = row["auto"]
        mfu = f", MFU {fast['mfu']:.1%}" if "mfu" in fast else ""
        lines.append(
            f"| {row['name']} | {row['baseline']['tokens_per_s']:,.0f} | {fast['tokens_per_s']:,.0f} "
            f"({fast['dtype']}, compile {str(fast['compile']).lower()}{mfu}) | {row['speedup']:.2f}x |"
        )
    g = results["generation"]
    int8 = f", {g['int8_tokens_per_s']:,.1f} with int8 weights" if g["int8_tokens_per_s"] else ""
    lines += [
        "",
        f"generation ({g['params'] / 1e6:.1f}M params, {g['new_tokens']} new tokens): "
        f"{g['cache_tokens_per_s']:,.1f} tokens/s with the KV cache, {g['recompute_tokens_per_s']:,.1f} without "
        f"({g['cache_speedup']:.1f}x){int8}; ms/token with the cache, first vs last 100: "
        f"{g['cache_first_ms_per_token']:.1f} vs {g['cache_last_ms_per_token']:.1f}; "
        f"8 samples cost {g.get('batch_time_ratio', float('nan')):.2f}x one",
    ]
    p = results["prepare"]
    if p:
        lines.append(
            f"prepare (gpt2, {p['megabytes']:.1f} MB, {p['num_proc']} processes): {p['prepare_mb_s']:.1f} MB/s; "
            f"bare tiktoken {p['bare_mb_s']:.1f} MB/s in one process; ratio to bare x cores {p['ratio']:.2f}"
        )
    s = results["startup"]
    lines.append(
        f"whole process: --help {s['help_s']:.2f} s, train to its first step {s['first_step_s']:.2f} s, "
        f"sample to its first token {s['first_token_s']:.2f} s"
    )
    lines.append(f"peak memory: {results['peak_memory_mb']:,.0f} MB")
    return "\n".join(lines)
