"""Any minigpt tokenizer as a Hugging Face tokenizer.json, so that transformers' AutoTokenizer reads it.

- tiktoken BPEs (gpt2, cl100k_base, o200k_base, trained bpe:N) become byte-level BPE models: the
  same regex splits the text, each byte is shown as GPT-2's printable stand-in character, and the
  merges are recovered from the ranks (a token of rank r merges two smaller tokens, at priority r).
  tiktoken looks a whole piece up before merging, hence ignore_merges.
- char vocabularies become a BPE without merges: every character is a token of its own.
- a Hugging Face tokenizer is already one.
One difference remains, by design: transformers reads the text "<|endoftext|>" as the special token,
while minigpt's encode() reads it as ordinary characters (a document may quote it).
"""

import json

from ..errors import MinigptError
from ..tokenizers import EOT_TEXT, CharTokenizer, HFTokenizer, TiktokenTokenizer, Tokenizer, bytes_to_unicode


def to_hf_tokenizer(tokenizer: Tokenizer, max_length: int) -> HFTokenizer:
    """tokenizer as an HFTokenizer (the same ids for every text); max_length goes into its config."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer
    if isinstance(tokenizer, TiktokenTokenizer):
        model, pre_tokenizer = _byte_level_bpe(tokenizer), _split_then_bytes(tokenizer.encoding._pat_str)
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        specials = tokenizer.encoding._special_tokens  # tiktoken keeps no public accessor for these two
    elif isinstance(tokenizer, CharTokenizer):
        model = _bpe({c: i for i, c in enumerate(tokenizer.chars)}, [])
        pre_tokenizer, decoder = None, {"type": "Fuse"}
        specials = {EOT_TEXT: tokenizer.eot_token} if tokenizer.eot_token is not None else {}
        specials |= tokenizer.chat_token_ids  # chat tokens, when it has them (tiktoken's are in its specials)
    else:
        raise MinigptError(f"tokenizer {tokenizer.spec!r} cannot be written as a Hugging Face tokenizer")
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(text, i) for text, i in specials.items()],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        "model": model,
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.eot_token is not None:
        config["eos_token"] = config["bos_token"] = EOT_TEXT
    return HFTokenizer(json.dumps(tokenizer_json, ensure_ascii=False), config)


def _byte_level_bpe(tokenizer: TiktokenTokenizer) -> dict:
    ranks = tokenizer.encoding._mergeable_ranks
    show = bytes_to_unicode()
    vocab = {"".join(show[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        # every split of token into two known tokens is a merge that makes it; tiktoken's loop merges
        # the pair whose result ranks lowest, so the merge's priority is the result's rank
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], "".join(show[b] for b in left), "".join(show[b] for b in right)))
    merges.sort()
    return _bpe(vocab, [[left, right] for _, _, left, right in merges], ignore_merges=True)


def _bpe(vocab: dict[str, int], merges: list, ignore_merges: bool = False) -> dict:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": ignore_merges,
        "vocab": vocab,
        "merges": merges,
    }


def _split_then_bytes(pattern: str) -> dict:
    """Cut text into pieces with tiktoken's regex, then show each piece's bytes as printable characters."""
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def _added(text: str, index: int) -> dict:
    return {
        "id": index,
        "content": text,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
