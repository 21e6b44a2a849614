"""Throughput of `minigpt prepare` against bare tiktoken, on tiny Shakespeare and a 100 MB corpus.

    python scripts/bench_prepare.py --text path/to/tinyshakespeare.txt [--synthetic-mb 100] [--num-proc N]

The synthetic corpus is tiny Shakespeare repeated as many documents, each
starting at a different line, written to a temporary folder of .txt files.
"""

import argparse
import os
import tempfile
from pathlib import Path

from minigpt.bench.data import measure_prepare_throughput
from minigpt.data.corpora import shakespeare_path


def write_synthetic(text: str, folder: Path, megabytes: int) -> None:
    lines = text.splitlines(keepends=True)
    size, i = 0, 0
    while size < megabytes * 1e6:
        shift = (i * 7919) % len(lines)  # each document starts at a different line
        doc = "".join(lines[shift:] + lines[:shift])
        (folder / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
        size, i = size + len(doc.encode("utf-8")), i + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=None, help="tiny Shakespeare (default: the copy in minigpt)")
    parser.add_argument("--synthetic-mb", type=int, default=100)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args()
    text_path = args.text or shakespeare_path()
    load_before = os.getloadavg()[0]  # other work on the machine skews wall-clock numbers

    rows = [("tiny shakespeare", measure_prepare_throughput(text_path, args.tokenizer, args.num_proc, repeats=3))]
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(text_path.read_text(encoding="utf-8"), Path(tmp), args.synthetic_mb)
        synthetic = measure_prepare_throughput(tmp, args.tokenizer, args.num_proc)
        rows.append((f"synthetic {args.synthetic_mb} MB", synthetic))

    print(
        f"tokenizer {args.tokenizer}, num_proc {args.num_proc} of {os.cpu_count()} cores, "
        f"load average {load_before:.1f} before the run; MB = 10^6 bytes of UTF-8 text"
    )
    print("bare/threads/prepare in MB/s; ratio = prepare / (bare x num_proc); cpu eff = bare / prepare CPU seconds")
    print(f"{'corpus':<20}{'MB':>7}{'docs':>6}{'bare':>7}{'threads':>9}{'prepare':>9}{'ratio':>7}{'cpu eff':>9}")
    for name, r in rows:
        print(
            f"{name:<20}{r['megabytes']:>7.1f}{r['documents']:>6}{r['bare_mb_s']:>7.1f}{r['bare_threads_mb_s']:>9.1f}"
            f"{r['prepare_mb_s']:>9.1f}{r['ratio']:>7.2f}{r['cpu_efficiency']:>9.2f}"
        )


if __name__ == "__main__":
    main()
