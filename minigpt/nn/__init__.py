"""Transformer building blocks in plain PyTorch, each usable on its own in models of your own: attention
(with its KV cache), positions, the MLP, norms, the block, LoRA, int8 linear layers
and float linear layers laid out for one-token decoding on a CPU.

The ground floor: it imports torch alone, nothing of minigpt's.
"""

from .attention import KVCache, MultiHeadAttention, attention_weights, causal_mask, key_padding_mask
from .block import TransformerBlock
from .decode_layout import DecodeLinear, decode_layout
from .feedforward import ACTIVATIONS, FeedForward
from .int8 import Int8Linear, quantize_int8
from .lora import LoRALinear
from .norm import NORMS, LayerNorm, RMSNorm, make_norm
from .position import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "DecodeLinear",
    "FeedForward",
    "Int8Linear",
    "KVCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "LoRALinear",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "attention_weights",
    "causal_mask",
    "decode_layout",
    "key_padding_mask",
    "make_norm",
    "quantize_int8",
]
