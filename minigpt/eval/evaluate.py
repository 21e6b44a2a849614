"""Loss, perplexity and bits per byte on held-out text: `minigpt eval PATH`.

    model, tokenizer, info = load_model("out/shakespeare_char")
    evaluate(model, tokenizer, data_dir="data/shakespeare_char")
    # {'loss': 1.47, 'perplexity': 4.35, 'bits_per_byte': 2.12, 'tokens': 111539, 'bytes': 111539, ...}

Unlike the val loss printed during training (a fixed sample of windows), this covers the WHOLE
val split: it is cut into block_size windows and every token but the first is predicted exactly
once, so the numbers are exact and the same on every run.

Loss and perplexity depend on the tokenizer (a char model predicts easier, smaller units than a
BPE model). Bits per byte does not, so models with different tokenizers can be compared on the
same text. Exactly: over the predicted tokens that stand for text (every token but the first;
special tokens such as end-of-text are left out, since they are no text),

    bits_per_byte = (sum of their losses in nats) / ln 2 / (sum of their UTF-8 bytes)
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.batches import (
    IGNORE_INDEX,
    chat_files,
    check_token_ids,
    count_eval_batches,
    eval_windows,
    load_meta,
    open_tokens,
)
from ..device import inference, resolve_device, resolve_dtype
from ..errors import MinigptError, read_user_text
from ..loader import load_model
from ..tokenizers import check_same_vocabulary, load_tokenizer


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
    tokens (how many were predicted), bytes (the UTF-8 bytes those tokens stand for) and
    bits_per_byte (see the module's docstring). The model is left in the mode it was in.
    """
    if (data_dir is None) == (text_file is None):
        raise MinigptError("evaluate needs exactly one of data_dir or text_file")
    if batch_size < 1:
        raise MinigptError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    block_size = model.config.block_size
    if data_dir is not None:
        meta = _check_data(data_dir, tokenizer)
        n_tokens, source = meta["val_tokens"], f"{data_dir} (val split)"
        if n_tokens < 2:
            raise MinigptError(f"the val split of {data_dir} holds {n_tokens} token(s); at least 2 are needed")
        check_token_ids(Path(data_dir) / "val.bin", meta["dtype"], model.config.vocab_size)
        tokens = open_tokens(Path(data_dir) / "val.bin", meta["dtype"])
        chat = chat_files(data_dir, "val")  # chat data: only the answers are predicted
        mask = open_tokens(chat["mask_path"], "uint8", len(tokens)) if chat else None
    else:
        tokens, mask = _encode_file(text_file, tokenizer), None
        n_tokens, source = len(tokens), str(text_file)
    batches = eval_windows(tokens, block_size, batch_size, device=device, mask=mask)
    n_batches = count_eval_batches(n_tokens, block_size, batch_size)
    bar = tqdm(batches, total=n_batches, desc="eval", unit="batch", file=sys.stderr, disable=not progress)
    byte_counts = torch.as_tensor(tokenizer.token_byte_counts(), device=device)
    with inference(model, device, dtype):
        total, count, text_loss, n_bytes = _sum_losses(model, bar, byte_counts)
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # min(): a diverged model's is huge, not an OverflowError
        "bits_per_byte": text_loss / math.log(2) / n_bytes if n_bytes else math.nan,
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


def _encode_file(path, tokenizer) -> np.ndarray:
    """A text file's token ids."""
    text = read_user_text(path, "text file")
    if not text:
        raise MinigptError(f"text file {path} is empty")
    tokens = np.array(tokenizer.encode(text), dtype=np.int64)  # a char tokenizer names unknown characters
    if len(tokens) < 2:
        raise MinigptError(f"text file {path} is a single token; at least 2 are needed to predict one")
    return tokens


def _sum_losses(model, batches, byte_counts: torch.Tensor) -> tuple[float, int, float, int]:
    """Over every target that is not padding: (summed loss in nats, how many), and over those that
    stand for text: (summed loss in nats, their UTF-8 bytes)."""
    total, count, text_loss, n_bytes = 0.0, 0, 0.0, 0
    for x, y in batches:
        logits, _ = model(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        targets = y.flatten()
        real = targets != IGNORE_INDEX
        target_bytes = torch.where(real, byte_counts[targets.clamp(min=0)], 0)
        total += losses.sum().item()
        count += int(real.sum())
        text_loss += losses[target_bytes > 0].sum().item()
        n_bytes += int(target_bytes.sum())
    return total, count, text_loss, n_bytes


def run_eval(
    path: str,
    *,
    data: str | None = None,
    text_file: str | None = None,
    batch_size: int = 8,
    as_json: bool = False,
    latest: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    quantize: str | None = None,
) -> None:
    """`minigpt eval`: a short table, or one JSON object with as_json; the progress bar on stderr."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model, tokenizer, info = load_model(path, latest=latest, device=torch_device, quantize=quantize)
    data_dir = data
    if data_dir is None and text_file is None:
        if info.record is None or info.record.data_dir is None:
            raise MinigptError(f"{path} records no data folder; pass --data DIR or --text-file FILE")
        data_dir = info.record.data_dir
        if not Path(data_dir).is_dir():
            raise MinigptError(
                f"the data folder recorded in the checkpoint, {data_dir}, does not exist here; "
                "pass --data DIR or --text-file FILE"
            )
    result = evaluate(
        model,
        tokenizer,
        data_dir=data_dir,
        text_file=text_file,
        batch_size=batch_size,
        device=torch_device,
        dtype=torch_dtype,
    )
    if as_json:
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
