import pickle

import pytest
import tiktoken

from minigpt import tokenizers
from minigpt.errors import MinigptError
from minigpt.tokenizers import build_tokenizer, load_tokenizer

pytestmark = pytest.mark.usefixtures("no_network")

UNICODE_TEXT = "naïve café — 日本語のテキスト 🙂🚀 Ünïcödé\n\ttabs  and   spaces <|endoftext|> done."


def _named(spec):
    try:
        return build_tokenizer(spec)
    except MinigptError as e:
        pytest.skip(f"{spec} cannot load offline: {e}")


@pytest.fixture(scope="module")
def bpe(shakespeare_text):
    return build_tokenizer("bpe:1024", [shakespeare_text])


def test_char_vocab_is_65_on_tiny_shakespeare(shakespeare_text):
    tok = build_tokenizer("char", [shakespeare_text])
    assert tok.vocab_size == 65 and tok.eot_token is None
    ids = tok.encode(shakespeare_text)
    assert len(ids) == 1_115_394
    assert tok.decode(ids) == shakespeare_text


def test_char_adds_eot_only_for_several_documents():
    tok = build_tokenizer("char", ["abc", "cd"])
    assert tok.vocab_size == 5 and tok.eot_token == 4
    assert tok.decode(tok.encode("dab") + [tok.eot_token]) == "dab<|endoftext|>"


def test_char_unknown_characters_are_named():
    tok = build_tokenizer("char", ["hello"])
    with pytest.raises(MinigptError, match=r"2 character\(s\).*'!', 'W'"):
        tok.encode("hello!W")


@pytest.mark.parametrize("spec", ["gpt2", "cl100k_base", "o200k_base"])
def test_tiktoken_round_trip(spec, shakespeare_text):
    tok = _named(spec)
    for text in (shakespeare_text[:50_000], UNICODE_TEXT):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(["hello world", UNICODE_TEXT]) == [tok.encode("hello world"), tok.encode(UNICODE_TEXT)]
    # The array fast path agrees, and "<|endoftext|>" written in text stays ordinary text.
    assert [a.tolist() for a in tok.encode_arrays(["hello world", UNICODE_TEXT])] == tok.encode_batch(
        ["hello world", UNICODE_TEXT]
    )
    assert tok.eot_token not in tok.encode(UNICODE_TEXT)
    assert tok.eot_token is not None and tok.eot_token < tok.vocab_size


def test_gpt2_token_count_matches_r50k(shakespeare_text):
    tok = build_tokenizer("gpt2")
    n = len(tok.encode(shakespeare_text))
    assert 330_000 <= n <= 345_000
    assert n == len(tiktoken.get_encoding("r50k_base").encode_ordinary(shakespeare_text))
    assert tok.vocab_size == 50257 and tok.eot_token == 50256


def test_trained_bpe_round_trips_and_compresses(bpe, shakespeare_text):
    assert bpe.vocab_size == 1024 and bpe.eot_token == 1023
    ids = bpe.encode(shakespeare_text)
    assert bpe.decode(ids) == shakespeare_text
    assert len(ids) < 0.5 * len(shakespeare_text)
    assert max(ids) < bpe.vocab_size - 1  # ordinary text never yields the special token
    # Bytes never seen in training still round-trip (byte-level).
    assert bpe.decode(bpe.encode(UNICODE_TEXT)) == UNICODE_TEXT


def test_trained_bpe_ranks_build_on_their_parts(bpe):
    """Each merged token must rank above some split of it into two lower-ranked tokens."""
    assert [bpe.ranks[bytes([b])] for b in range(256)] == list(range(256))
    for token, rank in bpe.ranks.items():
        if len(token) > 1:
            assert any(
                bpe.ranks.get(token[:i], rank) < rank and bpe.ranks.get(token[i:], rank) < rank
                for i in range(1, len(token))
            ), token


@pytest.mark.parametrize("spec", ["char", "gpt2", "bpe"])
def test_save_load_and_pickle_give_identical_encodings(spec, tmp_path, shakespeare_text, request):
    tok = request.getfixturevalue("bpe") if spec == "bpe" else build_tokenizer(spec, [shakespeare_text])
    files = tok.save(tmp_path)
    assert all((tmp_path / name).is_file() for name in files)
    text = shakespeare_text[:20_000]
    for again in (load_tokenizer(tok.spec, tmp_path), pickle.loads(pickle.dumps(tok))):
        assert again.spec == tok.spec and again.vocab_size == tok.vocab_size
        assert again.eot_token == tok.eot_token
        assert again.encode(text) == tok.encode(text)


def test_load_without_files_says_to_prepare(tmp_path):
    with pytest.raises(MinigptError, match="char_vocab.json is missing"):
        load_tokenizer("char", tmp_path)


@pytest.mark.parametrize("spec", ["sentencepiece", "gpt3", "bpe:", "bpe:10", "bpe:abc"])
def test_unknown_spec_lists_accepted(spec):
    with pytest.raises(MinigptError, match=r"char, gpt2, cl100k_base, o200k_base, bpe:N|bpe:N needs"):
        build_tokenizer(spec, ["text"])


def test_unloadable_encoding_says_how_to_fix(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tokenizers.tiktoken, "get_encoding", offline)
    with pytest.raises(MinigptError, match="could not be loaded or downloaded.*TIKTOKEN_CACHE_DIR"):
        load_tokenizer("o200k_base")
