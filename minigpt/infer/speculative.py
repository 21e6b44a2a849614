"""Speculative decoding's drafters: cheap guesses at the next few tokens, which the model checks at once.

    engine = Engine(model, tokenizer, drafter=load_drafter("prompt-lookup", model, tokenizer))
    engine = Engine(model, tokenizer, drafter=load_drafter("out/small_model", model, tokenizer))

On a CPU at batch 1 a decode step is bound by reading the weights, so one forward pass over the last
token and k drafted ones costs little more than over the last token alone; every draft the model
agrees with is a token nearly free. The engine runs that pass on its one active sequence and keeps
the drafts that sampling.accept_drafts lets stand, so greedy text is exactly plain greedy decoding's
and sampled text keeps its distribution. A drafter only guesses; it never decides what is emitted.

- PromptLookup copies from the context: the tokens that followed the latest earlier occurrence of the
  context's last few tokens (prompt-lookup decoding). Free, and strong where the answer quotes the prompt.
- DraftModel asks a smaller model of the same tokenizer for its greedy continuation, keeping its own
  KV cache across steps.
"""

import torch

from ..errors import MinigptError
from ..loader import load_model
from ..tokenizers import check_same_vocabulary


class PromptLookup:
    """Drafts copied from the context (prompt-lookup decoding): find the latest earlier place where the
    context's last n tokens occur (n from max_ngram down to min_ngram) and propose the k tokens after it."""

    def __init__(self, k: int = 8, max_ngram: int = 4, min_ngram: int = 2):
        self.k, self.max_ngram, self.min_ngram = k, max_ngram, min_ngram

    def draft(self, ids: list[int], k: int) -> list[int]:
        context = torch.tensor(ids)
        for n in range(min(self.max_ngram, len(ids) - 1), self.min_ngram - 1, -1):
            earlier = context[:-1].unfold(0, n, 1)  # (len - n, n): every earlier window of n tokens
            found = (earlier == context[-n:]).all(dim=1).nonzero()
            if len(found):
                start = int(found[-1]) + n  # the latest occurrence: the nearest text is the likeliest to repeat
                return ids[start : start + k]
        return []


class DraftModel:
    """Drafts from a smaller model of the same tokenizer: its greedy next tokens. Its KV cache is kept
    between calls and cut back to what the new context shares with the last one.

    Each guess costs a forward pass of the draft model, so the number guessed adapts (as transformers'
    assisted generation does): two more after a call whose guesses all stood, one fewer after a miss."""

    def __init__(self, model, k: int = 8):
        self.model, self.k = model.eval(), k
        self.cache = None
        self.held: list[int] = []  # the ids its cache holds
        self.length = 4  # tokens to guess next
        self.guessed: tuple[int, list[int]] | None = None  # the last call's context length and guesses

    def draft(self, ids: list[int], k: int) -> list[int]:
        if self.guessed is not None:  # were the last guesses kept? the new context says
            start, drafts = self.guessed
            kept_all = ids[start : start + len(drafts)] == drafts
            self.length = min(self.k, self.length + 2) if kept_all else max(1, self.length - 1)
        k = min(k, self.length)
        if len(ids) + k - 1 > self.model.config.block_size:
            self.guessed = None
            return []  # past the draft model's context: the engine decodes as usual
        common, limit = 0, min(len(self.held), len(ids) - 1)  # always feed at least the last token
        while common < limit and self.held[common] == ids[common]:
            common += 1
        if self.cache is None:
            self.cache = self.model.make_cache(1)
        for cache in self.cache:
            cache.truncate(common)
        feed, drafts = ids[common:], []
        device = self.model.lm_head.weight.device
        for _ in range(k):
            logits, _ = self.model(torch.tensor([feed], device=device), cache=self.cache, only_last=True)
            feed = [int(logits[0, -1].argmax())]
            drafts.append(feed[0])
        self.held = ids + drafts[:-1]
        self.guessed = len(ids), drafts
        return drafts


def load_drafter(spec: str | None, model, tokenizer, device: torch.device | str = "cpu"):
    """The drafter `--speculative` names: None, "prompt-lookup", or the path of a smaller model with the
    same tokenizer (a run, a checkpoint or a Hugging Face folder, as `minigpt sample` takes)."""
    if spec is None:
        return None
    if spec == "prompt-lookup":
        return PromptLookup()
    draft, draft_tokenizer, _ = load_model(spec, device=device)
    check_same_vocabulary(draft_tokenizer, tokenizer, f"--speculative {spec}")
    if draft.config.vocab_size != model.config.vocab_size:
        raise MinigptError(
            f"--speculative {spec} has {draft.config.vocab_size} token ids but the model has "
            f"{model.config.vocab_size}; a draft model must share the model's tokenizer"
        )
    return DraftModel(draft)
