"""Turn a text corpus into token files: train.bin, val.bin and meta.json.

    prepare("shakespeare", "char", "data/shakespeare_char")

SOURCE is, in this order of precedence, a built-in corpus (`shakespeare`,
`pydocs`), a local file, folder (recursively, hidden entries skipped) or glob
of .txt/.md/.jsonl/.json/.parquet files, or a Hugging Face Hub dataset name
`owner/name` whose `owner` is not a local folder (streamed, so `max_chars`
can take a slice of a corpus bigger than the disk). A .txt or .md file is one
document; in json and parquet files every row's `text_column` is one. Files
are read in sorted path order.

The token files are flat arrays of ids (uint16 when the vocabulary fits,
else uint32), read later through np.memmap. The tokenizer's end-of-text
token is appended after each document (a one-document corpus has none).

Validation split (deterministic, and it needs no corpus size up front):
- a corpus of ONE document (tiny Shakespeare): the last `val_fraction` of its
  characters goes to val, the rest to train, like nanoGPT;
- several documents: whole documents go to val, evenly spaced by index:
  document i (counting from 0 in corpus order) is in val exactly when
  floor((i + 1) * val_fraction) > floor(i * val_fraction), i.e. every tenth
  document for 0.1. A stream can be split as it goes, and the fraction is exact.
  The fraction counts documents, not bytes: where document sizes differ, the
  share of the text held out differs too, and the summary reports both. (A
  split by bytes would change the data of every corpus already prepared, and
  the numbers measured on them.)

Safety: nothing is created until the input checked out; everything is
written into a staging folder inside `out` and moved into place at the end,
meta.json last, so a folder with meta.json is always complete and an
interrupted run leaves nothing that looks finished (rerunning works). A
folder that has a meta.json is never written to.

Speed: documents are cut into pieces at places where no tokenizer merges
across, batched into jobs of ~128K characters and encoded by `num_proc`
worker processes, which return numpy arrays (cheap to send back). At most
2 * num_proc jobs are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import MinigptError, first_line, read_user_text
from ..paths import check_output_folder, first_missing
from ..tokenizers import Tokenizer, build_tokenizer, check_spec
from .corpora import BUILTIN_CORPORA, pydocs_documents, shakespeare_path

TEXT_SUFFIXES = (".txt", ".md")  # one file = one document, read by us
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # rows, read by `datasets`
ACCEPTED_FILES = ".txt, .md, .jsonl, .json or .parquet"
DEFAULT_TEXT_COLUMN = "text"
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
STAGING = ".prepare-staging"
JOB_CHARS = 1 << 17  # characters per worker job: IPC costs ~1%, yet small corpora still spread over workers
PIECE_CHARS = 1 << 15  # long documents are cut into pieces of about this size
# A newline that ends a non-blank line, followed by a letter: GPT-2, cl100k and
# o200k pre-tokenization all start a new piece there, so cutting changes no token.
SAFE_CUT = re.compile(r"(?<=\S\n)(?=[^\W\d_])")


@dataclass
class ReadCounts:
    """What one pass over a corpus met besides text: the numbers the summary reports."""

    invalid_bytes: dict[str, int] = field(default_factory=dict)  # non-UTF-8 bytes replaced, per file
    no_text: int = 0  # table rows whose text is null or missing
    empty: int = 0  # documents that are the empty string


@dataclass
class Corpus:
    """Where documents come from. `documents()` starts a fresh pass each call.

    `read` yields the raw documents (None for a row without text) and records
    what it replaced in the ReadCounts it is given.
    """

    source: str
    read: Callable[[ReadCounts], Iterator[str | None]]
    text_column: str | None = None  # the column read from table data; None when there is none
    counts: ReadCounts = field(default_factory=ReadCounts)

    def documents(self, max_chars: int | None = None) -> Iterator[str]:
        self.counts = ReadCounts()
        docs = self._non_empty(self.read(self.counts))
        return docs if max_chars is None else _truncate(docs, max_chars)

    def _non_empty(self, docs: Iterator[str | None]) -> Iterator[str]:
        for doc in docs:
            if doc is None:
                self.counts.no_text += 1
            elif not doc:
                self.counts.empty += 1
            else:
                yield doc


@dataclass
class Job:
    """Text pieces of one split, encoded together by a worker."""

    split: str
    pieces: list[str] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)  # piece ends a document
    chars: int = 0


def prepare(
    source: str,
    tokenizer: str | Tokenizer,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    text_column: str | None = None,
    split: str = "train",
    config: str | None = None,
    num_proc: int | None = None,
    max_chars: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize SOURCE into `out` (train.bin, val.bin, meta.json, tokenizer files); return the meta dict.

    `tokenizer` is a spec (built here) or a Tokenizer, such as the one of a model to fine-tune.
    `text_column` names the column with the text in json/parquet/Hub data
    (default "text"; plain-text files ignore it, with a note). `split` and
    `config` select a Hub dataset's split and configuration (its `name=`);
    `max_chars` stops after that many characters.
    Null, missing and empty texts are dropped and counted in the meta.

    Validation split: one document -> its last `val_fraction` of characters;
    several -> document i goes to val iff floor((i+1)*f) > floor(i*f)
    (evenly spaced whole documents, so `val_fraction` counts documents,
    not bytes; see the module docstring).
    """
    _check_options(val_fraction, num_proc, max_chars)
    if isinstance(tokenizer, str):
        check_spec(tokenizer)
    out = check_out_folder(out)
    corpus = open_corpus(source, text_column=text_column, split=split, config=config)
    head = list(itertools.islice(corpus.documents(max_chars), 2))
    if not head:
        raise MinigptError(f"no text found in {source!r} (every document is empty)")
    single = len(head) == 1
    if isinstance(tokenizer, Tokenizer):  # --tokenizer-from: the tokenizer of the model to fine-tune
        tok = tokenizer
    else:
        if progress and (tokenizer == "char" or tokenizer.startswith("bpe:")):
            print(f"building the {tokenizer} tokenizer from {source} ...", file=sys.stderr)
        tok = build_tokenizer(tokenizer, corpus.documents(max_chars))

    def write(staging: Path) -> tuple[dict, list[str]]:
        meta = _write_splits(corpus, tok, staging, single, val_fraction, max_chars, num_proc, progress)
        meta.update(source=source, split=split, config=config, text_column=corpus.text_column, max_chars=max_chars)
        _check_splits(meta, single, val_fraction)
        return meta, ["train.bin", "val.bin"]

    meta = write_staged(out, tok, write)
    _warn_invalid_bytes(corpus.counts.invalid_bytes)
    return meta


