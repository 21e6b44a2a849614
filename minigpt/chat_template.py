"""The chat template: how a conversation becomes one token sequence, and which of its tokens are trained on.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`.
Each message is written as its role's special token, its content, and the end-of-turn token:

    <|system|>You are terse.<|end|><|user|>2+2?<|end|><|assistant|>4<|end|>

A prompt for the model's next answer ends with `<|assistant|>` (the generation prompt), and the
model ends its answer with `<|end|>`. The role and end-of-turn tokens are special tokens added
beyond a tokenizer's base vocabulary, so ordinary text never produces them and a user typing
"<|user|>" cannot fake a turn.

The template is saved as `chat_template.json` beside a tokenizer's files (in a prepared data folder
and in every checkpoint) and can be written as an equivalent Jinja template for exporters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import MinigptError

TEMPLATE_FILE = "chat_template.json"
ROLES = ("system", "user", "assistant")
TRANSCRIPT_STOP = "\nuser:"  # where a base model's plain-transcript answer ends: the next user line


def plain_transcript(messages: list[dict]) -> str:
    """A conversation as text a base model without a chat template can continue: one "role: content"
    line per message, then "assistant:" as the cue for the answer (which ends at TRANSCRIPT_STOP).
    `chat` and `serve` both fall back to it."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@dataclass(frozen=True)
class ChatTemplate:
    """Role tokens and the end-of-turn token; `special_tokens` lists them in id order."""

    name: str = "minigpt-chat-v1"
    role_tokens: dict[str, str] = field(
        default_factory=lambda: {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
    )
    end_of_turn: str = "<|end|>"

    @property
    def special_tokens(self) -> list[str]:
        return [*(self.role_tokens[role] for role in ROLES), self.end_of_turn]

    def render(
        self,
        messages: list[dict],
        encode: Callable[[str], list[int]],
        token_id: dict[str, int],
        add_generation_prompt: bool,
    ) -> list[int]:
        """A conversation's token ids, after checking its messages."""
        check_messages(messages)
        ids: list[int] = []
        for message in messages:
            ids += [
                token_id[self.role_tokens[message["role"]]],
                *encode(message["content"]),
                token_id[self.end_of_turn],
            ]
        if add_generation_prompt:
            ids.append(token_id[self.role_tokens["assistant"]])
        return ids

    def jinja(self) -> str:
        """The same template in the Jinja form Hugging Face tokenizers and GGUF files carry."""
        role_branches = "{% el".join(
            "if message['role'] == '" + role + "' %}" + self.role_tokens[role] for role in ROLES
        )
        return (
            "{% for message in messages %}{% " + role_branches + "{% endif %}"
            "{{ message['content'] }}" + self.end_of_turn + "{% endfor %}"
            "{% if add_generation_prompt %}" + self.role_tokens["assistant"] + "{% endif %}"
        )

    def save(self, folder: str | os.PathLike) -> str:
        Path(folder, TEMPLATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return TEMPLATE_FILE

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ChatTemplate | None:
        """The template saved in folder, or None when it has none."""
        path = Path(folder, TEMPLATE_FILE)
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            template = cls(name=values["name"], role_tokens=values["role_tokens"], end_of_turn=values["end_of_turn"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise MinigptError(f"{path} is not a valid chat template ({type(e).__name__}: {e})") from None
        if sorted(template.role_tokens) != sorted(ROLES):
            raise MinigptError(f"{path}: role_tokens must name exactly {', '.join(ROLES)}")
        return template


def check_messages(messages, where: str = "conversation") -> None:
    """One-line MinigptError unless messages is a list of {role, content} with known roles and string content."""
    if not isinstance(messages, list):
        raise MinigptError(f"{where}: 'messages' must be a list of {{role, content}} objects, got {_kind(messages)}")
    for i, message in enumerate(messages, start=1):  # counted from 1, as rows are
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise MinigptError(f"{where}: message {i} must be an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise MinigptError(
                f"{where}: message {i} has unknown role {message['role']!r}; accepted: {', '.join(ROLES)}"
            )
        if not isinstance(message["content"], str):
            raise MinigptError(f"{where}: message {i} content must be text, got {_kind(message['content'])}")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__
