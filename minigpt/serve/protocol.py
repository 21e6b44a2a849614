"""The OpenAI API's request bodies, checked and turned into engine work; its response shapes.

Every problem with a request becomes an APIError, which the app answers with the OpenAI error
body `{"error": {"message", "type", "param", "code"}}` and its HTTP status.

Chat prompts use the tokenizer's chat template when it has one. A base model without one gets
a plain-text transcript instead: one "role: content" line per message, then "assistant:" as
the cue for the answer, and generation stops at the next "\\nuser:" line.
"""

import time
import uuid
from dataclasses import dataclass

from ..chat_template import TRANSCRIPT_STOP, plain_transcript
from ..errors import MinigptError
from ..infer.sampling import SamplingParams, SettingError, check_sampling

MAX_N = 8


class APIError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, and the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class Job:
    """A checked request: the prompt's ids, how to sample, how many choices, and whether to stream."""

    prompt_ids: list[int]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool


def completion_job(body: dict, tokenizer, block_size: int) -> Job:
    """POST /v1/completions: `prompt` is text, a list of one text, or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = _encode(tokenizer, prompt, "prompt")
    elif isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt):
        if not all(0 <= t < tokenizer.vocab_size for t in prompt):
            raise APIError(400, f"prompt token ids must be in [0, {tokenizer.vocab_size})", "prompt")
        ids = list(prompt)
    else:
        raise APIError(
            400, "prompt must be a non-empty string or a list of token ids (one prompt per request)", "prompt"
        )
    return _job(body, ids, [], block_size, default_max_tokens=16)


def chat_job(body: dict, tokenizer, block_size: int) -> Job:
    """POST /v1/chat/completions: `messages` is a list of {"role", "content"} with text contents."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise APIError(400, "each message needs a string role and a string content", "messages")
    if tokenizer.has_chat_template:
        try:
            ids = tokenizer.encode_chat(messages, add_generation_prompt=True)
        except MinigptError as e:
            raise APIError(400, str(e), "messages") from None
        extra_stops = []
    else:
        ids = _encode(tokenizer, plain_transcript(messages), "messages")
        extra_stops = [TRANSCRIPT_STOP]
    return _job(body, ids, extra_stops, block_size, default_max_tokens=None, max_key="max_completion_tokens")


def _job(body: dict, ids: list[int], extra_stops: list[str], block_size: int, default_max_tokens, max_key=None) -> Job:
    room = block_size - len(ids)
    if room < 1:
        raise APIError(400, f"the prompt has {len(ids)} tokens; the model's context holds {block_size}", "prompt")
    max_tokens = body.get("max_tokens", body.get(max_key) if max_key else None)
    stop = body.get("stop")
    params = SamplingParams(
        max_tokens=min(default_max_tokens or room, room) if max_tokens is None else max_tokens,
        temperature=_default(body.get("temperature"), 1.0),
        top_k=body.get("top_k"),  # not in OpenAI's API; vLLM and others accept it
        top_p=body.get("top_p"),
        seed=body.get("seed"),
        stop=[stop] if isinstance(stop, str) else _default(stop, []),
        on_full="stop",  # an API answer ends with finish reason "length" when the context is full
    )
    try:
        check_sampling(params)  # the one check that sample and chat use too; the API's names are its fields'
    except SettingError as e:
        raise APIError(400, str(e), e.setting) from None
    if params.max_tokens > room:
        raise APIError(
            400,
            f"max_tokens {max_tokens} is beyond the context: the prompt has {len(ids)} tokens of {block_size}, "
            f"so at most {room} more fit",
            "max_tokens",
        )
    params.stop = [s for s in params.stop if s] + extra_stops
    n = body.get("n", 1)
    if not is_int(n) or not 1 <= n <= MAX_N:
        raise APIError(400, f"n must be an integer from 1 to {MAX_N}, got {n!r}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", "stream_options")
    return Job(ids, params, n, stream, bool(options.get("include_usage")))


def _default(value, default):
    return default if value is None else value


def _encode(tokenizer, text: str, param: str) -> list[int]:
    try:
        ids = tokenizer.encode(text)
    except MinigptError as e:  # a char model names the characters it never saw
        raise APIError(400, str(e), param) from None
    if not ids:
        raise APIError(400, f"{param} must not be empty", param)
    return ids


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- responses --------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, request_id: str, model: str, choices: list[dict]) -> dict:
    """The fields every completion, chat completion and stream chunk share."""
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
