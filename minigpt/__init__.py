"""minigpt: a small, fast, hackable GPT framework on PyTorch."""

from .model import GPT, GPTConfig

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "__version__"]
