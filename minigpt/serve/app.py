"""The FastAPI app: OpenAI-compatible endpoints and the playground, a thin layer over the Engine.

    GET  /                      the playground (static/index.html)
    GET  /health                liveness and load
    GET  /v1/models             the one model served
    POST /v1/completions        text completion, streamed as server-sent events with "stream": true
    POST /v1/chat/completions   chat completion, likewise
    POST /v1/attention          one layer's and head's attention weights over a token sequence

Stream chunks carry two fields beyond OpenAI's, which its clients ignore: `token_ids` in each
choice (the tokens behind that piece of text) and `prompt_token_ids` in the first chunk, so the
playground can ask for the attention over exactly the tokens the model saw.
"""

import asyncio
import hmac
import json
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..infer.engine import Engine, QueueFull
from .protocol import APIError, Job, chat_job, completion_job, envelope, is_int, new_id, usage

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt a model's context can hold
MAX_ATTENTION_TOKENS = 1024  # one head's map of this many tokens is half a million weights


def create_app(
    engine: Engine,
    model_name: str,
    *,
    api_key: str | None = None,
    max_body_bytes=MAX_BODY_BYTES,
    access_log: bool = False,
):
    """The app serving `engine`; it starts the engine's thread at startup and drains it at shutdown.
    access_log: one line on stderr per request (method, path, status, tokens generated, milliseconds)."""

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await run_in_threadpool(engine.stop)  # requests in flight have finished by now (uvicorn waits)

    app = FastAPI(title="minigpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    context = engine.max_context  # the most tokens a sequence may use (serve --max-context)

    @app.middleware("http")
    async def log_access(request: Request, call_next):
        request.state.started = time.perf_counter()
        response = await call_next(request)
        if access_log and not getattr(request.state, "streaming", False):  # a stream logs as it ends
            _log_access(request, response.status_code, getattr(request.state, "tokens", 0))
        return response

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):  # constant time: no timing hints
            raise APIError(
                401, "missing or wrong API key (send Authorization: Bearer KEY)", kind="authentication_error"
            )

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"the request body is larger than {max_body_bytes} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():  # a body without a length is counted as it arrives
                body += chunk
                if len(body) > max_body_bytes:
                    raise APIError(413, f"the request body is larger than {max_body_bytes} bytes")
        except ClientDisconnect:
            raise APIError(400, "the client disconnected before its request body arrived") from None
        try:
            data = json.loads(body)
        except ValueError:  # UnicodeDecodeError included
            raise APIError(400, "the request body is not valid JSON") from None
        except RecursionError:
            raise APIError(400, "the request body's JSON is nested too deeply") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return JSONResponse(APIError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):
        body = APIError(500, f"internal error: {type(error).__name__}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.get("/")
    async def playground():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        c = engine.model.config
        shape = {"n_layer": c.n_layer, "n_head": c.n_head, "block_size": c.block_size, "max_context": context}
        return {
            "status": "ok",
            "model": model_name,
            **shape,
            "active": len(engine.active),
            "waiting": len(engine.waiting),
        }

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "minigpt", "max_model_len": context}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: Request):
        job = completion_job(await read_json(request), engine.tokenizer, context)
        return await respond(request, job, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: Request):
        job = chat_job(await read_json(request), engine.tokenizer, context)
        return await respond(request, job, chat=True)

    @app.post("/v1/attention", dependencies=[Depends(authorize)])
    async def attention(request: Request):
        body = await read_json(request)
        ids, layer, head = body.get("token_ids"), body.get("layer", -1), body.get("head", 0)
        config = engine.model.config
        longest = min(context, MAX_ATTENTION_TOKENS)
        if not (isinstance(ids, list) and 0 < len(ids) <= longest and all(_token(t, config.vocab_size) for t in ids)):
            raise APIError(400, f"token_ids must be a list of 1 to {longest} ids in [0, {config.vocab_size})")
        if not (is_int(layer) and -config.n_layer <= layer < config.n_layer):
            raise APIError(400, f"layer must be an integer in [0, {config.n_layer})", "layer")
        if not (is_int(head) and 0 <= head < config.n_head):
            raise APIError(400, f"head must be an integer in [0, {config.n_head})", "head")
        try:  # in the engine's thread, between decode steps: one model, one user of it at a time
            future = engine.run_between_steps(lambda: _attention_weights(engine, ids, layer, head))
        except QueueFull:
            raise APIError(429, "the server is busy; try again shortly", kind="rate_limit_error") from None
        weights = await asyncio.wrap_future(future)
        tokens = [engine.tokenizer.decode([t]) for t in ids]
        return {"tokens": tokens, "layer": layer % config.n_layer, "head": head, "weights": weights}

    async def respond(request: Request, job: Job, chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        sequences = []
        try:
            for i in range(job.n):  # n choices: n sequences, seeds seed, seed + 1, ...
                listener = _listener(loop, events, i)
                sequences.append(engine.submit(job.prompt_ids, job.params.for_choice(i), listener))
        except BaseException as error:  # whatever refused one choice frees the ones admitted before it
            for sequence in sequences:
                sequence.cancel()
            if isinstance(error, QueueFull):
                raise APIError(429, "the server is busy; try again shortly", kind="rate_limit_error") from None
            raise
        request_id = new_id("chatcmpl" if chat else "cmpl")
        if job.stream:
            request.state.streaming = True
            log = request if access_log else None
            stream = _stream(events, sequences, job, chat, request_id, model_name, log)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        try:
            await _wait_for_all(request, events, job.n)
        finally:
            for sequence in sequences:  # a client that left: free the slots
                sequence.cancel()
        if any(s.finish_reason == "error" for s in sequences):
            raise APIError(500, "generation failed", kind="server_error")
        if chat:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": s.text.text}, "finish_reason": s.finish_reason}
                for i, s in enumerate(sequences)
            ]
        else:
            choices = [
                {"index": i, "text": s.text.text, "logprobs": None, "finish_reason": s.finish_reason}
                for i, s in enumerate(sequences)
            ]
        response = envelope("chat.completion" if chat else "text_completion", request_id, model_name, choices)
        response["usage"] = usage(len(job.prompt_ids), sum(len(s.tokens) for s in sequences))
        request.state.tokens = response["usage"]["completion_tokens"]
        return response

    return app


