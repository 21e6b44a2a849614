"""minigpt: a small, fast, hackable GPT framework on PyTorch."""

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "__version__"]


def __getattr__(name: str):
    # GPT and GPTConfig are imported on first use, not with the package: the command line starts
    # without waiting for torch, and a Ctrl-C while torch loads reaches its handler (one line).
    if name in ("GPT", "GPTConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
