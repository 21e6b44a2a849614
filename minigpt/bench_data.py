"""How fast is `prepare` compared with bare tiktoken? (used by scripts/bench_prepare.py)

The yardstick is tiktoken's `encode_ordinary_batch` on the same documents
in one process and one thread: the pure tokenization cost per core. An ideal
`prepare` on `num_proc` cores would reach bare x num_proc; the gap is what
reading, splitting, inter-process traffic and writing cost.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

from minigpt.prepare import open_corpus, prepare
from minigpt.tokenizers import TiktokenTokenizer, build_tokenizer

BATCH_DOCS = 16  # bare baseline: documents per encode call (bounded memory)


def measure_prepare_throughput(text_path: str | os.PathLike, tokenizer: str = "gpt2", num_proc: int | None = None) -> dict:
    """MB/s of `prepare` and of bare tiktoken on the .txt file or folder at text_path."""
    num_proc = num_proc or os.cpu_count() or 1
    tok = build_tokenizer(tokenizer)
    assert isinstance(tok, TiktokenTokenizer), "the bare baseline needs a tiktoken tokenizer"
    docs = list(open_corpus(str(text_path)).documents())
    megabytes = sum(len(doc.encode("utf-8")) for doc in docs) / 1e6

    bare_s = _time(lambda: _encode_all(tok, docs, num_threads=1))
    threads_s = _time(lambda: _encode_all(tok, docs, num_threads=num_proc))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out")
        prepare_s = _time(lambda: prepare(str(text_path), tokenizer, out, num_proc=num_proc, progress=False))
    return {
        "megabytes": megabytes,
        "documents": len(docs),
        "num_proc": num_proc,
        "bare_mb_s": megabytes / bare_s,
        "bare_threads_mb_s": megabytes / threads_s,
        "prepare_mb_s": megabytes / prepare_s,
        "ratio": (megabytes / prepare_s) / (megabytes / bare_s * num_proc),
    }


def _encode_all(tok: TiktokenTokenizer, docs: list[str], num_threads: int) -> None:
    it = iter(docs)
    while batch := list(itertools.islice(it, BATCH_DOCS)):
        tok.encoding.encode_ordinary_batch(batch, num_threads=num_threads)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
