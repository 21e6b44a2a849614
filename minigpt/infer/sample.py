"""Generate text from a trained model: `minigpt sample PATH --prompt "..."`.

    model, tokenizer, _ = load_model("out/shakespeare_char")
    texts = generate_text(model, tokenizer, "ROMEO:", num_samples=3, seed=1337, stop=["\\n\\n"])

Sampling controls (temperature, top-k, top-p) are GPT.generate's; this module adds what a person
at a terminal needs around them: prompts from text or files, several samples in one batch,
stop strings, streaming, reproducible seeds, and readable errors.

Decoding is incremental but exact: a byte-level BPE token can end in the middle of a multi-byte
UTF-8 character, which then decodes to U+FFFD. Such tokens are held back until the character is
complete, so the text built piece by piece equals decoding all the ids at once.
"""

import math
import re
import sys
from typing import TextIO

import torch

from ..device import inference, resolve_device, resolve_dtype
from ..errors import MinigptError, read_user_text
from ..loader import load_model

REPLACEMENT_CHAR = "\ufffd"  # what an incomplete UTF-8 character decodes to


def check_sampling_options(
    *,
    num_samples: int = 1,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> None:
    """Raise MinigptError for a value outside what generation accepts (NaN included)."""
    checks = [
        (num_samples >= 1, f"--num-samples must be at least 1, got {num_samples}"),
        (max_new_tokens >= 0, f"--max-new-tokens must be 0 or more, got {max_new_tokens}"),
        (
            temperature >= 0 and math.isfinite(temperature),
            f"--temperature must be 0 (greedy) or a positive number, got {temperature}",
        ),
        (top_k is None or top_k >= 1, f"--top-k must be at least 1, got {top_k}"),
        (top_p is None or 0 < top_p <= 1, f"--top-p must be in (0, 1], got {top_p}"),
        (seed is None or 0 <= seed < 2**64, f"--seed must be a whole number from 0 to 2**64 - 1, got {seed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise MinigptError(message)


def read_prompt(prompt: str, prompt_file: str | None) -> str:
    """The prompt text: --prompt, the contents of --prompt-file (UTF-8, used as is), or ""."""
    if prompt_file is None:
        return prompt
    return read_user_text(prompt_file, "prompt file")


def encode_prompt(tokenizer, prompt: str, block_size: int) -> list[int]:
    """Prompt text -> ids the model can continue.

    An empty prompt starts a new document: the end-of-text token where the tokenizer has one, else
    a newline (a char model of a single text such as tiny Shakespeare has no end-of-text token, and
    a line start is the most neutral place in it), else token 0. A prompt longer than block_size
    keeps its last block_size tokens, with a note on stderr: the model cannot see further back.
    """
    if not prompt:
        return [_document_start(tokenizer)]
    ids = tokenizer.encode(prompt)  # a char tokenizer names characters it never saw
    if len(ids) > block_size:
        print(
            f"note: the prompt has {len(ids)} tokens; keeping its last {block_size} (the model's block_size)",
            file=sys.stderr,
        )
        ids = ids[-block_size:]
    return ids


def _document_start(tokenizer) -> int:
    if tokenizer.eot_token is not None:
        return tokenizer.eot_token
    try:
        newline = tokenizer.encode("\n")
    except MinigptError:  # a char vocabulary without "\n"
        return 0
    return newline[0] if len(newline) == 1 else 0


class SampleText:
    """The text of one sample, grown token by token, cut at the first stop string.

    `text` holds complete characters only; `pending` holds the ids of a character still being
    spelled out byte by byte. Stop strings are searched only in the tail a new piece can complete;
    empty ones are ignored. Used by sample, chat and the serving engine alike.
    """

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.longest_stop = max(map(len, self.stops), default=0)
        self.text = ""
        self.pending: list[int] = []
        self.stopped = False

    def add(self, token: int) -> None:
        if self.stopped:
            return
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending)
        if not piece.endswith(REPLACEMENT_CHAR):
            self._extend(piece)

    def finish(self) -> None:
        """Generation is over: whatever is pending is final, even an invalid byte sequence."""
        if self.pending and not self.stopped:
            self._extend(self.tokenizer.decode(self.pending))
        self.stopped = True

    def _extend(self, piece: str) -> None:
        self.pending = []
        start = max(0, len(self.text) - self.longest_stop + 1)  # earlier text was searched already
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def printable(self) -> str:
        """The text that can be shown now: not a tail that might still grow into a stop string."""
        if self.stopped:
            return self.text
        for k in range(min(len(self.text), self.longest_stop - 1), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stops):
                return self.text[:-k]
        return self.text


def generate_text(
    model,
    tokenizer,
    prompt: str | list[int],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    stream_to: TextIO | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    ignore_eos: bool = False,
) -> list[str]:
    """Continue `prompt` num_samples times; return the continuations (without the prompt).

    prompt is text (see encode_prompt for the empty prompt and cropping) or ids, used as given.
    All samples run as one batch: the prompt repeated num_samples times. A seed makes the result
    reproducible (a torch.Generator on the device; without one, torch's global RNG is used).
    Each sample ends before the first occurrence of any stop string in its generated text; the
    batch ends early once every sample has stopped. With stream_to, the first sample's text is
    written there as soon as it is final (held back while it could still be the start of a stop
    string or of a multi-byte character); the others are only returned. A sample also ends at the
    tokenizer's end-of-text or end-of-turn token (not part of its text), unless ignore_eos.
    """
    check_sampling_options(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    device = torch.device(device)
    ids = encode_prompt(tokenizer, prompt, model.config.block_size) if isinstance(prompt, str) else prompt
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    samples = [SampleText(tokenizer, stop or []) for _ in range(num_samples)]
    ends = set() if ignore_eos else set(tokenizer.stop_token_ids)
    shown = 0
    try:
        with inference(model, device, dtype):
            tokens = model.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, generator=generator)
            for token in tokens:
                for sample, t in zip(samples, token[:, 0].tolist()):
                    if t in ends:
                        sample.finish()  # an ended sample takes no more tokens
                    else:
                        sample.add(t)
                if stream_to is not None:
                    shown = _write_new(stream_to, samples[0].printable(), shown)
                if all(s.stopped for s in samples):
                    break
    except KeyboardInterrupt:
        raise GenerationInterrupted(_finish(samples, stream_to, shown)) from None
    return _finish(samples, stream_to, shown)


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during generation; `texts` holds what each sample had generated by then."""

    def __init__(self, texts: list[str]):
        super().__init__()
        self.texts = texts


def _finish(samples: list["SampleText"], stream_to: TextIO | None, shown: int) -> list[str]:
    for sample in samples:
        sample.finish()
    if stream_to is not None:
        _write_new(stream_to, samples[0].text, shown)
    return [s.text for s in samples]


def _write_new(stream: TextIO, text: str, shown: int) -> int:
    """Write the part of text past the first `shown` characters; return the new count shown."""
    if len(text) > shown:
        stream.write(text[shown:])
        stream.flush()
    return max(shown, len(text))


def run_sample(
    path: str,
    *,
    prompt: str = "",
    prompt_file: str | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] = (),
    stream: bool = False,
    ignore_eos: bool = False,
    latest: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
) -> None:
    """`minigpt sample`: prompt and samples on stdout, notes on stderr.

    One sample prints as prompt + continuation. Several are each preceded by a line
    `---------- sample N ----------`. With stream the first sample is printed token by token
    and the others when the batch is done (they are generated together, so they finish together).
    Ctrl-C prints what was generated so far, then ends as an interrupted command does.
    """
    check_sampling_options(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    prompt = read_prompt(prompt, prompt_file)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, phase="generate")
    model, tokenizer, _ = load_model(path, latest=latest, device=torch_device, quantize=quantize)
    ids = encode_prompt(tokenizer, prompt, model.config.block_size)  # errors surface before any output

    def header(i: int) -> None:
        if num_samples > 1:
            print(f"---------- sample {i + 1} ----------")

    if stream:
        header(0)
        print(prompt, end="", flush=True)
    try:
        texts = generate_text(
            model,
            tokenizer,
            ids,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=list(stop),
            stream_to=sys.stdout if stream else None,
            device=torch_device,
            dtype=torch_dtype,
            ignore_eos=ignore_eos,
        )
    except GenerationInterrupted as interrupted:
        _print_samples(prompt, interrupted.texts, stream, header)
        raise
    _print_samples(prompt, texts, stream, header)


def _print_samples(prompt: str, texts: list[str], streamed: bool, header) -> None:
    if streamed:
        print(flush=True)
    for i in range(1 if streamed else 0, len(texts)):
        header(i)
        print(prompt + texts[i], flush=True)


def unescape(text: str) -> str:
    r"""What a user typing `\n`, `\t` or `\\` in a shell means: a newline, a tab, a backslash.

    The one rule for text typed on the command line (--prompt, --stop); files are read as they are.
    """
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)
