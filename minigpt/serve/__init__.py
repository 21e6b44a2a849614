"""`minigpt serve PATH`: a model behind the OpenAI API, with the attention playground at `/`.

    from minigpt.infer.ready import ModelChoice
    from minigpt.serve import serve
    serve(ModelChoice("out/shakespeare_char"), port=8000, max_batch=8)

The app (app.py) is a thin layer over the generation engine (minigpt/infer/engine.py); protocol.py checks
requests and shapes responses. FastAPI and uvicorn come with the `serve` extra.
"""

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ..errors import MinigptError
from ..infer.ready import ModelChoice, load_for_generation

API_KEY_VARIABLE = "MINIGPT_API_KEY"


def serve(
    choice: ModelChoice,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_waiting: int = 64,
    api_key: str | None = None,
    max_context: int | None = None,
    quiet: bool = False,
) -> None:
    """Load the chosen model and serve it until SIGTERM or Ctrl-C (requests in flight finish first).

    Without api_key, the key comes from $MINIGPT_API_KEY; with neither, no key is asked for. Each request
    gets one access line on stderr (method, path, status, tokens, milliseconds) unless quiet.
    """
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise MinigptError(
            f"minigpt serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'minigpt[serve]'"
        ) from None
    from ..infer.engine import check_max_context

    if max_batch < 1 or max_waiting < 0:
        raise MinigptError(
            f"--max-batch must be at least 1 and --max-waiting 0 or more, got {max_batch}, {max_waiting}"
        )
    check_max_context(max_context, "--max-context")
    if not 0 <= port <= 65535:
        raise MinigptError(f"--port must be in 0..65535, got {port}")
    api_key = api_key or os.environ.get(API_KEY_VARIABLE) or None
    sock = bind(host, port)  # before the model loads: a port in use or a wrong host is one line, at once
    ready = load_for_generation(choice)
    engine = ready.engine(max_batch=max_batch, max_waiting=max_waiting, max_context=max_context)
    if ready.compile:  # before it listens: clients would wait for it
        print("compiling the decode steps (30-100 s on 2 CPU cores)", file=sys.stderr)
        engine.compile_steps()
    app = create_app(engine, model_name(choice.path), api_key=api_key, access_log=not quiet)
    where = "all interfaces" if host in ("0.0.0.0", "::") else host
    port = sock.getsockname()[1]
    at_batch_1 = " at batch 1" if choice.speculative else ""  # the engine drafts only while one sequence runs
    print(
        f"serving {choice.path} on http://{host}:{port} ({where}) on {ready.running_on()}{at_batch_1}; "
        f"API key {'on' if api_key else 'off'}",
        file=sys.stderr,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None))
    server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a MinigptError naming what is wrong with them."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise MinigptError(f"--host {host!r} is not an address or a name this machine can resolve ({e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise MinigptError(
            f"cannot listen on {host}:{port}: {e.strerror} (another --port, or another --host)"
        ) from None
    return sock


def model_name(path: str) -> str:
    """What /v1/models calls the model: the run folder's name."""
    return Path(path).resolve().name if Path(path).exists() else str(path)


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1"):
    """Run `app` with uvicorn in a thread on a free port of host; yields its base URL (for tests and bench)."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
