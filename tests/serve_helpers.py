"""A tiny untrained run and a live server on a free local port, for the serving tests."""

import socket

import torch
from helpers import save_untrained_run

from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer

CHARS = list("\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def tiny_run(run_dir, *, chat: bool = False, block_size: int = 64, n_layer: int = 2, seed: int = 0):
    """A run folder holding an untrained char model (with the chat template's tokens when chat)."""
    tokenizer = CharTokenizer(CHARS, with_eot=True)
    if chat:
        tokenizer.add_chat_tokens()
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=32)
    return save_untrained_run(run_dir, GPT(config), tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_run(run_dir, **app_options):
    """(engine, app) for the run at run_dir, as `minigpt serve` builds them."""
    from minigpt.infer.engine import Engine
    from minigpt.loader import load_model
    from minigpt.serve.app import create_app

    model, tokenizer, _ = load_model(run_dir)
    engine_options = {k: app_options.pop(k) for k in ("max_batch", "max_waiting") if k in app_options}
    engine = Engine(model, tokenizer, **engine_options)
    return engine, create_app(engine, "tiny", **app_options)
