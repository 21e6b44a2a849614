"""The generation engine: the one decode loop behind sample, chat, serve, lm-eval and GPT.generate.

    engine = Engine(model, tokenizer, max_batch=8)
    tokens = list(engine.generate(tokenizer.encode("ROMEO:"), SamplingParams(max_tokens=50, temperature=0)))

Many sequences decode together in one batch (continuous batching). Each sequence in flight owns a
row ("slot") of one ragged KV cache (nn.KVCache with per-row lengths). A step first admits waiting
sequences into free slots: each prompt is prefilled on its own (the same prompt twice in one step
is prefilled once), its first token chosen, and its keys and values copied into its slot. Then one
decode step runs every active slot on its last token at once, each at its own position. Finished
sequences leave between steps, and the last slot moves into the hole, so the batch stays the first
n rows. The cache grows with the longest sequence and with the batch (rows doubling up to max_batch),
and is let go when the engine is idle: memory follows what is being generated, not the model's context
or max_batch (zeroing a fresh 8-row cache was half of a lone request's time to first token).

A sequence ends at max_tokens ("length"), at a stop token (the tokenizer's end-of-text / end-of-turn
ids) or stop string ("stop"; the text is cut before it), when cancelled ("cancelled"), or when
something fails for it alone ("error": a prefill that raises, logits that are not finite, a draw
that raises); the others go on. When its context (max_context tokens) is full, SamplingParams.on_full
decides: "stop" ends it with "length", "slide" keeps its newest max_context // 2 tokens and goes on.

Two ways to drive it: `drive()` (and `generate()` on it) runs steps in the caller's thread, as
sample, chat, lm-eval and GPT.generate do; `start()` runs them in a background thread that
`submit()` feeds, as the server does, and a sequence's listener hears each event from that thread.
A sequence submitted with keep_cache=True leaves its KV cache behind (`sequence.cache`, a HeldCache);
handing that to the next submit prefills only the tokens after the longest common start (a chat's turns).

With a drafter (speculative.py), a step that has one active sequence decodes it speculatively: the
drafter guesses the next few tokens, one forward pass runs the last token and the guesses on the
sequence's row (with one sequence, its row is the whole batch), sampling.accept_drafts keeps the
guesses the model agrees with and adds one token of the model's own, and the cache is cut back to
what was kept. Greedy text is then exactly plain greedy decoding's; sampled text has its distribution.
With more sequences active the step decodes as usual: a batch already reads the weights for many.
"""

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from ..device import autocast, inference
from ..errors import MinigptError
from ..nn.attention import all_equal
from .compiled_step import CompiledStep, CompileFailed
from .sampling import SamplingParams, accept_drafts, check_sampling, choose_next_token
from .text import GeneratedText


