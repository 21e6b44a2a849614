"""Shared test setup: offline environment, the tiny Shakespeare corpus, a network guard."""

import os
import socket
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"

# Set before tiktoken or datasets are imported by any test module.
os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken_cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """sample, chat and serve leave torch on the thread count they timed fastest (engine.fastest_threads):
    in-process tests of them must not change the thread count later tests run with, or float sums made in
    another order break the bit-for-bit comparisons of training runs."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shakespeare_file() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not available")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_file) -> str:
    return shakespeare_file.read_text(encoding="utf-8")


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to resolve or connect to a host (local pipes still work)."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def char_data(tmp_path_factory, shakespeare_text):
    """The first 200k characters of tiny Shakespeare, prepared at character level."""
    from minigpt.data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    (root / "corpus.txt").write_text(shakespeare_text[:200_000])
    prepare(str(root / "corpus.txt"), "char", root / "char", num_proc=1, progress=False)
    return root / "char"
