"""The generation engine: many sequences decoded together in one batch (continuous batching).

    engine = Engine(model, tokenizer, max_batch=8)
    ids = list(engine.generate(tokenizer.encode("ROMEO:"), SamplingParams(max_tokens=50, temperature=0)))

Each sequence in flight owns a row ("slot") of one ragged KV cache (nn.KVCache with per-row
lengths). A step first admits waiting sequences into free slots: each prompt is prefilled on its
own, its first token chosen, and its keys and values copied into its slot. Then one decode step
runs every active slot on its last token at once, each at its own position. Finished sequences
leave between steps, and the last slot moves into the hole, so the batch stays the first n rows.

Two ways to drive it: `generate()` runs steps in the caller's thread (one prompt, as `minigpt
sample` needs), and `start()` runs them in a background thread that `submit()` feeds, as the
server does; a sequence's listener then hears each token from that thread. `Conversation` keeps
one chat's cache across turns, so each turn prefills only its new tokens.

Sequences end at max_tokens, at a stop token (the tokenizer's end-of-text / end-of-turn ids), at a
stop string (the text is cut before it) or at the end of the context (block_size); prompt plus
max_tokens beyond block_size is the caller's to refuse (the server answers 400).
"""

import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..device import autocast
from ..model import choose_next_token
from .sample import SampleText


@dataclass
class SamplingParams:
    """How one sequence is generated (see choose_next_token); temperature 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Event:
    """What a listener hears: a chosen token (None on a bare finish), the text it made final, and
    the finish reason on the last event ("stop", "length", "cancelled" or "error")."""

    token: int | None
    text: str
    finish_reason: str | None = None


class QueueFull(Exception):
    """submit() found max_waiting sequences already waiting for a slot."""


class Sequence:
    """One prompt being continued: its tokens, text so far, and how it ended."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, listener, tokenizer, device):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.listener: Callable[[Event], None] | None = listener
        self.tokens: list[int] = []
        self.text = SampleText(tokenizer, params.stop)
        self.shown = 0  # characters of text already handed to the listener
        self.finish_reason: str | None = None
        self.cancelled = False
        self.generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None

    def cancel(self) -> None:
        """Stop generating; the engine frees the slot before its next decode step."""
        self.cancelled = True


