"""`minigpt chat PATH`: a conversation with a chat-tuned model in the terminal.

    session = ChatSession(Engine(model, tokenizer, max_batch=1), SamplingParams(max_tokens=64, temperature=0))
    answer = "".join(session.reply("What is 2 + 3?"))

The history is kept as messages and rendered with the tokenizer's chat template (a base model
without one talks in a plain transcript, "role: content" lines, as `minigpt serve` does). Each answer runs
on the engine, which hands back the answer's KV cache; the next turn starts from it and prefills
only the tokens that differ (after /system, or when a stop string cut an answer short, that is
more). When the history no longer fits in the context, the oldest turns (a user message and its
answer) are dropped, the system message kept, and the user is told once.

At a terminal the answer streams as it is generated; with stdin not a terminal, every input line
is one user message and every answer is printed on one line (its newlines written as \\n), so
scripts and tests can pipe conversations through. Lines starting with / are commands: /reset
forgets the history, /system TEXT sets the system message, /quit ends (as does end of input).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import TextIO

from ..chat_template import TRANSCRIPT_STOP, plain_transcript
from ..errors import MinigptError
from .engine import Engine, Event, check_max_context
from .ready import ModelChoice, ReadyModel, load_for_generation
from .sampling import CLI_NAMES, SamplingParams, check_sampling

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /quit"


class ChatSession:
    """The messages so far, and the KV cache the last answer left behind."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None):
        check_sampling(params)
        self.tokenizer = engine.tokenizer
        self.templated = self.tokenizer.has_chat_template
        if not self.templated:  # a base model: a plain transcript, as the server falls back to
            params = replace(params, stop=[*params.stop, TRANSCRIPT_STOP])
        self.engine, self.params = engine, params
        self.system = system
        self.turns: list[dict] = []
        self.held = None  # the last answer's KV cache (engine.HeldCache)
        self.dropped_turns = 0  # oldest turns left out because the context is full
        self.answers = 0  # a seed then gives each answer its own, reproducible, randomness

    @property
    def messages(self) -> list[dict]:
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return system + self.turns

    def reset(self) -> None:
        self.turns, self.dropped_turns, self.held = [], 0, None

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
        params = self.params.for_choice(self.answers)  # each answer its own, reproducible, randomness
        self.answers += 1
        events: list[Event] = []
        answer = self.engine.submit(ids, params, events.append, cache=self.held, keep_cache=True)
        self.held = None
        for _ in self.engine.drive([answer]):
            yield "".join(event.text for event in events)
            events.clear()
        yield "".join(event.text for event in events)
        self.held = answer.cache
        if answer.finish_reason == "error":
            self.turns.pop()
            raise MinigptError(f"generation failed: {answer.error}")
        self.turns.append({"role": "assistant", "content": answer.text.text})

    def _encode(self, messages: list[dict]) -> list[int]:
        if self.templated:
            return self.tokenizer.encode_chat(messages, add_generation_prompt=True)
        return self.tokenizer.encode(plain_transcript(messages))

    def _prompt(self) -> list[int]:
        """The whole conversation's ids, oldest turns dropped until it leaves room for an answer."""
        context = self.engine.max_context
        room = context - min(self.params.max_tokens, context // 2)  # kept free for the answer
        system = self.messages[: len(self.messages) - len(self.turns)]
        alone = len(self._encode([*system, self.turns[-1]]))
        if alone > room:
            raise MinigptError(
                f"this message needs {alone} tokens with the system message, but the context "
                f"({context} tokens, {context - room} kept for the answer) leaves room for {room}"
            )
        while True:
            ids = self._encode(self.messages)
            if len(ids) <= room:
                return ids
            dropped = 2 if self.turns[1]["role"] == "assistant" else 1
            del self.turns[:dropped]
            self.dropped_turns += 1


def chat_with(
    choice: ModelChoice,
    params: SamplingParams,
    *,
    system: str | None = None,
    max_context: int | None = None,
):
    """`minigpt chat PATH`: load the model (a LoRA run comes merged) and talk on stdin / stdout."""
    check_sampling(params, CLI_NAMES)  # before loading: a bad option costs no time
    check_max_context(max_context, "--max-context")
    ready = load_for_generation(choice)
    run_chat(ready, params, system=system, max_context=max_context)


def run_chat(
    ready: ReadyModel,
    params: SamplingParams,
    *,
    system: str | None = None,
    max_context: int | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    interactive: bool | None = None,
) -> None:
    """The chat loop (see the module docstring) with a loaded model; interactive defaults to whether stdin
    is a terminal. The streams default to sys.stdin / stdout / stderr as they are when called."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if interactive is None:
        interactive = stdin.isatty()
    engine = ready.engine(max_batch=1, max_context=max_context)
    session = ChatSession(engine, params, system)
    told_of_dropping = False
    if not session.templated:
        print(
            "note: this model has no chat template; the conversation is a plain transcript "
            "(role: content lines), as `minigpt serve` uses",
            file=stderr,
        )
    if interactive:
        print(f"chatting on {ready.running_on()}; {HELP}", file=stderr)
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
        try:
            yield from stdin
        except UnicodeDecodeError as e:
            raise MinigptError(f"standard input is not UTF-8 text (byte {e.start} of a line); give UTF-8") from None
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
