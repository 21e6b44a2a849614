"""A minigpt tokenizer as a byte-level BPE vocabulary: token strings and merge rules.

GPT-2-style tokenizers outside minigpt (llama.cpp's "gpt2" tokenizer model, Hugging Face's ByteLevel
BPE) store each token as a string in which every byte is one printable character (GPT-2's byte-to-
unicode map), and BPE as an ordered list of merges "left right". tiktoken keeps only ranks, so the
merges are recovered: a token of rank r is what BPE builds from its bytes using only tokens ranked
below r, and the last two parts it joins are its merge.

A char vocabulary fits the same mould: each character is a token, and a character of several UTF-8
bytes is reached by merging its bytes left to right. UTF-8 is self-synchronising, so those merges
never join bytes of two different characters.
"""

from dataclasses import dataclass

from ..errors import MinigptError
from ..tokenizers import EOT_TEXT, CharTokenizer, TiktokenTokenizer, Tokenizer, _bytes_to_unicode

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
        special = {tokenizer.eot_token: EOT_TEXT} if tokenizer.eot_token is not None else {}
        return _assemble(pieces, special, _char_merges(pieces), PRE_TOKENIZERS["char"])
    if isinstance(tokenizer, TiktokenTokenizer):
        encoding = tokenizer.encoding
        special = {encoding.encode_single_token(text): text for text in encoding.special_tokens_set}
        pieces = [encoding.decode_single_token_bytes(i) for i in range(encoding.n_vocab) if i not in special]
        if len(pieces) + len(special) != encoding.n_vocab or any(i < len(pieces) for i in special):
            raise MinigptError(f"tokenizer {tokenizer.spec!r} has gaps in its ids; it cannot be written as merges")
        pre = PRE_TOKENIZERS["gpt2"] if tokenizer.spec.startswith("bpe:") else PRE_TOKENIZERS[tokenizer.spec]
        return _assemble(pieces, special, _bpe_merges(pieces), pre)
    raise MinigptError(
        f"tokenizer {tokenizer.spec!r} cannot be written as a byte-level BPE vocabulary; "
        "accepted: char, gpt2, cl100k_base, o200k_base, bpe:N"
    )


def _assemble(pieces: list[bytes], special: dict[int, str], merges, pre: str) -> ByteLevelVocab:
    to_char = _bytes_to_unicode()
    tokens = ["".join(to_char[b] for b in piece) for piece in pieces]
    for i in sorted(special):
        tokens.append(special[i])
    as_text = [" ".join("".join(to_char[b] for b in part) for part in pair) for pair in merges]
    return ByteLevelVocab(tokens, set(special), as_text, pre)


def _bpe_merges(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order (rank = id for tiktoken tokens)."""
    ranks = {piece: rank for rank, piece in enumerate(pieces)}
    merges = []
    for rank, piece in enumerate(pieces):
        if len(piece) < 2:
            continue
        parts = [bytes([b]) for b in piece]
        while len(parts) > 2:
            # join the adjacent pair of lowest rank, as tiktoken would, among tokens older than this one
            best = min((ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1))
            if best[0] >= rank:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise MinigptError(f"token {piece!r} (id {rank}) cannot be built from two earlier tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _char_merges(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Left-to-right merges that assemble each multi-byte character from its bytes (no duplicates)."""
    merges: dict[tuple[bytes, bytes], None] = {}
    for piece in pieces:
        for end in range(2, len(piece) + 1):
            merges[(piece[: end - 1], piece[end - 1 : end])] = None
    return list(merges)
