"""minigpt: a small, fast, hackable GPT framework on PyTorch.

    import minigpt
    model, tokenizer = minigpt.load("out/quickstart")   # a run, a checkpoint, or a Hugging Face folder
    model = minigpt.GPT(minigpt.GPTConfig(n_layer=4, n_head=4, n_embd=128))

The names below are imported on first use, so `minigpt --help` starts without loading torch.
"""

__version__ = "0.1.0"

_PUBLIC = {"GPT": ".model", "GPTConfig": ".model", "load": ".loader"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        from importlib import import_module

        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
