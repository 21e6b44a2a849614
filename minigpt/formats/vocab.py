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
from ..tokenizers import (
    EOT_TEXT,
    GPT2_PATTERN,
    CharTokenizer,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    bytes_to_unicode,
)
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
    """The vocabulary and merges behind a char, tiktoken (gpt2, cl100k_base, o200k_base), bpe:N or byte-level
    Hugging Face tokenizer."""
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
        pre = PRE_TOKENIZERS["gpt2"] if tokenizer.spec.startswith("bpe:") else PRE_TOKENIZERS[tokenizer.spec]
        return _from_tokenizer_json(json.loads(to_hf_tokenizer(tokenizer, max_length=0).tokenizer_json), pre)
    if isinstance(tokenizer, HFTokenizer):
        hf = json.loads(tokenizer.tokenizer_json)
        return _from_tokenizer_json(hf, _hf_pre_tokenizer(hf))
    raise MinigptError(
        f"tokenizer {tokenizer.spec!r} cannot be written as a byte-level BPE vocabulary; "
        "accepted: char, gpt2, cl100k_base, o200k_base, bpe:N, hf (byte-level BPE)"
    )


def _from_tokenizer_json(hf: dict, pre: str) -> ByteLevelVocab:
    """Tokens by id (vocabulary, then added tokens) and merges of a byte-level BPE tokenizer.json."""
    by_id = {i: token for token, i in hf["model"]["vocab"].items()}
    special = set()
    for added in hf.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["id"])
    if sorted(by_id) != list(range(len(by_id))):
        raise MinigptError("the tokenizer has gaps in its ids; llama.cpp needs every id from 0 up")
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in hf["model"]["merges"]]
    return ByteLevelVocab([by_id[i] for i in range(len(by_id))], special, merges, pre)


def _hf_pre_tokenizer(hf: dict) -> str:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer: only GPT-2's byte-level split is known here."""
    pre = hf.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    gpt2_bytes = [{"type": "ByteLevel", "use_regex": True}]
    gpt2_split = [{"type": "Split", "pattern": {"Regex": GPT2_PATTERN}}, {"type": "ByteLevel", "use_regex": False}]
    for known in (gpt2_bytes, gpt2_split):
        if len(steps) == len(known) and all(s.items() >= k.items() for s, k in zip(steps, known)):
            if hf["model"].get("type") == "BPE":
                return PRE_TOKENIZERS["gpt2"]
    kinds = "+".join(str(step.get("type")) for step in steps)
    raise MinigptError(
        f"gguf export knows GPT-2's byte-level BPE among Hugging Face tokenizers; this one splits text with {kinds} "
        f"({hf['model'].get('type')} model): convert the Hugging Face folder with llama.cpp's convert_hf_to_gguf.py"
    )


def _shown(piece: bytes) -> str:
    """bytes as GPT-2's printable stand-in characters, one per byte."""
    to_char = bytes_to_unicode()
    return "".join(to_char[b] for b in piece)


def _char_merges(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Left-to-right merges that assemble each multi-byte character from its bytes (no duplicates)."""
    merges: dict[tuple[bytes, bytes], None] = {}
    for piece in pieces:
        for end in range(2, len(piece) + 1):
            merges[(piece[: end - 1], piece[end - 1 : end])] = None
    return list(merges)
