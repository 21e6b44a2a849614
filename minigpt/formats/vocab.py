"""A minigpt tokenizer as a byte-level BPE vocabulary: token strings and merge rules (for llama.cpp).

llama.cpp's "gpt2" tokenizer model stores each token as a string in which every byte is one printable
character (GPT-2's byte-to-unicode map), and BPE as an ordered list of merges "left right".
tiktoken tokenizers (gpt2, cl100k_base, o200k_base, trained bpe:N) take theirs from the Hugging Face
form that formats/hf_tokenizer.py builds, merges recovered from tiktoken's ranks there.

A char vocabulary fits the same mould: each character is a token, and a character of several UTF-8
bytes is reached by merging its bytes left to right. UTF-8 is self-synchronising, so those merges
never join bytes of two different characters.
"""

import json
from dataclasses import dataclass

from ..errors import MinigptError
from ..tokenizers import EOT_TEXT, CharTokenizer, TiktokenTokenizer, Tokenizer, _bytes_to_unicode
from .hf_tokenizer import to_hf_tokenizer

# the pre-tokenizer (text -> words before BPE) of each tokenizer spec, by llama.cpp's name for it
PRE_TOKENIZERS = {"gpt2": "gpt-2", "char": "gpt-2", "cl100k_base": "dbrx", "o200k_base": "gpt-4o"}


@dataclass
class ByteLevelVocab:
    tokens: list[str]  # id -> the token's bytes, one printable character per byte (or a special token's text)
    special: set[int]  # ids of special (control) tokens such as <|endoftext|>
    merges: list[str]  # "left right", highest priority first
    pre_tokenizer: str  # llama.cpp's name for the text-splitting rule, e.g. "gpt-2"


def byte_level_vocab(tokenizer: Tokenizer) -> ByteLevelVocab:
    """The vocabulary and merges behind a char, tiktoken (gpt2, cl100k_base, o200k_base) or bpe:N tokenizer."""
    if isinstance(tokenizer, CharTokenizer):
        pieces = [c.encode("utf-8") for c in tokenizer.chars]
        tokens = [_shown(piece) for piece in pieces]
        special = set()
        if tokenizer.eot_token is not None:
            tokens.append(EOT_TEXT)
            special.add(tokenizer.eot_token)
        merges = [f"{_shown(left)} {_shown(right)}" for left, right in _char_merges(pieces)]
        return ByteLevelVocab(tokens, special, merges, PRE_TOKENIZERS["char"])
    if isinstance(tokenizer, TiktokenTokenizer):
        hf = json.loads(to_hf_tokenizer(tokenizer, max_length=0).tokenizer_json)
        by_id = {i: token for token, i in hf["model"]["vocab"].items()}
        special = {added["id"]: added["content"] for added in hf["added_tokens"]}
        if sorted(by_id) != list(range(len(by_id))) or any(i < len(by_id) for i in special):
            raise MinigptError(f"tokenizer {tokenizer.spec!r} has gaps in its ids; llama.cpp needs them dense")
        tokens = [by_id[i] for i in range(len(by_id))] + [special[i] for i in sorted(special)]
        merges = [" ".join(pair) for pair in hf["model"]["merges"]]
        pre = PRE_TOKENIZERS["gpt2"] if tokenizer.spec.startswith("bpe:") else PRE_TOKENIZERS[tokenizer.spec]
        return ByteLevelVocab(tokens, set(special), merges, pre)
    raise MinigptError(
        f"tokenizer {tokenizer.spec!r} cannot be written as a byte-level BPE vocabulary; "
        "accepted: char, gpt2, cl100k_base, o200k_base, bpe:N"
    )


def _shown(piece: bytes) -> str:
    """bytes as GPT-2's printable stand-in characters, one per byte."""
    to_char = _bytes_to_unicode()
    return "".join(to_char[b] for b in piece)


def _char_merges(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Left-to-right merges that assemble each multi-byte character from its bytes (no duplicates)."""
    merges: dict[tuple[bytes, bytes], None] = {}
    for piece in pieces:
        for end in range(2, len(piece) + 1):
            merges[(piece[: end - 1], piece[end - 1 : end])] = None
    return list(merges)
