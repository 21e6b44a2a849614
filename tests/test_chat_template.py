"""Chat special tokens on every tokenizer kind, the chat template, and its loss mask."""

import pickle

import jinja2
import pytest

from minigpt.chat_template import ChatTemplate
from minigpt.errors import MinigptError
from minigpt.tokenizers import build_tokenizer, load_tokenizer

pytestmark = pytest.mark.usefixtures("no_network")

MESSAGES = [
    {"role": "system", "content": "be terse"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello"},
]
CORPUS = ["hello there, be terse: hi <|user|>", "abc"] * 20


def _chat_tokenizer(spec):
    tokenizer = build_tokenizer(spec, CORPUS)
    base = tokenizer.vocab_size
    tokenizer.add_chat_tokens()
    return tokenizer, base


@pytest.mark.parametrize("spec", ["char", "gpt2", "bpe:300"])
def test_chat_tokens_lie_beyond_the_base_vocabulary(spec):
    tokenizer, base = _chat_tokenizer(spec)
    assert tokenizer.has_chat_template and tokenizer.vocab_size == base + 4
    assert sorted(tokenizer.chat_token_ids.values()) == list(range(base, base + 4))
    # Ordinary text never produces them, even when it spells one out.
    assert max(tokenizer.encode(CORPUS[0])) < base
    ids = tokenizer.encode_chat(MESSAGES)
    assert (
        tokenizer.decode(ids)
        == "<|system|>be terse<|end|><|user|>hi there<|end|><|assistant|>hello<|end|><|assistant|>"
    )
    end = tokenizer.chat_token_ids["<|end|>"]
    assert end in tokenizer.stop_token_ids and ids[-1] == tokenizer.chat_token_ids["<|assistant|>"]
    assert tokenizer.encode_chat(MESSAGES, add_generation_prompt=False) == ids[:-1]


@pytest.mark.parametrize("spec", ["char", "gpt2", "bpe:300"])
def test_chat_tokens_survive_save_load_and_pickle(spec, tmp_path):
    tokenizer, _ = _chat_tokenizer(spec)
    files = tokenizer.save(tmp_path)
    assert "chat_template.json" in files
    for again in (load_tokenizer(spec, tmp_path), pickle.loads(pickle.dumps(tokenizer))):
        assert again.vocab_size == tokenizer.vocab_size
        assert again.encode_chat(MESSAGES) == tokenizer.encode_chat(MESSAGES)
        assert again.stop_token_ids == tokenizer.stop_token_ids


def test_a_plain_tokenizer_has_no_chat_and_stops_at_end_of_text():
    tokenizer = build_tokenizer("gpt2")
    assert not tokenizer.has_chat_template and tokenizer.stop_token_ids == [50256]
    with pytest.raises(MinigptError, match="no chat template.*--format chat"):
        tokenizer.encode_chat(MESSAGES)


def test_jinja_form_renders_the_same_text():
    tokenizer, _ = _chat_tokenizer("gpt2")
    rendered = jinja2.Template(ChatTemplate().jinja()).render(messages=MESSAGES, add_generation_prompt=True)
    assert rendered == tokenizer.decode(tokenizer.encode_chat(MESSAGES))


@pytest.mark.parametrize(
    "messages, error",
    [
        ({"role": "user"}, "'messages' must be a list"),
        ([{"role": "robot", "content": "x"}], "unknown role 'robot'; accepted: system, user, assistant"),
        ([{"role": "user"}], "message 1 must be an object with 'role' and 'content'"),  # counted from 1
        ([{"role": "user", "content": 3}], "content must be text, got int"),
    ],
)
def test_bad_messages_are_one_line_errors(messages, error):
    tokenizer, _ = _chat_tokenizer("gpt2")
    with pytest.raises(MinigptError, match=error):
        tokenizer.encode_chat(messages)


def test_a_hugging_face_tokenizer_without_a_template_takes_minigpts_chat_tokens(tmp_path):
    pytest.importorskip("transformers")
    from hf_fixtures import make_hf_tokenizer_folder

    make_hf_tokenizer_folder(tmp_path / "hf", chat_template=None)
    tokenizer = load_tokenizer("hf", tmp_path / "hf")
    tokenizer.add_chat_tokens()
    ids = tokenizer.encode_chat(MESSAGES)
    assert (
        tokenizer.decode(ids)
        == "<|system|>be terse<|end|><|user|>hi there<|end|><|assistant|>hello<|end|><|assistant|>"
    )
    (tmp_path / "run").mkdir()
    tokenizer.save(tmp_path / "run")
    assert load_tokenizer("hf", tmp_path / "run").encode_chat(MESSAGES) == ids
