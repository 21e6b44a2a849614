"""Loss, perplexity and bits per byte on held-out text: `minigpt eval PATH`.

    model, tokenizer, meta = load_model("out/shakespeare_char")
    evaluate(model, tokenizer, data_dir="data/shakespeare_char")
    # {'loss': 1.47, 'perplexity': 4.35, 'bits_per_byte': 2.12, 'tokens': 111539, 'bytes': 111540, ...}

Unlike the val loss printed during training (a fixed sample of windows), this covers the WHOLE
val split: it is cut into block_size windows and every token but the first is predicted exactly
once, so the numbers are exact and the same on every run.

Loss and perplexity depend on the tokenizer (a char model predicts easier, smaller units than a
BPE model). Bits per byte does not: the total loss in bits divided by the UTF-8 bytes of the
text, so models with different tokenizers can be compared on the same text.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_model
from .data import IGNORE_INDEX, count_eval_batches, eval_windows, load_meta, open_tokens
from .device import autocast, resolve_device, resolve_dtype
from .errors import MinigptError, read_user_text
from .tokenizers import check_same_vocabulary, load_tokenizer


def evaluate(
    model,
    tokenizer,
    *,
    data_dir: str | Path | None = None,
    text_file: str | Path | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Evaluate on a prepared data folder's val split or on a text file (exactly one of them).

    Returns loss (mean cross-entropy per predicted token, in nats), perplexity (exp(loss)),
    bits_per_byte (loss * tokens / (bytes * ln 2)), tokens (how many were predicted) and bytes.
    """
    if (data_dir is None) == (text_file is None):
        raise MinigptError("evaluate needs exactly one of data_dir or text_file")
    if batch_size < 1:
        raise MinigptError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    block_size = model.config.block_size
    if data_dir is not None:
        meta = _check_data(data_dir, tokenizer)
        n_tokens, n_bytes, source = meta["val_tokens"], meta["val_bytes"], f"{data_dir} (val split)"
        if n_tokens < 2:
            raise MinigptError(f"the val split of {data_dir} holds {n_tokens} token(s); at least 2 are needed")
        tokens = open_tokens(Path(data_dir) / "val.bin", meta["dtype"])
    else:
        tokens, n_bytes = _encode_file(text_file, tokenizer)
        n_tokens, source = len(tokens), str(text_file)
    batches = eval_windows(tokens, block_size, batch_size, device=device)
    n_batches = count_eval_batches(n_tokens, block_size, batch_size)
    total, count = _total_loss(
        model,
        tqdm(batches, total=n_batches, desc="eval", unit="batch", file=sys.stderr, disable=not progress),
        device,
        dtype,
    )
    loss = total / count
    # min(): a diverged model's perplexity is huge, not an OverflowError
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": total / (n_bytes * math.log(2)),
        "tokens": count,
        "bytes": n_bytes,
        "source": source,
    }


def _check_data(data_dir, tokenizer) -> dict:
    """The data folder's meta, after checking it was tokenized exactly as the model expects."""
    meta = load_meta(data_dir)
    if meta["tokenizer"] != tokenizer.spec:
        raise MinigptError(
            f"data in {data_dir} was prepared with tokenizer {meta['tokenizer']!r} "
            f"but the model uses {tokenizer.spec!r}; evaluate on data prepared with {tokenizer.spec!r}"
        )
    check_same_vocabulary(load_tokenizer(meta["tokenizer"], data_dir), tokenizer, f"data in {data_dir}")
    return meta


def _encode_file(path, tokenizer) -> tuple[np.ndarray, int]:
    """A text file's token ids and UTF-8 byte count."""
    text = read_user_text(path, "text file")
    if not text:
        raise MinigptError(f"text file {path} is empty")
    tokens = np.array(tokenizer.encode(text), dtype=np.int64)  # a char tokenizer names unknown characters
    if len(tokens) < 2:
        raise MinigptError(f"text file {path} is a single token; at least 2 are needed to predict one")
    return tokens, len(text.encode("utf-8"))


@torch.inference_mode()
def _total_loss(model, batches, device, dtype) -> tuple[float, int]:
    """Summed cross-entropy (nats) over every target that is not padding, and how many there were."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        with autocast(device, dtype):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((y != IGNORE_INDEX).sum())
    return total, count


def run_eval(args) -> None:
    """`minigpt eval`: a short table, or one JSON object with --json; the progress bar on stderr."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer, meta = load_model(args.path, latest=args.latest, device=device)
    data_dir = args.data
    if data_dir is None and args.text_file is None:
        data_dir = meta.get("config", {}).get("data", {}).get("dir")
        if data_dir is None:
            raise MinigptError(f"{args.path} records no data folder; pass --data DIR or --text-file FILE")
        if not Path(data_dir).is_dir():
            raise MinigptError(
                f"the data folder recorded in the checkpoint, {data_dir}, does not exist here; "
                "pass --data DIR or --text-file FILE"
            )
    result = evaluate(
        model,
        tokenizer,
        data_dir=data_dir,
        text_file=args.text_file,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
    )
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        ("source", result["source"]),
        ("tokens", f"{result['tokens']:,}"),
        ("bytes", f"{result['bytes']:,}"),
        ("loss", f"{result['loss']:.4f}"),
        ("perplexity", f"{result['perplexity']:.3f}"),
        ("bits per byte", f"{result['bits_per_byte']:.4f}"),
    ]
    for name, value in rows:
        print(f"{name:<14}{value}")