def write_staged(out: Path, tok: Tokenizer, write: Callable[[Path], tuple[dict, list[str]]]) -> dict:
    """Run write(staging), which writes the token files and returns (meta, their names); add the tokenizer's
    files and meta.json; move them all into `out`, meta.json last. On any failure nothing is left behind."""
    new_root = first_missing(out)  # removed again if anything fails
    staging = out / STAGING
    interrupted = staging.is_dir()  # a prepare killed while moving its files in: those files are its own
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        meta, data_files = write(staging)
        meta["tokenizer_files"] = tok.save(staging)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        names = [*data_files, *meta["tokenizer_files"], "meta.json"]
        taken = [name for name in names if (out / name).exists()]
        if taken and not interrupted:  # files a user put there (their own train.bin): never replaced
            raise MinigptError(f"{out} already holds {', '.join(taken)}; choose another --out (nothing was written)")
        for name in names:
            os.replace(staging / name, out / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if new_root is not None:
            shutil.rmtree(new_root, ignore_errors=True)
        raise
    staging.rmdir()
    return meta


def check_out_folder(out: str | os.PathLike) -> Path:
    """The --out folder, unless it cannot be one or already holds prepared data (or token files of its own:
    what every prepare writes is checked here, before any work; the tokenizer's files just before moving in)."""
    out = check_output_folder(out, "--out")
    if (out / "meta.json").exists():
        raise MinigptError(f"{out} already holds prepared data (meta.json); choose another --out or delete it")
    taken = [name for name in ("train.bin", "val.bin") if (out / name).exists()]
    if taken and not (out / STAGING).is_dir():  # no staging folder: no prepare of ours was cut short here
        raise MinigptError(f"{out} already holds {', '.join(taken)}, which minigpt did not write; choose another --out")
    return out


def summary(meta: dict, out: str | os.PathLike) -> str:
    """What `prepare` made, in two lines: documents read and dropped, tokens, vocabulary, the split, the folder."""
    dropped = meta["dropped_documents"]
    n_dropped = dropped["no_text"] + dropped["empty"]
    n_read = meta["documents"] + n_dropped
    read = f"{n_read:,} document{'' if n_read == 1 else 's'} read"
    if n_dropped:
        read += (
            f", {n_dropped:,} dropped ({dropped['no_text']:,} with null or missing text, {dropped['empty']:,} empty)"
        )
    tokens = meta["train_tokens"] + meta["val_tokens"]
    fraction, text_bytes = meta["val_fraction"], meta["train_bytes"] + meta["val_bytes"]
    if fraction == 0:
        held_out = "no val split"
    elif meta["documents"] == 1:
        held_out = f"the last {fraction:.0%} of the text"
    else:  # whole documents: the share of the text follows their sizes, so say both
        held_out = f"{fraction:g} of the documents, {meta['val_bytes'] / max(text_bytes, 1):.1%} of the text"
    return (
        f"prepared {out}: {read}; {tokens:,} tokens, vocabulary {meta['vocab_size']:,} ({meta['tokenizer']})\n"
        f"  train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens ({held_out})"
    )


def _check_options(val_fraction: float, num_proc: int | None, max_chars: int | None) -> None:
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise MinigptError(f"val_fraction must be in [0, 1), e.g. 0.1; got {val_fraction!r}")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise MinigptError(f"num_proc must be a whole number >= 1; got {num_proc!r}")
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise MinigptError(f"max_chars must be a whole number >= 1; got {max_chars!r}")


def _write_splits(
    corpus: Corpus,
    tok: Tokenizer,
    staging: Path,
    single: bool,
    val_fraction: float,
    max_chars: int | None,
    num_proc: int | None,
    progress: bool,
) -> dict:
    """Stream the corpus through the workers into staging/{train,val}.bin; return the counts."""
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    eot = None if single else tok.eot_token
    num_proc = num_proc or os.cpu_count() or 1
    segments = _segments(corpus.documents(max_chars), val_fraction, single)
    counts = {"train_tokens": 0, "val_tokens": 0, "train_bytes": 0, "val_bytes": 0, "documents": 0}
    start = time.perf_counter()
    with (
        _worker_pool(tok, eot, dtype, num_proc) as pool,  # first: fork before tqdm starts a thread
        open(staging / "train.bin", "wb") as train_file,
        open(staging / "val.bin", "wb") as val_file,
        tqdm(desc=f"tokenizing {corpus.source}", unit=" docs", disable=not progress, file=sys.stderr) as bar,
    ):
        files = {"train": train_file, "val": val_file}
        for split, tokens, nbytes, ndocs in _encode_jobs(_jobs(segments), pool, window_size=2 * num_proc):
            tokens.tofile(files[split])
            counts[f"{split}_tokens"] += len(tokens)
            counts[f"{split}_bytes"] += nbytes
            counts["documents"] += ndocs
            megabytes = (counts["train_bytes"] + counts["val_bytes"]) / 1e6
            speed = megabytes / (time.perf_counter() - start)
            bar.set_postfix_str(f"{megabytes:.1f} MB, {speed:.1f} MB/s", refresh=False)
            bar.update(ndocs)
    return {
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "eot_token": tok.eot_token,
        "dtype": np.dtype(dtype).name,
        **counts,
        "val_fraction": val_fraction,
        "invalid_utf8_bytes": sum(corpus.counts.invalid_bytes.values()),
        "dropped_documents": {"no_text": corpus.counts.no_text, "empty": corpus.counts.empty},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "minigpt_version": _version(),
    }


def _check_splits(meta: dict, single: bool, val_fraction: float) -> None:
    if val_fraction == 0:
        return
    if meta["train_tokens"] == 0:
        raise MinigptError(f"the train split is empty: the corpus is too small for val_fraction {val_fraction}")
    if meta["val_tokens"] == 0:
        n = meta["documents"]
        hint = "" if single else f" (1 in {1 / val_fraction:.3g} documents goes to val; the corpus has {n})"
        raise MinigptError(
            f"the val split is empty{hint}; raise --val-fraction (at least {1 / max(n, 2):.2g}) or add data"
        )


def _segments(docs: Iterator[str], val_fraction: float, single: bool) -> Iterator[tuple[str, str, bool]]:
    """(split, text, ends_document) in corpus order, by the rule in the module docstring."""
    if single:
        text = next(docs)
        cut = int(len(text) * (1 - val_fraction))
        yield "train", text[:cut], False
        yield "val", text[cut:], True
        return
    for i, doc in enumerate(docs):
        yield ("val" if in_val(i, val_fraction) else "train"), doc, True


def in_val(index: int, val_fraction: float) -> bool:
    """Whether document `index` (from 0, in corpus order) goes to the val split: evenly spaced, exact fraction."""
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def _jobs(segments: Iterable[tuple[str, str, bool]]) -> Iterator[Job]:
    """Group text pieces into jobs of about JOB_CHARS characters, one split per job, in order."""
    pending = {"train": Job("train"), "val": Job("val")}
    for split, text, ends_document in segments:
        pieces = _pieces(text)
        for k, piece in enumerate(pieces):
            job = pending[split]
            job.pieces.append(piece)
            job.ends.append(ends_document and k == len(pieces) - 1)
            job.chars += len(piece)
            if job.chars >= JOB_CHARS:
                yield job
                pending[split] = Job(split)
    yield from (job for job in pending.values() if job.pieces)


def _pieces(text: str) -> list[str]:
    """Cut a long text at SAFE_CUT places roughly every PIECE_CHARS characters.

    This lets one big document (a whole book) be encoded by several workers;
    the tokens are identical to encoding it whole.
    """
    pieces, start = [], 0
    while len(text) - start > 2 * PIECE_CHARS:
        match = SAFE_CUT.search(text, start + PIECE_CHARS)
        if match is None:
            break
        pieces.append(text[start : match.start()])
        start = match.start()
    pieces.append(text[start:])
    return pieces


# --- workers -----------------------------------------------------------------

_worker: tuple[Tokenizer, int | None, type] | None = None


def _init_worker(tok: Tokenizer, eot: int | None, dtype: type) -> None:
    global _worker
    _worker = (tok, eot, dtype)


def _encode_job(job: Job) -> tuple[str, np.ndarray, int, int]:
    """Encode a job's pieces, appending the end-of-text token after each document."""
    tok, eot, dtype = _worker
    parts = []
    for ids, ends in zip(tok.encode_arrays(job.pieces), job.ends):
        parts.append(ids)
        if ends and eot is not None:
            parts.append(np.array([eot], dtype=np.uint32))
    tokens = np.concatenate(parts).astype(dtype)
    nbytes = sum(len(piece.encode("utf-8")) for piece in job.pieces)
    return job.split, tokens, nbytes, sum(job.ends)


def _worker_pool(
    tok: Tokenizer, eot: int | None, dtype: type, num_proc: int
) -> contextlib.AbstractContextManager[Pool | None]:
    """A pool of num_proc workers; None for one process (encode in this one)."""
    if num_proc == 1:
        _init_worker(tok, eot, dtype)
        return contextlib.nullcontext()
    return multiprocessing.Pool(num_proc, _init_worker, (tok, eot, dtype))


def _encode_jobs(
    jobs: Iterator[Job], pool: Pool | None, window_size: int
) -> Iterator[tuple[str, np.ndarray, int, int]]:
    """Results of `_encode_job` in job order.

    Rather than Pool.imap (whose feeder thread would read the whole corpus
    ahead into memory), keep a window of at most window_size jobs in flight.
    """
    if pool is None:
        yield from map(_encode_job, jobs)
        return
    window: deque = deque()
    for job in jobs:
        window.append(pool.apply_async(_encode_job, (job,)))
        if len(window) >= window_size:
            yield window.popleft().get()
    while window:
        yield window.popleft().get()


# --- sources -----------------------------------------------------------------


def open_corpus(
    source: str,
    *,
    text_column: str | None = None,
    split: str = "train",
    config: str | None = None,
) -> Corpus:
    """Resolve SOURCE: a built-in name first, then a local path or glob, then a Hub name.

    `text_column` (default "text") is read from json/parquet/Hub rows; naming one for a corpus
    without such rows prints a note that it is ignored.
    """
    column = text_column or DEFAULT_TEXT_COLUMN
    if source == "shakespeare":
        corpus = _files_corpus(source, [shakespeare_path()], column)
    elif source == "pydocs":
        corpus = Corpus(source, lambda counts: pydocs_documents())
    elif (files := _local_files(source)) is not None:
        corpus = _files_corpus(source, files, column)
    elif _looks_like_hub_name(source):

        def hub_texts(counts: ReadCounts) -> Iterator[str | None]:
            return _texts(_hub_rows(source, config, split), column, source, lambda i: f"{source} row {i + 1}")

        return Corpus(source, hub_texts, text_column=column)
    else:
        raise MinigptError(
            f"source {source!r} not found: give a file, folder or glob of {ACCEPTED_FILES} files, "
            f"a built-in corpus ({', '.join(BUILTIN_CORPORA)}) or a Hub dataset name such as roneneldan/TinyStories"
        )
    if text_column is not None and corpus.text_column is None:
        print(
            f"note: --text-column {text_column} is ignored: {source} holds no .jsonl/.json/.parquet rows "
            "(each text file is one document)",
            file=sys.stderr,
        )
    return corpus


def _looks_like_hub_name(source: str) -> bool:
    """owner/name, not a file name, and `owner` is not a local folder (then it is a mistyped path)."""
    path = Path(source)
    return (
        bool(HUB_NAME.fullmatch(source))
        and path.suffix.lower() not in (*TEXT_SUFFIXES, *TABLE_SUFFIXES)
        and not path.parent.is_dir()
    )


def _local_files(source: str) -> list[Path] | None:
    """The corpus files SOURCE names, in sorted order; None if it names no local path."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (*TEXT_SUFFIXES, *TABLE_SUFFIXES):
            raise MinigptError(f"unsupported file type {path.suffix!r} for {source}; accepted: {ACCEPTED_FILES}")
        return [path]
    if path.is_dir():
        candidates = [p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    elif path.exists():  # reading a named pipe would block, /dev/zero never end
        raise MinigptError(f"{source} is not a regular file or a folder (a pipe or a device?); give a file")
    elif glob.has_magic(source):
        candidates = [Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True)]
    else:
        return None
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, *TABLE_SUFFIXES))
    if not files:
        raise MinigptError(f"no {ACCEPTED_FILES} files found in {source!r}")
    return files


def _files_corpus(source: str, files: list[Path], text_column: str) -> Corpus:
    """Local files in sorted order.

    Each json/parquet file is read on its own: `datasets` reading several at once casts them to the
    first file's column types, and turns a file whose values are not all strings into JSON text
    (quotes included) instead of failing. On its own, every file's rows come back as written.
    """

    def read(counts: ReadCounts) -> Iterator[str | None]:
        for path in files:
            kind = _file_kind(path)
            if kind == "text":
                yield read_user_text(path, invalid=counts.invalid_bytes)
            else:
                yield from _table_texts(kind, path, text_column)

    has_tables = any(_file_kind(p) != "text" for p in files)
    return Corpus(source, read, text_column=text_column if has_tables else None)


def _file_kind(path: Path) -> str:
    return TABLE_SUFFIXES.get(path.suffix.lower(), "text")


def _warn_invalid_bytes(invalid: dict[str, int]) -> None:
    if invalid:
        first = next(iter(invalid))
        print(
            f"warning: {sum(invalid.values())} bytes that are not UTF-8 were replaced with U+FFFD "
            f"in {len(invalid)} file(s), first {first}",
            file=sys.stderr,
        )


def open_rows(source: str, *, split: str = "train", config: str | None = None) -> Iterator[dict]:
    """The rows of json/jsonl/parquet files (a file, folder or glob) or of a Hub dataset, streamed."""
    files = _local_files(source)
    if files is not None:
        texts = [p for p in files if _file_kind(p) == "text"]
        if texts:
            raise MinigptError(f"{texts[0]} is plain text; rows need .jsonl, .json or .parquet files")
        for path in files:
            yield from _table_rows(_file_kind(path), path, lambda rows: rows)
    elif _looks_like_hub_name(source):
        yield from _hub_rows(source, config, split)
    else:
        raise MinigptError(f"source {source!r} not found: give a .jsonl, .json or .parquet file, folder or glob")


def _table_texts(kind: str, path: Path, text_column: str) -> Iterator[str | None]:
    """The text column of one json/jsonl/parquet file, streamed by `datasets`."""
    return _table_rows(kind, path, lambda rows: _texts(rows, text_column, str(path), lambda i: f"{path} row {i + 1}"))


def _table_rows(kind: str, path: Path, read: Callable[[Iterable[dict]], Iterator]) -> Iterator:
    """read(rows) over one json/jsonl/parquet file streamed by `datasets`, its errors as one line."""
    from datasets import load_dataset
    from datasets.utils import logging as datasets_logging

    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # its error log line would repeat ours
    if kind == "json":
        _check_json_rows(path)
    try:
        rows = load_dataset(kind, data_files=[str(path)], split="train", streaming=True)
        yield from read(rows)
    except MinigptError:
        raise
    except Exception as e:  # malformed files: report which, in one line
        raise MinigptError(f"could not read {path} as {kind}: {first_line(e)}") from None
    finally:
        datasets_logging.set_verbosity(verbosity)


def _check_json_rows(path: Path) -> None:
    """What `datasets` reports obscurely, said plainly: a file with no rows, or rows that are not objects.
    Only the first row is read: a .jsonl line, or the start of a .json file's array."""
    with path.open("rb") as file:
        head = file.read(1 << 16).lstrip()
    if not head:
        raise MinigptError(f"{path} is empty: it holds no rows (one JSON object per line, or an array of them)")
    first = head.split(b"\n", 1)[0].strip()
    if path.suffix.lower() == ".jsonl" or not first.startswith(b"["):
        try:
            row = json.loads(first)
        except ValueError:
            return  # a malformed line: datasets names the problem
        if not isinstance(row, dict):
            raise MinigptError(f'{path} row 1 is {type(row).__name__}, not a JSON object such as {{"text": "..."}}')


def _hub_rows(name: str, config: str | None, split: str) -> Iterator[dict]:
    """Rows of a Hub dataset, streamed (nothing is downloaded in full)."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    try:
        yield from load_dataset(name, name=config, split=split, streaming=True)
    except ConnectionError:
        raise MinigptError(
            f"cannot reach the Hugging Face Hub for dataset {name!r} (network unreachable or HF_DATASETS_OFFLINE=1); "
            f"download its .jsonl/.parquet files where there is network and pass their folder as SOURCE "
            f"(if you meant a local path: it does not exist)"
        ) from None
    except DatasetNotFoundError:
        raise MinigptError(f"dataset {name!r} was not found on the Hugging Face Hub (check the name)") from None
    except ValueError as e:  # unknown config or split
        raise MinigptError(f"dataset {name!r}: {first_line(e)}") from None


def _texts(rows: Iterable[dict], text_column: str, where: str, name_row: Callable[[int], str]) -> Iterator[str | None]:
    """The text column of each row (None where it is null or missing); a value that is not text names its row."""
    for i, row in enumerate(rows):
        text = row.get(text_column)
        if i == 0 and text_column not in row:
            columns = ", ".join(f"{c!r} ({type(v).__name__})" for c, v in row.items())
            raise MinigptError(
                f"{where}: column {text_column!r} does not exist; columns: {columns}; choose one with --text-column"
            )
        if text is not None and not isinstance(text, str):
            value = repr(text) if len(repr(text)) <= 40 else repr(text)[:37] + "..."
            raise MinigptError(
                f"{name_row(i)}: column {text_column!r} holds {value} ({type(text).__name__}), not text; "
                "fix that row, or choose the text column with --text-column"
            )
        yield text


def _truncate(docs: Iterator[str], max_chars: int) -> Iterator[str]:
    """Stop after max_chars characters (the last document is cut short)."""
    left = max_chars
    for doc in docs:
        yield doc[:left]
        left -= len(doc)
        if left <= 0:
            return


def _version() -> str:
    import minigpt

    return getattr(minigpt, "__version__", "unknown")
