"""Peak memory does not grow with the data: training memory-maps its token files, prepare streams.

    python scripts/bench_memory.py                 # 1 GB of tokens, a ~1 GB corpus for prepare
    python scripts/bench_memory.py --gb 2 --skip-prepare

1. Training: a data folder whose train.bin holds --gb GB of random token ids (written in chunks),
   and a small one (tiny Shakespeare, ~2 MB of tokens). The same small model trains --steps steps on
   each, each run in a fresh process; the peak resident memory (VmHWM) of the two must agree within
   --tolerance-mb, i.e. not depend on the data size: batches are read through np.memmap, never copied.
2. Prepare: a corpus of --gb GB of text (tiny Shakespeare repeated, one document per file) tokenized
   with the gpt2 tokenizer. Its peak (the main process and, separately, the largest worker) must stay
   under --bound-mb: documents are streamed through a bounded window of jobs.

Everything is written to a temporary folder (on --tmp) that is removed at the end. Needs
TIKTOKEN_CACHE_DIR for the offline gpt2 tokenizer (default: ../shared/tiktoken_cache).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=64",
    "train.batch_size=12",
    "train.eval_steps=2",
    "train.eval_interval=1000",
    "train.checkpoint_interval=1000",
    "train.warmup_steps=5",
    "train.progress=false",
    "device=cpu",
    "dtype=float32",
    "compile=false",
]

# Run `minigpt ARGS` in this fresh process, then print its peak memory (and its children's) as JSON.
CHILD = r"""
import json, resource, sys, time
from minigpt.cli import main
start = time.perf_counter()
main(sys.argv[1:])
seconds = time.perf_counter() - start
status = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
          if k in ("VmHWM", "RssAnon", "RssFile")}
