"""Generate text from a trained model: `minigpt sample PATH --prompt "..."`.

    model, tokenizer, _ = load_model("out/shakespeare_char")
    params = SamplingParams(max_tokens=200, temperature=0.8, seed=1337, stop=["\\n\\n"], on_full="slide")
    texts = generate_text(model, tokenizer, "ROMEO:", params, num_samples=3)

Generation runs on the engine (engine.py) and its sampling settings (sampling.py); this module adds
what a person at a terminal needs around them: prompts from text or files, several samples in one
batch, streaming, and readable errors.
"""

import re
import sys
from typing import TextIO

import torch

from ..device import check_memory
from ..errors import MinigptError, read_user_text
from .engine import Engine
from .ready import ModelChoice, load_for_generation
from .sampling import CLI_NAMES, PYTHON_NAMES, SamplingParams, check_sampling


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
        return [document_start(tokenizer)]
    ids = tokenizer.encode(prompt)  # a char tokenizer names characters it never saw
    if len(ids) > block_size:
        print(
            f"note: the prompt has {len(ids)} tokens; keeping its last {block_size} (the model's block_size)",
            file=sys.stderr,
        )
        ids = ids[-block_size:]
    return ids


def document_start(tokenizer) -> int:
    """The token an empty prompt (or an empty lm-eval context) starts from."""
    if tokenizer.eot_token is not None:
        return tokenizer.eot_token
    try:
        newline = tokenizer.encode("\n")
    except MinigptError:  # a char vocabulary without "\n"
        return 0
    return newline[0] if len(newline) == 1 else 0


def generate_text(
    model,
    tokenizer,
    prompt: str | list[int],
    params: SamplingParams,
    *,
    num_samples: int = 1,
    stream_to: TextIO | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    names=PYTHON_NAMES,
    drafter=None,
    compile_decode: bool = False,
) -> list[str]:
    """Continue `prompt` num_samples times; return the continuations (without the prompt).

    prompt is text (see encode_prompt for the empty prompt and cropping) or ids, used as given.
    All samples run as one batch on the engine. A seed makes the result reproducible: sample i
    draws from its own generator seeded seed + i (without one, torch's global RNG is used). Each
    sample ends before the first occurrence of any stop string in its generated text, and at the
    tokenizer's end-of-text or end-of-turn token (not part of its text) unless params.ignore_eos.
    With stream_to, the first sample's text is written there as soon as it is final (held back
    while it could still be the start of a stop string or of a multi-byte character).
    names: what messages call each setting (the command line passes its flags).
    drafter: speculative decoding's guesser (speculative.py), used while one sample is in flight.
    compile_decode: decode steps compiled ahead of time (Engine, infer/compiled_step.py).
    """
    check_sampling(params, names)
    if num_samples < 1:
        raise MinigptError(f"num_samples must be at least 1, got {num_samples}")
    ids = encode_prompt(tokenizer, prompt, model.config.block_size) if isinstance(prompt, str) else prompt
    check_samples_fit(model.config, len(ids), params.max_tokens, num_samples)
    engine = Engine(
        model,
        tokenizer,
        max_batch=num_samples,
        device=device,
        dtype=dtype,
        drafter=drafter,
        compile_decode=compile_decode,
    )
    samples = [engine.submit(ids, params.for_choice(i)) for i in range(num_samples)]
    shown = 0
    try:
        for _ in engine.drive(samples):
            if stream_to is not None:
                shown = _write_new(stream_to, samples[0].text.printable(), shown)
    except KeyboardInterrupt:
        for sample in samples:
            sample.text.finish()
        raise GenerationInterrupted(_texts(samples, stream_to, shown)) from None
    failed = [s.error for s in samples if s.finish_reason == "error"]
    if failed:
        raise MinigptError(f"generation failed: {failed[0]}")
    return _texts(samples, stream_to, shown)


def check_samples_fit(config, prompt_tokens: int, max_tokens: int, num_samples: int) -> None:
    """Refuse a batch of samples whose KV caches and logits surely exceed the machine's memory."""
    positions = min(config.block_size, prompt_tokens + max_tokens)
    kv = 2 * config.n_layer * (config.n_kv_head or config.n_head) * config.head_size * positions
    per_sample = 4 * (kv + 3 * config.vocab_size)
    check_memory(num_samples * per_sample, f"{num_samples:,} samples at once", "ask for fewer (--num-samples)")


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during generation; `texts` holds what each sample had generated by then."""

    def __init__(self, texts: list[str]):
        super().__init__()
        self.texts = texts


def _texts(samples, stream_to: TextIO | None, shown: int) -> list[str]:
    if stream_to is not None:
        _write_new(stream_to, samples[0].text.text, shown)
    return [s.text.text for s in samples]


def _write_new(stream: TextIO, text: str, shown: int) -> int:
    """Write the part of text past the first `shown` characters; return the new count shown."""
    if len(text) > shown:
        stream.write(text[shown:])
        stream.flush()
    return max(shown, len(text))


def run_sample(
    choice: ModelChoice,
    params: SamplingParams,
    *,
    prompt: str = "",
    prompt_file: str | None = None,
    num_samples: int = 1,
    stream: bool = False,
) -> None:
    """`minigpt sample`: prompt and samples on stdout, notes on stderr.

    One sample prints as prompt + continuation. Several are each preceded by a line
    `---------- sample N ----------`. With stream the first sample is printed token by token
    and the others when the batch is done (they are generated together, so they finish together).
    Ctrl-C prints what was generated so far, then ends as an interrupted command does.
    """
    check_sampling(params, CLI_NAMES)  # before loading: a bad option costs no time
    if num_samples < 1:
        raise MinigptError(f"--num-samples must be at least 1, got {num_samples}")
    prompt = read_prompt(prompt, prompt_file)
    ready = load_for_generation(choice)
    ids = encode_prompt(ready.tokenizer, prompt, ready.model.config.block_size)  # errors before any output
    check_samples_fit(ready.model.config, len(ids), params.max_tokens, num_samples)
    print(f"sampling on {ready.running_on()}", file=sys.stderr)

    def header(i: int) -> None:
        if num_samples > 1:
            print(f"---------- sample {i + 1} ----------")

    if stream:
        header(0)
        print(prompt, end="", flush=True)
    try:
        texts = generate_text(
            ready.model,
            ready.tokenizer,
            ids,
            params,
            num_samples=num_samples,
            stream_to=sys.stdout if stream else None,
            device=ready.device,
            dtype=ready.dtype,
            names=CLI_NAMES,
            drafter=ready.drafter,
            compile_decode=ready.compile,
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
