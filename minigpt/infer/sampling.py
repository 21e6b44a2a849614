"""How one sequence is generated: the one record of sampling settings, its one check, and the draw.

    params = SamplingParams(max_tokens=50, temperature=0.8, top_p=0.95, seed=1337, stop=["\\n\\n"])
    check_sampling(params, CLI_NAMES)    # what `minigpt sample` and `chat` do, in their flags' words
    token = choose_next_token(logits, params.temperature, params.top_k, params.top_p, generator)
    tokens = accept_drafts(logits, drafted, params, generator)   # speculative decoding: which drafts stand

Every way in (the command line, chat, the HTTP API, Python) builds a SamplingParams and has it
checked here, so the same value is accepted or refused everywhere with the same message; only the
name of the setting differs, in the caller's words (`--max-new-tokens` on the command line,
`max_tokens` in the API). The engine checks again what it is given.

Sampling is safe for every accepted value: a temperature below GREEDY_BELOW (1e-5) chooses as
temperature 0 does (the likeliest token), since dividing logits by it would overflow to inf and
then NaN; logits are shifted by their maximum before the division, so larger temperatures stay
finite too.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from ..errors import SEED_LIMIT, MinigptError

GREEDY_BELOW = 1e-5  # temperatures under this choose the likeliest token, as 0 does
MAX_STOPS = 16  # stop strings per sequence: each new piece of text is searched for every one
FULL_CONTEXT = ("slide", "stop")

CLI_NAMES = {
    "max_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
    "stop": "--stop",
}
PYTHON_NAMES = {"max_tokens": "max_new_tokens"}  # generate_text's and GPT.generate's argument


@dataclass
class SamplingParams:
    """How one sequence is generated.

    max_tokens      new tokens at most
    temperature     0 (or below GREEDY_BELOW): always the likeliest token; higher: more varied
    top_k, top_p    keep the k likeliest tokens / the smallest set holding probability p (None: off)
    seed            the sequence's own random generator (None: torch's global one)
    stop            strings that end the text (cut before them)
    on_full         what a sequence does when it fills its context: "slide" keeps going from its
                    newest tokens (sample, chat), "stop" ends it with finish reason "length" (the API)
    ignore_eos      keep going past the tokenizer's end-of-text / end-of-turn tokens
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    on_full: str = "stop"
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def for_choice(self, i: int) -> "SamplingParams":
        """The settings of the i-th of several sequences (samples, the API's n): seeded seed + i."""
        return replace(self, seed=None if self.seed is None else (self.seed + i) % SEED_LIMIT)


class SettingError(MinigptError):
    """A sampling setting out of range; `setting` is its field name in SamplingParams."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def check_sampling(params: SamplingParams, names: Mapping[str, str] | None = None) -> None:
    """Raise SettingError for the first setting out of range; names maps fields to the caller's words."""
    names = names or {}

    def refuse(setting: str, rule: str, value) -> None:
        raise SettingError(setting, f"{names.get(setting, setting)} must be {rule}, got {value!r}")

    p = params
    if not _is_int(p.max_tokens) or p.max_tokens < 1:
        refuse("max_tokens", "a whole number, 1 or more", p.max_tokens)
    if not _is_number(p.temperature) or p.temperature < 0:
        refuse("temperature", "0 (greedy) or a positive number", p.temperature)
    if p.top_k is not None and (not _is_int(p.top_k) or p.top_k < 1):
        refuse("top_k", "a whole number, 1 or more", p.top_k)
    if p.top_p is not None and (not _is_number(p.top_p) or not 0 < p.top_p <= 1):
        refuse("top_p", "a number in (0, 1]", p.top_p)
    if p.seed is not None and (not _is_int(p.seed) or not 0 <= p.seed < SEED_LIMIT):
        refuse("seed", "a whole number from 0 to 2**64 - 1", p.seed)
    if not isinstance(p.stop, list) or len(p.stop) > MAX_STOPS or not all(isinstance(s, str) for s in p.stop):
        refuse("stop", f"a list of at most {MAX_STOPS} strings", p.stop)
    if p.on_full not in FULL_CONTEXT:
        refuse("on_full", f"one of {', '.join(FULL_CONTEXT)}", p.on_full)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def choose_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab); returns (B, 1).

    temperature below GREEDY_BELOW is greedy (argmax); otherwise a draw from next_token_probs.
    """
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(next_token_probs(logits, temperature, top_k, top_p), num_samples=1, generator=generator)


def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution a token is drawn from, per row of logits (B, vocab): logits divided by temperature,
    then top_k keeps the k likeliest tokens and top_p the smallest set whose probabilities add up to at
    least p (nucleus sampling); the two combine, and the most likely token always survives both.
    Speculative decoding accepts drafted tokens by these probabilities (speculative.py)."""
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # <= 0: exp cannot overflow
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(dim=-1)


def accept_drafts(
    logits: torch.Tensor, drafts: list[int], params: SamplingParams, generator: torch.Generator | None = None
) -> list[int]:
    """Speculative decoding's verification: the tokens to emit, given the model's logits (k + 1, vocab)
    after the last token and after each of k drafted tokens.

    Greedy: drafts are kept while they are what argmax would choose, then argmax's own token follows,
    so the text is plain greedy decoding's. Sampling: the drafts are deterministic (a lookup or a
    draft model's argmax), so draft d is kept with probability p(d), and on rejection the token is drawn
    from p with d removed; either way each token has the distribution p exactly (Leviathan et al. 2023
    with a one-point draft distribution). After k kept drafts, one more token is drawn from the last row.
    """
    if params.greedy:
        best = logits.argmax(dim=-1).tolist()
        kept = next((i for i, (d, b) in enumerate(zip(drafts, best)) if d != b), len(drafts))
        return best[: kept + 1]
    probs = next_token_probs(logits, params.temperature, params.top_k, params.top_p)
    chances = torch.rand(len(drafts), generator=generator, device=probs.device).tolist()
    for i, draft in enumerate(drafts):
        if chances[i] < probs[i, draft].item():
            continue
        rest = probs[i].clone()
        rest[draft] = 0.0
        return [*drafts[:i], int(torch.multinomial(rest, 1, generator=generator))]
    return [*drafts, int(torch.multinomial(probs[-1], 1, generator=generator))]