print("PEAK " + json.dumps({"vmhwm_mb": status["VmHWM"], "anon_mb": status["RssAnon"], "file_mb": status["RssFile"],
                            "seconds": round(seconds, 1),
                            "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def evict(folder: Path) -> None:
    """Drop a folder's token files from the page cache: a big corpus is mostly on disk, not in memory.

    (Pages a process maps count in its RSS; on kernels with large page-cache folios a freshly written,
    still cached file would be mapped megabytes at a time, which measures the cache, not minigpt.)
    """
    for name in ("train.bin", "val.bin"):
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken_cache"))
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"minigpt {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("PEAK "))
    return json.loads(line.removeprefix("PEAK "))


def write_big_tokens(small: Path, big: Path, gb: float) -> int:
    """A copy of the small data folder whose train.bin is `gb` GB of random ids of its vocabulary."""
    shutil.copytree(small, big)
    meta = json.loads((small / "meta.json").read_text())
    rng = np.random.default_rng(0)
    n_tokens, chunk = int(gb * 1e9) // 2, 1 << 25  # uint16; 64 MB per chunk
    with open(big / "train.bin", "wb") as f:
        for start in range(0, n_tokens, chunk):
            rng.integers(0, meta["vocab_size"], size=min(chunk, n_tokens - start), dtype=np.uint16).tofile(f)
    meta["train_tokens"] = n_tokens
    (big / "meta.json").write_text(json.dumps(meta))
    return n_tokens


def write_corpus(folder: Path, gb: float) -> int:
    """tiny Shakespeare repeated into one file per copy, `gb` GB in all; returns the bytes written."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    folder.mkdir()
    copies = max(1, round(gb * 1e9 / len(text.encode("utf-8"))))
    for i in range(copies):
        (folder / f"doc_{i:05d}.txt").write_text(f"Copy {i}.\n{text}", encoding="utf-8")
    return sum(p.stat().st_size for p in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the big token file and of the corpus")
    parser.add_argument("--steps", type=int, default=40, help="training steps on each data folder")
    parser.add_argument("--tolerance-mb", type=float, default=50.0, help="allowed peak difference, big vs small data")
    parser.add_argument("--bound-mb", type=float, default=1000.0, help="the bound on prepare's peak per process")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the temporary files go")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    need = args.gb * (1 if args.skip_prepare else 2.6) * 1e9 + 0.5e9
    free = shutil.disk_usage(args.tmp).free
    if free < need:
        sys.exit(f"{args.tmp} has {free / 1e9:.1f} GB free; this benchmark needs about {need / 1e9:.1f} GB")
    work = Path(tempfile.mkdtemp(prefix="minigpt-bench-memory-", dir=args.tmp))
    results = {}
    try:
        small, big = work / "small", work / "big"
        measure("prepare", str(SHAKESPEARE), "--tokenizer", "char", "--out", str(small), "--num-proc", "1")
        t = time.perf_counter()
        n_tokens = write_big_tokens(small, big, args.gb)
        print(
            f"wrote {big / 'train.bin'}: {n_tokens:,} tokens, {n_tokens * 2 / 1e9:.2f} GB "
            f"in {time.perf_counter() - t:.1f} s"
        )
        for name, data in (("small", small), ("big", big)):
            tokens = json.loads((data / "meta.json").read_text())["train_tokens"]
            evict(data)
            peak = measure(
                "train",
                "-",
                f"data.dir={data}",
                f"out_dir={work / ('run_' + name)}",
                *MODEL,
                f"train.max_steps={args.steps}",
            )
            results[f"train_{name}"] = {"train_tokens": tokens, "train_bin_mb": round(tokens * 2 / 1e6, 1), **peak}
            print(
                f"train, {name} data ({tokens * 2 / 1e6:,.0f} MB of tokens), {args.steps} steps: "
                f"peak RSS {peak['vmhwm_mb']:.0f} MB; at the end {peak['anon_mb']:.0f} MB private + "
                f"{peak['file_mb']:.0f} MB mapped files ({peak['seconds']} s)"
            )
        difference = results["train_big"]["vmhwm_mb"] - results["train_small"]["vmhwm_mb"]
        results["train_peak_difference_mb"] = round(difference, 1)
        ratio = results["train_big"]["train_bin_mb"] / results["train_small"]["train_bin_mb"]
        print(
            f"difference: {difference:+.0f} MB for {ratio:.0f}x the data "
            f"({'OK' if abs(difference) <= args.tolerance_mb else 'FAIL'}, tolerance {args.tolerance_mb:.0f} MB)"
        )

        if not args.skip_prepare:
            shutil.rmtree(big)
            t = time.perf_counter()
            size = write_corpus(work / "corpus", args.gb)
            print(
                f"wrote a corpus of {size / 1e9:.2f} GB in {len(list((work / 'corpus').iterdir()))} files "
                f"in {time.perf_counter() - t:.1f} s; preparing it with the gpt2 tokenizer ..."
            )
            peak = measure("prepare", str(work / "corpus"), "--tokenizer", "gpt2", "--out", str(work / "gpt2"))
            meta = json.loads((work / "gpt2" / "meta.json").read_text())
            results["prepare"] = {
                "corpus_bytes": size,
                "tokens": meta["train_tokens"] + meta["val_tokens"],
                "cores": os.cpu_count(),
                **peak,
            }
            ok = max(peak["vmhwm_mb"], peak["children_maxrss_mb"]) <= args.bound_mb
            print(
                f"prepare, {size / 1e9:.2f} GB corpus -> {results['prepare']['tokens']:,} tokens in "
                f"{peak['seconds']} s ({size / 1e6 / peak['seconds']:.1f} MB/s): peak RSS {peak['vmhwm_mb']:.0f} MB "
                f"(main process), {peak['children_maxrss_mb']:.0f} MB (largest worker) "
                f"({'OK' if ok else 'FAIL'}, bound {args.bound_mb:.0f} MB)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = abs(results["train_peak_difference_mb"]) > args.tolerance_mb or (
        "prepare" in results
        and max(results["prepare"]["vmhwm_mb"], results["prepare"]["children_maxrss_mb"]) > args.bound_mb
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