class Engine:
    """Continuous batching over up to max_batch sequences; see the module docstring."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch: int = 8,
        max_waiting: int = 64,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.block_size = model.config.block_size
        self.stop_token_ids = set(tokenizer.stop_token_ids)  # end-of-text, and end-of-turn for chat
        with autocast(self.device, dtype):
            self.caches = model._new_caches(max_batch, self.device, ragged=True)
        self.active: list[Sequence] = []  # active[i] owns row i of the caches
        self.next_tokens: list[int] = []  # the token each active row feeds to the next decode step
        self.waiting: deque[Sequence] = deque()
        self._work = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- feeding it --------------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams, listener=None) -> Sequence:
        """Queue a prompt; raises QueueFull when max_waiting sequences are already queued."""
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        if len(prompt_ids) >= self.block_size:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room in block_size {self.block_size}")
        sequence = Sequence(prompt_ids, params, listener, self.tokenizer, self.device)
        with self._work:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(sequence)
            self._work.notify()
        return sequence

    def load(self) -> int:
        """Sequences in flight: decoding or waiting for a slot."""
        return len(self.active) + len(self.waiting)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Continue one prompt in this thread, yielding each token id as it is chosen (a stop token too)."""
        if self._thread is not None:
            raise RuntimeError("generate() drives the engine itself; use submit() while it runs in a thread")
        sequence = self.submit(prompt_ids, params)
        shown = 0
        while sequence.finish_reason is None:
            self.step()
            yield from sequence.tokens[shown:]
            shown = len(sequence.tokens)

    # ---- the background thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Run steps in a background thread whenever there is work."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="minigpt-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let every sequence in flight finish, then end the thread."""
        with self._work:
            self._stopping = True
            self._work.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._work:
                while not (self.waiting or self.active or self._stopping):
                    self._work.wait()
                if self._stopping and not (self.waiting or self.active):
                    return
            try:
                self.step()
            except Exception:  # the sequences of that step got an "error" finish; serve the others
                traceback.print_exc()

    # ---- one step ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting sequences into free slots, then decode one token for every active slot."""
        try:
            with autocast(self.device, self.dtype):
                self._leave()  # cancelled since the last step: their slots are free for the waiting
                self._admit()
                self._leave()
                if self.active:
                    self._decode()
                    self._leave()
        except Exception as error:  # a failed step must not leave listeners waiting forever
            for sequence in self.active:
                self._finish(sequence, "error")
            self.active, self.next_tokens = [], []
            raise error

    def _admit(self) -> None:
        while len(self.active) < self.max_batch:
            with self._work:
                if not self.waiting:
                    return
                sequence = self.waiting.popleft()
            if sequence.cancelled:
                self._finish(sequence, "cancelled")
                continue
            single = self.model._new_caches(1, self.device)
            prompt = torch.tensor([sequence.prompt_ids], dtype=torch.long, device=self.device)
            logits = self.model._logits(self.model._hidden_states(prompt, single)[:, -1])
            row = len(self.active)
            for cache, source in zip(self.caches, single):
                cache.copy_row(row, source)
            self.active.append(sequence)
            self.next_tokens.append(self._choose(sequence, logits))

    def _decode(self) -> None:
        n = len(self.active)
        caches = [cache.rows(n) for cache in self.caches]
        idx = torch.tensor(self.next_tokens, dtype=torch.long, device=self.device)[:, None]
        logits = self.model._logits(self.model._hidden_states(idx, caches)[:, -1])  # (n, vocab)
        greedy = [i for i, s in enumerate(self.active) if s.params.temperature == 0]
        argmax = dict(zip(greedy, logits[greedy].argmax(dim=-1).tolist())) if greedy else {}  # one call for all
        for i, sequence in enumerate(self.active):
            if i in argmax:
                self._emit(sequence, argmax[i])
                self.next_tokens[i] = argmax[i]
            else:
                self.next_tokens[i] = self._choose(sequence, logits[i : i + 1])

    def _choose(self, sequence: Sequence, logits: torch.Tensor) -> int:
        """Pick the next token of one sequence from its (1, vocab) logits and tell its listener."""
        p = sequence.params
        token = int(choose_next_token(logits, p.temperature, p.top_k, p.top_p, sequence.generator)[0, 0])
        self._emit(sequence, token)
        return token

    def _emit(self, sequence: Sequence, token: int) -> None:
        sequence.tokens.append(token)
        if token in self.stop_token_ids:
            self._finish(sequence, "stop", token)
            return
        sequence.text.add(token)
        if sequence.text.stopped:
            self._finish(sequence, "stop", token)
        elif len(sequence.tokens) >= sequence.params.max_tokens:
            self._finish(sequence, "length", token)
        elif len(sequence.prompt_ids) + len(sequence.tokens) >= self.block_size:
            self._finish(sequence, "length", token)  # the next token would need a position past the context
        else:
            self._tell(sequence, Event(token, self._new_text(sequence, sequence.text.printable())))

    def _finish(self, sequence: Sequence, reason: str, token: int | None = None) -> None:
        sequence.text.finish()
        sequence.finish_reason = reason
        self._tell(sequence, Event(token, self._new_text(sequence, sequence.text.text), reason))

    @staticmethod
    def _new_text(sequence: Sequence, text: str) -> str:
        new = text[sequence.shown :]
        sequence.shown = max(sequence.shown, len(text))
        return new

    @staticmethod
    def _tell(sequence: Sequence, event: Event) -> None:
        if sequence.listener is not None:
            sequence.listener(event)

    def _leave(self) -> None:
        """Drop finished and cancelled sequences; the last active row moves into each hole."""
        for i in reversed(range(len(self.active))):
            sequence = self.active[i]
            if sequence.cancelled and sequence.finish_reason is None:
                self._finish(sequence, "cancelled")
            if sequence.finish_reason is None:
                continue
            last = len(self.active) - 1
            if i != last:
                for cache in self.caches:
                    cache.copy_row(i, cache, last)
                self.active[i], self.next_tokens[i] = self.active[last], self.next_tokens[last]
            self.active.pop()
            self.next_tokens.pop()


class Conversation:
    """One chat whose KV cache lives across turns: each turn prefills only the tokens it adds.

    `ids` is everything the cache holds: earlier turns, the model's replies, and the new turn.
    When a turn would not fit in block_size, the cache restarts from the newest tokens that do.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.ids: list[int] = []
        self.caches = None

    @torch.inference_mode()
    def reply(self, new_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Add new_ids (the next turn, templated) and yield the reply's tokens as they are chosen."""
        engine, model = self.engine, self.engine.model
        room = engine.block_size - min(params.max_tokens, engine.block_size // 2)
        if self.caches is None or len(self.ids) + len(new_ids) > room:
            self.ids = (self.ids + list(new_ids))[-room:]  # start over from what fits
            self.caches, pending = model._new_caches(1, engine.device), self.ids
        else:
            self.ids += list(new_ids)
            pending = list(new_ids)
        sequence = Sequence(self.ids, params, None, engine.tokenizer, engine.device)
        with autocast(engine.device, engine.dtype):
            while pending and sequence.finish_reason is None:
                idx = torch.tensor([pending], dtype=torch.long, device=engine.device)
                logits = model._logits(model._hidden_states(idx, self.caches)[:, -1])
                token = engine._choose(sequence, logits)
                self.ids.append(token)
                pending = [token]  # fed at the next step; a stop token too, so it closes the turn
                yield token
        if pending:  # the last token is in ids but not yet in the cache
            idx = torch.tensor([pending], dtype=torch.long, device=engine.device)
            with autocast(engine.device, engine.dtype):
                model._hidden_states(idx, self.caches)
