"""`minigpt chat PATH`: a conversation with a chat-tuned model in the terminal.

    session = ChatSession(Engine(model, tokenizer), ChatSettings(temperature=0))
    answer = "".join(session.reply("What is 2 + 3?"))

The history is kept as messages and rendered with the tokenizer's chat template. The engine's
`Conversation` keeps the KV cache across turns, so a new turn prefills only its own tokens; when
the rendered history no longer starts with what the cache holds (after /system, or when a stop
string cut an answer short), the cache starts over from the whole prompt. When the history no
longer fits in the model's context, the oldest turns (a user message and its answer) are dropped,
the system message kept, and the user is told once.

At a terminal the answer streams as it is generated; with stdin not a terminal, every input line
is one user message and every answer is printed on one line (its newlines written as \\n), so
scripts and tests can pipe conversations through. Lines starting with / are commands: /reset
forgets the history, /system TEXT sets the system message, /quit ends (as does end of input).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

import torch

from ..device import resolve_device, resolve_dtype
from ..errors import MinigptError
from ..loader import load_model
from .engine import Conversation, Engine, SamplingParams
from .sample import SampleText, check_sampling_options

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /quit"


@dataclass
class ChatSettings:
    """The sampling options of `sample`, per answer, and the system message."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    system: str | None = None

    def check(self) -> None:
        check_sampling_options(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
        )
        if self.max_new_tokens < 1:
            raise MinigptError(f"--max-new-tokens must be at least 1 for chat, got {self.max_new_tokens}")


class ChatSession:
    """The messages so far, and the engine conversation whose cache holds them."""

    def __init__(self, engine: Engine, settings: ChatSettings):
        settings.check()
        if not engine.tokenizer.has_chat_template:
            raise MinigptError(
                "this model's tokenizer has no chat template: fine-tune it on chat data first "
                "(`minigpt prepare FILE --format chat --tokenizer-from PATH`, then train with train.init_from)"
            )
        self.engine, self.settings = engine, settings
        self.tokenizer = engine.tokenizer
        self.stop_ids = set(self.tokenizer.stop_token_ids)
        self.system = settings.system
        self.turns: list[dict] = []
        self.conversation = Conversation(engine)
        self.dropped_turns = 0  # oldest turns left out because the context is full
        self.answers = 0  # a seed then gives each answer its own, reproducible, randomness

    @property
    def messages(self) -> list[dict]:
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return system + self.turns

    def reset(self) -> None:
        self.turns, self.dropped_turns = [], 0
        self.conversation = Conversation(self.engine)

    def set_system(self, text: str) -> None:
        self.system = text or None

    def reply(self, text: str) -> Iterator[str]:
        """Add a user message; yield the answer's text as it becomes final, then keep it in the history."""
        self.turns.append({"role": "user", "content": text})
        try:
            ids = self._prompt()
        except MinigptError:
            self.turns.pop()
            raise
        held = self.conversation.ids
        if not held or ids[: len(held)] != held:
            self.conversation = Conversation(self.engine)
            held = []
        s = self.settings
        seed = None if s.seed is None else s.seed + self.answers
        params = SamplingParams(s.max_new_tokens, s.temperature, s.top_k, s.top_p, seed, s.stop)
        self.answers += 1
        answer, shown = SampleText(self.tokenizer, s.stop), 0
        # Read the reply to its end (never break): the conversation then puts its last token in the cache.
        for token in self.conversation.reply(ids[len(held) :], params):
            if token in self.stop_ids:
                continue
            answer.add(token)
            piece = answer.printable()[shown:]
            shown += len(piece)
            yield piece
        answer.finish()
        yield answer.text[shown:]
        self.turns.append({"role": "assistant", "content": answer.text})

    def _prompt(self) -> list[int]:
        """The whole conversation's ids, oldest turns dropped until it leaves room for an answer."""
        block = self.engine.block_size
        room = block - min(self.settings.max_new_tokens, block // 2)  # as the engine's Conversation reserves
        system = self.messages[: len(self.messages) - len(self.turns)]
        alone = len(self.tokenizer.encode_chat([*system, self.turns[-1]], add_generation_prompt=True))
        if alone > room:
            raise MinigptError(
                f"this message needs {alone} tokens with the system message, but the model's context "
                f"({block} tokens, {block - room} kept for the answer) leaves room for {room}"
            )
        while True:
            ids = self.tokenizer.encode_chat(self.messages, add_generation_prompt=True)
            if len(ids) <= room:
                return ids
            dropped = 2 if self.turns[1]["role"] == "assistant" else 1
            del self.turns[:dropped]
            self.dropped_turns += 1


def chat_with(
    path: str,
    settings: ChatSettings,
    *,
    latest: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
):
    """`minigpt chat PATH`: load the model (a LoRA run comes merged) and talk on stdin / stdout."""
    settings.check()  # before loading: a bad option costs no time
    torch_device = resolve_device(device)
    model, tokenizer, _ = load_model(path, latest=latest, device=torch_device, quantize=quantize)
    run_chat(
        model, tokenizer, settings, device=torch_device, dtype=resolve_dtype(dtype, torch_device, phase="generate")
    )


def run_chat(
    model,
    tokenizer,
    settings: ChatSettings,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    interactive: bool | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> None:
    """The chat loop (see the module docstring); interactive defaults to whether stdin is a terminal.
    The streams default to sys.stdin / stdout / stderr as they are when called."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if interactive is None:
        interactive = stdin.isatty()
    session = ChatSession(Engine(model, tokenizer, max_batch=1, device=device, dtype=dtype), settings)
    told_of_dropping = False
    if interactive:
        print(HELP, file=stderr)
    for line in _lines(stdin, interactive):
        line = line.rstrip("\r\n")
        command, _, argument = line.partition(" ")
        if command == "/quit":
            return
        if command == "/reset":
            session.reset()
            _note(interactive, stderr, "(conversation cleared)")
        elif command == "/system":
            session.set_system(argument.strip())
            _note(interactive, stderr, f"(system message {'set' if argument.strip() else 'cleared'})")
        elif command.startswith("/"):
            print(f"unknown command {command!r}; {HELP}", file=stderr)
        elif line.strip():
            try:
                pieces = session.reply(line)
                if interactive:
                    for piece in pieces:
                        stdout.write(piece)
                        stdout.flush()
                    stdout.write("\n")
                else:
                    print("".join(pieces).replace("\n", "\\n"), file=stdout, flush=True)
            except MinigptError as error:
                print(f"error: {error}", file=stderr)
                if not interactive:
                    print("", file=stdout, flush=True)  # still one line out per line in
            if session.dropped_turns and not told_of_dropping:
                print("note: the context is full; the oldest turns are being dropped", file=stderr)
                told_of_dropping = True


def _lines(stdin: TextIO, interactive: bool) -> Iterator[str]:
    if not interactive:
        yield from stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            print()
            return


def _note(interactive: bool, stderr: TextIO, text: str) -> None:
    if interactive:
        print(text, file=stderr)