def fastest_threads(model, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """On a CPU, time a few batch-1 decode steps of model with one thread and with torch's default (one per
    core), leave torch set to the faster and return it. More threads than free cores make every step wait
    for the slowest of them: on a busy 2-core machine 2 threads decoded 5x slower than 1 (README).
    sample, chat and serve do this when no thread count is asked for."""
    default = torch.get_num_threads()
    if device.type != "cpu" or default == 1:
        return default
    cache = model.make_cache(1, max_len=min(64, model.config.block_size), device=device)
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    best = {}
    with inference(model, device, dtype):
        for _ in range(3):  # interleaved, best of each: a burst of other work hits both alike
            for threads in (1, default):
                torch.set_num_threads(threads)
                for cache_layer in cache:
                    cache_layer.truncate(0)
                model(idx, cache=cache)  # a warm-up step in this thread count
                start = time.perf_counter()
                for _ in range(3):
                    model(idx, cache=cache, only_last=True)
                best[threads] = min(best.get(threads, float("inf")), time.perf_counter() - start)
    fastest = min(best, key=best.get)
    torch.set_num_threads(fastest)
    return fastest


def check_max_context(max_context: int | None, name: str = "max_context") -> None:
    """A context cap is a whole number of tokens, at least 1 (None: the model's own)."""
    if max_context is not None and (
        isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1
    ):
        raise MinigptError(f"{name} must be a whole number of tokens, at least 1, got {max_context!r}")


@dataclass
class Event:
    """What a listener hears: a chosen token (None on a bare finish), the text it made final, and
    the finish reason on the last event ("stop", "length", "cancelled" or "error")."""

    token: int | None
    text: str
    finish_reason: str | None = None


@dataclass
class HeldCache:
    """A finished sequence's KV cache (one row per layer) and the ids it holds: a chat's next turn
    starts from it."""

    layers: list
    ids: list[int]


class QueueFull(Exception):
    """submit() found max_waiting sequences already waiting for a slot."""


class Sequence:
    """One prompt being continued: its tokens, its text so far, and how it ended."""

    def __init__(self, prompt_ids, params: SamplingParams, listener, tokenizer, generator, cache, keep_cache):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.listener: Callable[[Event], None] | None = listener
        self.tokens: list[int] = []
        self.text = GeneratedText(tokenizer, params.stop) if tokenizer is not None else None
        self.shown = 0  # characters of text already handed to the listener
        self.finish_reason: str | None = None
        self.error: str | None = None  # what went wrong, with finish reason "error"
        self.cancelled = False
        self.generator = generator
        self.start = 0  # where the ids its cache holds begin (moves when the context slides)
        self.cache: HeldCache | None = cache  # what to start from; with keep_cache, its own when finished
        self.keep_cache = keep_cache
        self.drafted = self.kept = 0  # speculative decoding: tokens guessed, and guesses kept

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.tokens

    def cancel(self) -> None:
        """Stop generating; the engine frees the slot before its next decode step."""
        self.cancelled = True


class Engine:
    """Continuous batching over up to max_batch sequences; see the module docstring.

    tokenizer None: token ids only (no text, no stop tokens), as GPT.generate uses it.
    max_context: the most tokens a sequence may see (default and ceiling: the model's block_size).
    drafter: guesses tokens for speculative decoding at batch 1 (speculative.py); None decodes plainly.
    compile_decode: run decode steps through a CompiledStep (compiled_step.py: native code, no Python
    between the operations of a step): one library while every row stands at the same position (a sample,
    samples of one prompt, a chat), another for rows at their own positions (a server's batch), each
    compiled at its first use (30-100 s on 2 CPU cores); prefills stay eager. Its caches are then made at
    full length and max_batch rows from the start. Where compiling fails (no C++ compiler) the engine says
    so in a line and decodes eagerly.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        max_batch: int = 8,
        max_waiting: int = 64,
        max_context: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        drafter=None,
        compile_decode: bool = False,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        check_max_context(max_context)
        block_size = model.config.block_size
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device) if device is not None else model.lm_head.weight.device
        self.dtype = dtype
        self.drafter = drafter
        self.compiled = CompiledStep(model) if compile_decode else None
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.max_context = min(max_context or block_size, block_size)
        self.stop_token_ids = set(tokenizer.stop_token_ids) if tokenizer is not None else set()
        self.caches = None  # the batch's ragged KV cache: made on demand, grown by rows, dropped when idle
        self.active: list[Sequence] = []  # active[i] owns row i of the caches
        self.next_tokens: list[int] = []  # the token each active row feeds to the next decode step
        self.waiting: deque[Sequence] = deque()
        self.chores: deque[tuple[Callable, Future]] = deque()  # other work on the model, run between steps
        self._work = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- feeding it --------------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        listener: Callable[[Event], None] | None = None,
        *,
        generator: torch.Generator | None = None,
        cache: HeldCache | None = None,
        keep_cache: bool = False,
    ) -> Sequence:
        """Queue a prompt; raises QueueFull when max_waiting sequences are already queued.

        generator overrides params.seed (GPT.generate shares the caller's among its rows); cache is
        a previous sequence's kept cache (see the module docstring)."""
        check_sampling(params)
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        if len(prompt_ids) >= self.max_context and params.on_full == "stop":
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room in a context of {self.max_context}")
        if generator is None and params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        sequence = Sequence(prompt_ids, params, listener, self.tokenizer, generator, cache, keep_cache)
        if len(sequence.prompt_ids) > self.max_context:  # slide: keep what the context holds
            sequence.start = len(sequence.prompt_ids) - self.max_context
        with self._work:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(sequence)
            self._work.notify()
        return sequence

    def run_between_steps(self, work: Callable[[], object]) -> Future:
        """Queue work on the model (a function of no arguments, such as the server's attention maps) to
        run between decode steps, in the thread that runs them; its Future gets the result. Raises
        QueueFull as submit does: it waits in the same line."""
        future = Future()
        with self._work:
            if len(self.waiting) + len(self.chores) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting) + len(self.chores)} requests are already waiting")
            self.chores.append((work, future))
            self._work.notify()
        return future

    def load(self) -> int:
        """Sequences in flight: decoding or waiting for a slot."""
        return len(self.active) + len(self.waiting)

    def drive(self, sequences: list[Sequence]) -> Iterator[None]:
        """Run steps in this thread until every one of sequences has finished, yielding after each."""
        if self._thread is not None:
            raise RuntimeError("drive() runs steps itself; the engine's own thread is running them")
        with inference(self.model, self.device, self.dtype):
            while any(s.finish_reason is None for s in sequences):
                self.step()
                yield

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Continue one prompt in this thread, yielding each token id as it is chosen (a stop token too)."""
        sequence = self.submit(prompt_ids, params)
        shown = 0
        for _ in self.drive([sequence]):
            yield from sequence.tokens[shown:]
            shown = len(sequence.tokens)

    def compile_steps(self) -> None:
        """Compile the decode steps now rather than at the first requests' tokens (a server, whose clients
        would wait): the ragged and the plain step of every row, and the step of a lone row. Nothing to do
        without compile_decode."""
        if self.compiled is None:
            return
        params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)  # one decode step each
        # rows at two positions, at one (a prompt prefilled once for both), a lone row
        for prompts in ([[0], [0, 0]], [[0], [0]], [[0]]):
            sequences = [self.submit(prompt, params) for prompt in prompts]
            for _ in self.drive(sequences):
                pass

    # ---- the background thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Run steps in a background thread whenever there is work."""
        self.model.eval()
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
                while not (self.waiting or self.active or self.chores or self._stopping):
                    self._work.wait()
                if self._stopping and not (self.waiting or self.active or self.chores):
                    return
            try:
                with torch.inference_mode():
                    self.step()
            except Exception:  # the sequences of that step got an "error" finish; serve the others
                traceback.print_exc()

    # ---- one step ----------------------------------------------------------------------------------

    def step(self) -> None:
        """Admit waiting sequences into free slots, then decode one token for every active slot."""
        self._do_chores()
        try:
            with autocast(self.device, self.dtype):
                self._leave()  # cancelled since the last step: their slots are free for the waiting
                self._admit()
                self._leave()
                if self.active:
                    self._decode()
                    self._leave()
        except Exception as error:  # a failed batch step must not leave listeners waiting forever
            for sequence in self.active:
                self._fail(sequence, error)
            self.active, self.next_tokens = [], []
            raise
        finally:
            if not self.active:
                self.caches = None  # idle: give the memory back

    def _do_chores(self) -> None:
        while True:
            with self._work:
                if not self.chores:
                    return
                work, future = self.chores.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except Exception as error:  # the caller hears of it; the engine goes on
                    future.set_exception(error)

    def _admit(self) -> None:
        prefilled = {}  # the same prompt twice in one step is prefilled once
        while len(self.active) < self.max_batch:
            with self._work:
                if not self.waiting:
                    return
                sequence = self.waiting.popleft()
            if sequence.cancelled:
                self._finish(sequence, "cancelled")
                continue
            window = tuple(sequence.ids[sequence.start :])
            try:
                if window in prefilled and sequence.cache is None:
                    single, logits = prefilled[window]
                else:
                    single, logits = self._prefill(sequence, list(window))
                    prefilled[window] = single, logits
            except Exception as error:  # this prompt's failure is its own
                self._fail(sequence, error)
                continue
            row = len(self.active)
            if self.caches is None:  # rows are added as the batch grows: a lone sequence zeroes one row, not max_batch
                # (compiled steps: max_batch rows from the start, so that one library takes every batch)
                self.caches = self._new_cache(self.max_batch if self.compiled else 1, ragged=True)
            elif row == len(self.caches[0].row_lengths):
                for cache in self.caches:
                    cache.grow_rows(min(self.max_batch, 2 * row))
            self._keep_full_length()
            for cache, source in zip(self.caches, single):
                cache.copy_row(row, source)
            self.active.append(sequence)
            self.next_tokens.append(-1)
            self._choose([row], logits)

    def _prefill(self, sequence: Sequence, window: list[int]):
        """Run window (all of it but what a given cache already holds) through a one-row cache;
        returns that cache and the logits (1, vocab) of the window's last position."""
        held, sequence.cache = sequence.cache, None
        if held is None:
            single, common = self._new_cache(1), 0
        else:  # keep the longest common start, and always feed at least the last token
            single, common = held.layers, 0
            limit = min(len(held.ids), len(window) - 1)
            while common < limit and held.ids[common] == window[common]:
                common += 1
            for cache in single:
                cache.truncate(common)
        idx = torch.tensor([window[common:]], dtype=torch.long, device=self.device)
        logits, _ = self.model(idx, cache=single, only_last=True)
        return single, logits[:, -1]

    def _decode(self) -> None:
        n = len(self.active)
        if n == 1 and self.drafter is not None and self._speculate():
            return
        row_lengths = self.caches[0].row_lengths
        for cache in self.caches:
            cache.reserve(max(row_lengths[:n]) + 1)  # views below share the storage: they cannot grow it themselves
        logits = self._compiled_decode(n, row_lengths[:n]) if self.compiled is not None else None
        if logits is None:
            idx = torch.tensor(self.next_tokens, dtype=torch.long, device=self.device)[:, None]
            logits, _ = self.model(idx, cache=[cache.rows(n) for cache in self.caches], only_last=True)
            logits = logits[:, -1]
        self._choose(range(n), logits[:n])

    def _compiled_decode(self, n: int, lengths: list[int]) -> torch.Tensor | None:
        """The next logits of the first n rows of the caches (the active sequences, at these lengths)
        through a compiled step: for a lone sequence a step of one row; else one of every row, the rows
        without a sequence decoding a stand-in token where nothing reads, plain while all stand at one
        position, ragged otherwise. None where it does not take this length or cannot be compiled, and the
        step decodes eagerly."""
        ragged = not all_equal(lengths)
        length = max(lengths)
        if not self.compiled.fits(length, self.caches[0].capacity):
            return None
        rows = len(self.caches[0].row_lengths)
        caches = self.caches
        if n == 1 and rows > 1:  # a server's lone client: a step of 8 rows took 1.5x a step of one
            caches, rows = [cache.rows(1) for cache in self.caches], 1
        idx = torch.tensor(self.next_tokens + [0] * (rows - n), dtype=torch.long, device=self.device)[:, None]
        try:
            logits = self.compiled(idx, caches, length, ragged)
        except CompileFailed as error:  # e.g. no C++ compiler
            print(f"compiling the decode step failed ({error}); decoding without it", file=sys.stderr)
            self.compiled = None
            return None
        for cache in self.caches:
            cache.advance(n, 1)
        return logits

    def _keep_full_length(self) -> None:
        """For compiled steps: the caches at their full length from the start, so that their shapes stay
        those the step was compiled for (a no-op once they are)."""
        if self.compiled is not None:
            for cache in self.caches:
                cache.reserve(self.max_context)

    def _speculate(self) -> bool:
        """Decode the one active sequence speculatively (see the module docstring); False when the drafter
        has no guess or there is no room for one, and the step decodes as usual."""
        sequence = self.active[0]
        held = self.caches[0].row_lengths[0]  # the cache holds the window but its last token
        # room: the kept tokens must not fill the context before the last of them (a slide rebuilds the row)
        room = min(self.max_context - held - 2, sequence.params.max_tokens - len(sequence.tokens) - 1)
        if room < 1:
            return False
        drafts = self.drafter.draft(sequence.ids[sequence.start :], min(self.drafter.k, room))[:room]
        if not drafts:
            return False
        for cache in self.caches:
            cache.reserve(held + 1 + len(drafts))
        views = [cache.rows(1) for cache in self.caches]
        idx = torch.tensor([[self.next_tokens[0], *drafts]], dtype=torch.long, device=self.device)
        logits = self.model(idx, cache=views)[0][0]  # (1 + len(drafts), vocab)
        try:
            if not torch.isfinite(logits).all():
                raise ValueError("the model's logits are not finite")
            tokens = accept_drafts(logits, drafts, sequence.params, sequence.generator)
        except Exception as error:  # this sequence alone ends
            self._fail(sequence, error)
            return True
        for view in views:  # keep the last token and the kept drafts; the final token is fed next step
            view.truncate(held + len(tokens))
        sequence.drafted += len(drafts)
        sequence.kept += len(tokens) - 1
        for token in tokens:
            self._emit(0, token)
            if sequence.finish_reason is not None:
                break
        return True

    def _choose(self, rows, logits: torch.Tensor) -> None:
        """Pick the next token of the sequences in rows from their logits (len(rows), vocab)."""
        # each row's largest logit, in one call: the greedy rows' tokens; a NaN (max lets it through) or +inf
        # there means the row's logits are broken, while a few -inf logits are tokens that cannot come
        best = logits.max(dim=-1)
        finite, argmax = torch.isfinite(best.values).tolist(), best.indices.tolist()
        for i, row in enumerate(rows):
            sequence = self.active[row]
            p = sequence.params
            if not finite[i]:
                self._fail(sequence, ValueError("the model's logits are not finite"))
            elif p.greedy:
                self._emit(row, argmax[i])
            else:
                try:
                    token = int(
                        choose_next_token(logits[i : i + 1], p.temperature, p.top_k, p.top_p, sequence.generator)
                    )
                except Exception as error:  # this sequence alone ends
                    self._fail(sequence, error)
                    continue
                self._emit(row, token)

    def _emit(self, row: int, token: int) -> None:
        sequence = self.active[row]
        sequence.tokens.append(token)
        self.next_tokens[row] = token
        if token in self.stop_token_ids and not sequence.params.ignore_eos:
            self._finish(sequence, "stop", token)
            return
        if sequence.text is not None:
            sequence.text.add(token)
        window = len(sequence.prompt_ids) + len(sequence.tokens) - sequence.start
        if sequence.text is not None and sequence.text.stopped:
            self._finish(sequence, "stop", token)
        elif len(sequence.tokens) >= sequence.params.max_tokens:
            self._finish(sequence, "length", token)
        elif window >= self.max_context and sequence.params.on_full == "stop":
            self._finish(sequence, "length", token)  # the context is full
        else:
            if window >= self.max_context:
                self._slide(row, sequence)
            text = sequence.text.printable() if sequence.text is not None else ""
            self._tell(sequence, Event(token, self._new_text(sequence, text)))

    def _slide(self, row: int, sequence: Sequence) -> None:
        """The context is full: keep the newest max_context // 2 tokens and rebuild the row's cache from
        them, all but the last, which the next decode step feeds as usual."""
        keep = max(1, self.max_context // 2)
        sequence.start = len(sequence.prompt_ids) + len(sequence.tokens) - keep
        single = self._new_cache(1)
        kept = sequence.ids[sequence.start : -1]
        if kept:
            self.model(torch.tensor([kept], dtype=torch.long, device=self.device), cache=single, only_last=True)
        for cache, source in zip(self.caches, single):
            cache.copy_row(row, source)

    def _new_cache(self, rows: int, ragged: bool = False):
        return self.model.make_cache(rows, max_len=self.max_context, ragged=ragged, device=self.device)

    def _fail(self, sequence: Sequence, error: Exception) -> None:
        sequence.error = f"{type(error).__name__}: {error}"
        self._finish(sequence, "error")

    def _finish(self, sequence: Sequence, reason: str, token: int | None = None) -> None:
        text = ""
        if sequence.text is not None:
            sequence.text.finish()
            text = sequence.text.text
        sequence.finish_reason = reason
        self._tell(sequence, Event(token, self._new_text(sequence, text), reason))

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
            if sequence.keep_cache and sequence.finish_reason != "error":
                layers = [cache.take_row(i) for cache in self.caches]
                sequence.cache = HeldCache(layers, sequence.ids[sequence.start :][: layers[0].length])
            last = len(self.active) - 1
            if i != last:
                for cache in self.caches:
                    cache.copy_row(i, cache, last)
                self.active[i], self.next_tokens[i] = self.active[last], self.next_tokens[last]
            for cache in self.caches:
                cache.clear_row(last)
            self.active.pop()
            self.next_tokens.pop()
