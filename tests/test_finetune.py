"""train.init_from: weights from a source, its model settings, its tokenizer, vocabulary growth for chat tokens."""

import pytest
import torch
from safetensors.torch import save_file

from minigpt import GPT, GPTConfig
from minigpt.checkpoint import model_state
from minigpt.errors import MinigptError
from minigpt.tokenizers import build_tokenizer
from minigpt.train.init_from import check_tokenizer, init_model, merged_config

pytestmark = pytest.mark.usefixtures("no_network")

SOURCE = GPTConfig(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope", bias=False)


def _checkpoint(folder, tokenizer, config=SOURCE):
    """A checkpoint folder as training writes it: weights, meta and the tokenizer's files."""
    import json

    torch.manual_seed(0)
    model = GPT(config)
    folder.mkdir(parents=True)
    save_file(model_state(model), folder / "model.safetensors")
    model_section = {f: getattr(config, f) for f in config.__dataclass_fields__}
    meta = {"step": 10, "tokenizer": tokenizer.spec, "config": {"model": model_section}}
    (folder / "meta.json").write_text(json.dumps(meta))
    tokenizer.save(folder)
    return model


def test_init_model_copies_weights_and_grows_the_vocabulary_for_chat_tokens(tmp_path):
    tokenizer = build_tokenizer("char", ["abcdefghij", "x"])
    source = _checkpoint(tmp_path / "ckpt", tokenizer, GPTConfig(**{**SOURCE.__dict__, "vocab_size": 12}))
    chat = build_tokenizer("char", ["abcdefghij", "x"])
    chat.add_chat_tokens()
    model, info = init_model(str(tmp_path / "ckpt"), chat, GPTConfig(dropout=0.1))
    assert model.config.vocab_size == 16 and model.config.dropout == 0.1 and model.config.pos_encoding == "rope"
    assert info["init_from"] == str(tmp_path / "ckpt") and info["vocab_size"] == 12
    old, new = source.state_dict(), model.state_dict()
    assert torch.equal(new["transformer.wte.weight"][:12], old["transformer.wte.weight"])
    added = new["transformer.wte.weight"][12:]
    assert torch.allclose(added.mean(0), old["transformer.wte.weight"].mean(0), atol=0.05)  # about an average token
    assert len({tuple(row.tolist()) for row in added}) == 4  # yet distinct, should the embedding stay frozen
    assert all(torch.equal(new[k], v) for k, v in old.items() if "wte" not in k and "lm_head" not in k)
    idx = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    torch.testing.assert_close(model(idx)[0][..., :12], source.eval()(idx)[0], atol=1e-5, rtol=0)


def test_conflicting_model_settings_are_refused_except_dropout():
    assert merged_config(SOURCE, GPTConfig(dropout=0.2), "src").dropout == 0.2
    assert merged_config(SOURCE, GPTConfig(n_layer=2), "src").n_layer == 2  # the same as the source: fine
    with pytest.raises(MinigptError, match="model.n_layer is 4 in the config but 2 in src.*remove model.n_layer"):
        merged_config(SOURCE, GPTConfig(n_layer=4), "src")


def test_tokenizer_mismatch_is_refused(tmp_path):
    source = build_tokenizer("char", ["abc"])
    with pytest.raises(MinigptError, match="prepared with tokenizer 'gpt2' but src uses 'char'.*--tokenizer-from src"):
        check_tokenizer(source, build_tokenizer("gpt2"), "src")
    with pytest.raises(MinigptError, match="vocabulary differs from the one of src"):
        check_tokenizer(source, build_tokenizer("char", ["abd"]), "src")
    chat = build_tokenizer("char", ["abc"])
    chat.add_chat_tokens()
    check_tokenizer(source, chat, "src")  # chat tokens after the source's vocabulary are fine


@pytest.mark.parametrize("path", ["missing_run", "./nowhere", "a/b/c"])
def test_init_from_a_missing_path_is_one_line(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(MinigptError, match="does not exist|is no local folder and could not be downloaded"):
        init_model(path, build_tokenizer("char", ["abc"]), GPTConfig())


def test_init_from_a_folder_without_weights_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MinigptError, match="empty folder; it holds no weights"):
        init_model(str(tmp_path / "empty"), build_tokenizer("char", ["abc"]), GPTConfig())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("x")
    with pytest.raises(MinigptError, match="holds no checkpoint"):
        init_model(str(tmp_path / "run"), build_tokenizer("char", ["abc"]), GPTConfig())


def test_instruction_demo_holds_out_unseen_words_and_sums():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "instruction_tuning_demo.py"
    spec = importlib.util.spec_from_file_location("instruction_tuning_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    train, heldout = demo.make_examples(seed=0, per_task=50)
    questions = lambda rows: {row["messages"][0]["content"] for row in rows}  # noqa: E731
    assert not questions(train) & questions(heldout)
    for row in heldout:
        question, answer = (m["content"] for m in row["messages"])
        if question.startswith("Add "):
            a, b = map(int, question.removeprefix("Add ").rstrip(".").split(" and "))
            assert answer == str(a + b)
        elif question.startswith("Uppercase: "):
            assert answer == question.removeprefix("Uppercase: ").upper()


def test_a_lora_run_saves_adapters_and_the_loader_rebuilds_its_merged_model(tmp_path):
    import json
    from dataclasses import asdict

    from minigpt.loader import load_model
    from minigpt.lora import LoRASettings
    from minigpt.train.finetune import build_model, checkpoint_weights

    tokenizer = build_tokenizer("char", ["abcdefghij", "x"])
    _checkpoint(tmp_path / "base", tokenizer)
    chat = build_tokenizer("char", ["abcdefghij", "x"])
    chat.add_chat_tokens()
    lora = LoRASettings(rank=2, alpha=4)
    model, base = build_model(GPTConfig(), chat, str(tmp_path / "base"), lora)
    base_vocab = base["vocab_size"]
    assert base_vocab == 12 and model.config.vocab_size == 16
    for p in model.parameters():  # stand-in for training: move the adapters away from their start
        if p.requires_grad:
            torch.nn.init.normal_(p)
    weights = checkpoint_weights(model, lora, base_vocab)
    assert all(name.endswith(("lora_a", "lora_b")) or name.startswith("added_rows.") for name in weights)
    run = tmp_path / "lora_ckpt"  # the LoRA run's checkpoint: adapters, added rows, record, tokenizer
    run.mkdir()
    save_file({name: t.clone() for name, t in weights.items()}, run / "model.safetensors")
    train = {"init_from": str(tmp_path / "base"), "lora": asdict(lora)}
    meta = {"step": 5, "tokenizer": chat.spec, "config": {"model": asdict(model.config), "train": train}}
    (run / "meta.json").write_text(json.dumps(meta))
    chat.save(run)
    rebuilt, _, _ = load_model(run)
    idx = torch.tensor([[1, 13, 2, 15]])
    torch.testing.assert_close(rebuilt(idx)[0], model.eval()(idx)[0], atol=1e-5, rtol=0)
    with pytest.raises(MinigptError, match="train.lora needs trained weights"):
        build_model(GPTConfig(), chat, None, LoRASettings(rank=2))


def test_generation_stops_at_end_of_text_unless_told_to_ignore_it():
    from minigpt.infer.sample import generate_text
    from minigpt.infer.sampling import SamplingParams

    tokenizer = build_tokenizer("char", ["abcdefghij", "x"])  # two documents: it has an end-of-text token
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8, tie_weights=False)
    model = GPT(config)
    with torch.no_grad():  # a model that always writes end-of-text: the final norm outputs e0, which picks it
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.eot_token, 0] = 10.0
    assert generate_text(model, tokenizer, "abc", SamplingParams(max_tokens=5, temperature=0)) == [""]
    kept = generate_text(model, tokenizer, "abc", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert kept == ["<|endoftext|>" * 3]
