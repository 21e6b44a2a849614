"""The 'hf' tokenizer kind: a Hugging Face tokenizer.json and chat template, checked against transformers."""

import pytest
from hf_fixtures import MESSAGES, TEXT, make_hf_tokenizer_folder

from minigpt.errors import MinigptError
from minigpt.tokenizers import HFTokenizer, check_same_vocabulary, load_tokenizer

transformers = pytest.importorskip("transformers")


def test_hf_tokenizer_encodes_decodes_and_renders_the_chat_template_as_transformers_does(tmp_path):
    reference = make_hf_tokenizer_folder(tmp_path / "hf")
    ours = load_tokenizer("hf", tmp_path / "hf")
    assert ours.spec == "hf" and ours.vocab_size == len(reference)
    sample = TEXT[:200]
    assert ours.encode(sample) == reference.encode(sample, add_special_tokens=False)
    assert ours.decode(ours.encode(sample)) == sample
    assert ours.has_chat_template
    for add in (True, False):
        expected = reference.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=add, return_dict=False)
        assert ours.encode_chat(MESSAGES, add_generation_prompt=add) == list(expected)
    assert ours.stop_token_ids == [reference.convert_tokens_to_ids("<|im_end|>")]


def test_hf_tokenizer_is_saved_with_a_run_and_rebuilt_the_same(tmp_path):
    make_hf_tokenizer_folder(tmp_path / "hf")
    ours = HFTokenizer.load(tmp_path / "hf")
    (tmp_path / "run").mkdir()
    names = ours.save(tmp_path / "run")
    assert set(names) == {"tokenizer.json", "tokenizer_config.json"}
    again = load_tokenizer("hf", tmp_path / "run")
    check_same_vocabulary(again, ours, "the run")
    assert again.encode_chat(MESSAGES) == ours.encode_chat(MESSAGES) and again.stop_token_ids == ours.stop_token_ids


def test_hf_tokenizer_without_a_template_or_files_says_so(tmp_path):
    make_hf_tokenizer_folder(tmp_path / "hf", chat_template=None)
    plain = load_tokenizer("hf", tmp_path / "hf")
    assert not plain.has_chat_template
    with pytest.raises(MinigptError, match="has no chat template"):
        plain.encode_chat(MESSAGES)
    with pytest.raises(MinigptError, match="tokenizer.json is missing"):
        load_tokenizer("hf", tmp_path)
    bad = HFTokenizer(plain.tokenizer_json, {"chat_template": "{{ raise_exception('no system role') }}"})
    with pytest.raises(MinigptError, match="refused these messages: no system role"):
        bad.encode_chat(MESSAGES)
