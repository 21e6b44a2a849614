"""How fast is `prepare` compared with bare tiktoken? (used by scripts/bench_prepare.py and `minigpt bench`)

The yardstick is tiktoken's `encode_ordinary_batch` on the same documents
in one process and one thread: the pure tokenization cost per core. An ideal
`prepare` on `num_proc` cores would reach bare x num_proc; the gap is what
reading, splitting, inter-process traffic and writing cost.
"""

from __future__ import annotations

import itertools
import os
import resource
import tempfile
import time
from pathlib import Path

from ..data.prepare import open_corpus, prepare
from ..errors import MinigptError
from ..tokenizers import TiktokenTokenizer, build_tokenizer

BATCH_DOCS = 16  # bare baseline: documents per encode call (bounded memory)


def measure_prepare_throughput(
    text_path: str | os.PathLike, tokenizer: str = "gpt2", num_proc: int | None = None, repeats: int = 1
) -> dict:
    """MB/s of `prepare` and of bare tiktoken on the .txt file or folder at text_path.

    Each timing is the best of `repeats` runs. Wall-clock ratios need an idle
    machine; `cpu_efficiency` (bare CPU seconds / prepare's CPU seconds, its
    workers included) measures prepare's overhead even on a busy one.
    """
    num_proc = num_proc or os.cpu_count() or 1
    tok = build_tokenizer(tokenizer)
    if not isinstance(tok, TiktokenTokenizer):
        raise MinigptError(f"tokenizer {tokenizer!r} has no bare-tiktoken baseline; use gpt2, cl100k_base or bpe:N")
    docs = list(open_corpus(str(text_path)).documents())
    megabytes = sum(len(doc.encode("utf-8")) for doc in docs) / 1e6

    bare_s, bare_cpu = _best(repeats, lambda: _encode_all(tok, docs, num_threads=1))
    threads_s, _ = _best(repeats, lambda: _encode_all(tok, docs, num_threads=num_proc))

    def run_prepare():
        with tempfile.TemporaryDirectory() as tmp:
            prepare(str(text_path), tokenizer, Path(tmp, "out"), num_proc=num_proc, progress=False)

    prepare_s, prepare_cpu = _best(repeats, run_prepare)
    return {
        "megabytes": megabytes,
        "documents": len(docs),
        "num_proc": num_proc,
        "bare_mb_s": megabytes / bare_s,
        "bare_threads_mb_s": megabytes / threads_s,
        "prepare_mb_s": megabytes / prepare_s,
        "ratio": bare_s / (prepare_s * num_proc),  # prepare / (bare x cores)
        "cpu_efficiency": bare_cpu / prepare_cpu,
    }


def _encode_all(tok: TiktokenTokenizer, docs: list[str], num_threads: int) -> None:
    it = iter(docs)
    while batch := list(itertools.islice(it, BATCH_DOCS)):
        tok.encoding.encode_ordinary_batch(batch, num_threads=num_threads)


def _best(repeats: int, fn) -> tuple[float, float]:
    """Shortest (wall seconds, CPU seconds of this process and its finished children) of `repeats` runs."""
    runs = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        fn()
        runs.append((time.perf_counter() - start, _cpu_seconds() - cpu_start))
    return min(runs)


def _cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