def _listener(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int):
    """Hand the engine thread's events to the request's event loop."""

    def listen(event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (index, event))

    return listen


async def _wait_for_all(request: Request, events: asyncio.Queue, n: int) -> None:
    finished = 0
    while finished < n:
        try:
            _, event = await asyncio.wait_for(events.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                return
            continue
        finished += event.finish_reason is not None


async def _stream(events: asyncio.Queue, sequences: list, job: Job, chat: bool, request_id: str, model: str, log):
    """Server-sent events: one chunk per token, then usage if asked for, then [DONE].

    Starlette stops iterating when the client disconnects; `finally` then cancels the sequences,
    so their slots are free before the engine's next step. log: the request to write the access line of.
    """
    kind = "chat.completion.chunk" if chat else "text_completion"
    try:
        first = {"prompt_token_ids": job.prompt_ids}
        if chat:  # OpenAI's first chat chunk names the role
            roles = [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(job.n)
            ]
            yield _sse({**envelope(kind, request_id, model, roles), **first})
            first = {}
        finished = 0
        while finished < job.n:
            index, event = await events.get()
            finished += event.finish_reason is not None
            if event.finish_reason == "error":
                yield _sse(APIError(500, "generation failed", kind="server_error").body())
                return
            token_ids = [] if event.token is None else [event.token]
            if chat:
                delta = {"content": event.text} if event.text else {}
                choice = {"index": index, "delta": delta, "finish_reason": event.finish_reason, "token_ids": token_ids}
            else:
                choice = {
                    "index": index,
                    "text": event.text,
                    "logprobs": None,
                    "finish_reason": event.finish_reason,
                    "token_ids": token_ids,
                }
            yield _sse({**envelope(kind, request_id, model, [choice]), **first})
            first = {}
        if job.include_usage:
            counts = usage(len(job.prompt_ids), sum(len(s.tokens) for s in sequences))
            yield _sse({**envelope(kind, request_id, model, []), "usage": counts})
        yield "data: [DONE]\n\n"
    finally:
        for sequence in sequences:
            sequence.cancel()
        if log is not None:
            _log_access(log, 200, sum(len(s.tokens) for s in sequences))


def _log_access(request: Request, status: int, tokens: int) -> None:
    """One line per request: method, path, status, tokens generated, milliseconds."""
    ms = 1000 * (time.perf_counter() - request.state.started)
    print(f"{request.method} {request.url.path} {status} {tokens} tokens {ms:.0f} ms", file=sys.stderr, flush=True)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@torch.inference_mode()
def _attention_weights(engine: Engine, ids: list[int], layer: int, head: int) -> list[list[float]]:
    idx = torch.tensor([ids], dtype=torch.long, device=engine.device)
    weights = engine.model.attention_maps(idx, layer)[0][0, head].float().cpu()  # (T, T), row t: token t's view
    return [[round(w, 4) for w in row[: t + 1]] for t, row in enumerate(weights.tolist())]


def _token(value, vocab_size: int) -> bool:
    return is_int(value) and 0 <= value < vocab_size
