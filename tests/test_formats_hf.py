"""Hugging Face folders in and out (minigpt.formats.hf), checked against transformers' own models."""

import ast
import json
from pathlib import Path

import pytest
import torch
from hf_fixtures import MESSAGES, TEXT, make_hf_tokenizer_folder

from minigpt import GPT, GPTConfig
from minigpt.errors import MinigptError
from minigpt.formats.hf import load_hf, load_hf_model, save_hf
from minigpt.loader import load_model
from minigpt.tokenizers import load_tokenizer

transformers = pytest.importorskip("transformers")
PACKAGE = Path(__file__).resolve().parents[1] / "minigpt"


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def test_hugging_face_gpt2_weights_load_and_save(tmp_path):
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=120, n_positions=32, n_embd=48, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    reference = transformers.GPT2LMHeadModel(hf_config).eval()
    reference.save_pretrained(tmp_path / "hf")
    model, tokenizer = load_hf(str(tmp_path / "hf"))
    assert tokenizer.spec == "gpt2"
    idx = torch.randint(0, 120, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx)[0], reference(idx).logits, atol=1e-4, rtol=0)
        save_hf(model, tokenizer, tmp_path / "ours")
        reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
        torch.testing.assert_close(reloaded(idx).logits, reference(idx).logits, atol=1e-4, rtol=0)
    via_load_model, hf_tokenizer, source = load_model(tmp_path / "hf")
    assert hf_tokenizer.spec == "gpt2" and source.record is None
    torch.testing.assert_close(via_load_model(idx)[0], model(idx)[0])


def test_from_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(MinigptError, match="has no config.json"):
        load_hf(str(tmp_path))
    save_hf(tiny(pos_encoding="rope"), load_tokenizer("gpt2"), tmp_path / "own")  # its own modeling code
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    (tmp_path / "own" / "config.json").write_text(json.dumps({**config, "mlp": "gelu2"}))
    with pytest.raises(MinigptError, match="mlp 'gelu2' is not one of gelu, gelu_exact"):
        load_hf(str(tmp_path / "own"))


def _imports(module: Path, top_level_only: bool) -> set[str]:
    """The minigpt modules one file imports (relative imports resolved), e.g. {"minigpt.nn.attention"}."""
    package = ".".join(module.relative_to(PACKAGE.parent).with_suffix("").parts)
    if module.name == "__init__.py":
        package = package.removesuffix(".__init__") + ".x"
    tree = ast.parse(module.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: -node.level]
            target = ".".join(base + ([node.module] if node.module else []))
            found.update([target] if node.module else [f"{target}.{a.name}" for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minigpt"):
            found.add(node.module)
    return found


def test_the_model_knows_no_file_format_and_the_package_has_no_import_cycle():
    for file in [PACKAGE / "model.py", *(PACKAGE / "nn").glob("*.py")]:
        assert not any(m.startswith("minigpt.formats") for m in _imports(file, top_level_only=False)), file
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        name = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = {m for m in _imports(file, top_level_only=True) if m != name}
    visiting, done = [], set()

    def visit(name):
        assert name not in visiting, f"import cycle: {' -> '.join(visiting + [name])}"
        if name in done or name not in modules:
            return
        visiting.append(name)
        for target in modules[name]:
            visit(target if target in modules else target.rsplit(".", 1)[0])
        visiting.pop()
        done.add(name)

    for name in modules:
        visit(name)


def _gpt2_folder(tmp_path, **overrides):
    torch.manual_seed(0)
    config = dict(vocab_size=120, n_positions=32, n_embd=48, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**config, **overrides})).eval()
    with torch.no_grad():  # norms and biases away from their initial 1 and 0, so that every parameter matters
        for p in reference.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    reference.save_pretrained(tmp_path / "hf")
    return reference, tmp_path / "hf"


@pytest.mark.parametrize(
    "overrides",
    [
        dict(tie_word_embeddings=False),
        dict(layer_norm_epsilon=1e-2),
        dict(n_inner=72),
        dict(activation_function="gelu"),
        dict(activation_function="relu2"),
    ],
    ids=str,
)
def test_gpt2_config_fields_that_change_the_computation_are_honoured(tmp_path, overrides):
    reference, folder = _gpt2_folder(tmp_path, **overrides)
    model, _ = load_hf(str(folder))
    idx = torch.randint(0, 120, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx)[0], reference(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(scale_attn_weights=False), "scale_attn_weights"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(activation_function="silu"), "activation_function='silu'"),
    ],
    ids=str,
)
def test_gpt2_config_fields_that_are_not_supported_are_refused_by_name(tmp_path, overrides, field):
    _, folder = _gpt2_folder(tmp_path, **overrides)
    with pytest.raises(MinigptError, match=field):
        load_hf(str(folder))


def _random(model):
    """Move norms and biases away from their initial 1 and 0, so that every parameter matters."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
ARCHITECTURES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1)
    ),
    "llama": lambda: transformers.LlamaForCausalLM(  # SmolLM / TinyLlama style: grouped-query, untied head
        transformers.LlamaConfig(
            **SMALL, num_key_value_heads=2, intermediate_size=48, rms_norm_eps=1e-5, initializer_range=0.1
        )
    ),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(  # biases on q, k, v only; tied head
        transformers.Qwen2Config(
            **SMALL, num_key_value_heads=2, intermediate_size=40, tie_word_embeddings=True, initializer_range=0.1
        )
    ),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(  # QK-norm with gains; heads wider than hidden / heads
        transformers.Qwen3Config(
            **SMALL, num_key_value_heads=1, head_dim=16, intermediate_size=40, rope_theta=1e6, initializer_range=0.1
        )
    ),
}


@pytest.fixture(params=list(ARCHITECTURES))
def hf_folder(request, tmp_path):
    torch.manual_seed(0)
    reference = _random(ARCHITECTURES[request.param]())
    reference.save_pretrained(tmp_path / request.param)
    return reference, tmp_path / request.param


def _hf_greedy(reference, prompt, n):
    out = reference.generate(  # an explicit mask: else a prompt's token 0 (the pad_token_id) reads as padding
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        min_new_tokens=n,
    )
    return out[:, prompt.shape[1] :]


def test_hugging_face_models_give_the_same_logits_and_greedy_tokens(hf_folder):
    reference, folder = hf_folder
    model = load_hf_model(folder)
    assert model.config.vocab_size == 96
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference(idx).logits, atol=1e-4, rtol=0)
        prompt = idx[:1, :5]
        ours = model.generate(prompt, 20, temperature=0)[:, 5:]
        assert torch.equal(ours, _hf_greedy(reference, prompt, 20))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: transformers.LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_type"),
        (lambda: transformers.LlamaConfig(**SMALL, attention_bias=True), "attention_bias"),
        (lambda: transformers.LlamaConfig(**SMALL, mlp_bias=True), "mlp_bias"),
        (lambda: transformers.LlamaConfig(**SMALL, hidden_act="gelu"), "hidden_act"),
        (lambda: transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8), "sliding"),
        (lambda: transformers.MistralConfig(**SMALL), "'mistral'"),
    ],
    ids=["rope_scaling", "attention_bias", "mlp_bias", "hidden_act", "sliding_window", "architecture"],
)
def test_unsupported_hugging_face_settings_are_refused_by_name(tmp_path, make, field):
    config = make()
    config.save_pretrained(tmp_path)
    with pytest.raises(MinigptError, match=field):
        load_hf_model(tmp_path)


def test_a_folder_with_tokenizer_files_brings_its_tokenizer(tmp_path):
    torch.manual_seed(0)
    ARCHITECTURES["qwen3"]().save_pretrained(tmp_path / "qwen")
    with pytest.raises(MinigptError, match="has no tokenizer.json"):
        load_hf(str(tmp_path / "qwen"))
    reference = make_hf_tokenizer_folder(tmp_path / "qwen")
    model, tokenizer = load_hf(str(tmp_path / "qwen"))
    assert tokenizer.spec == "hf" and tokenizer.encode_chat(MESSAGES) == list(
        reference.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)
    )
    _, tokenizer, source = load_model(tmp_path / "qwen")
    assert (
        tokenizer.spec == "hf"
        and source.record is None
        and tokenizer.stop_token_ids == [reference.convert_tokens_to_ids("<|im_end|>")]
    )


def _trained(config: GPTConfig) -> GPT:
    """A model with weights large enough that greedy choices are clear (random ones are nearly uniform)."""
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _char_tokenizer():
    from minigpt.tokenizers import CharTokenizer

    return CharTokenizer.from_texts([TEXT, "a second document"])  # two documents: with end-of-text


def _bpe_tokenizer():
    from minigpt.tokenizers import build_tokenizer

    return build_tokenizer("bpe:300", [TEXT])


EXPORTS = {  # what each config is written as, with which of our tokenizers
    "gpt2-char": (dict(), _char_tokenizer, "gpt2"),
    "gpt2-exact-gelu": (dict(mlp="gelu_exact"), _char_tokenizer, "gpt2"),  # activation_function "gelu" to them
    "llama-bpe": (
        dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_weights=False),
        _bpe_tokenizer,
        "llama",
    ),
    "qwen3-gpt2": (
        dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True, rope_base=5e5),
        lambda: load_tokenizer("gpt2"),
        "qwen3",
    ),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_exported_folders_reproduce_minigpt_in_transformers(tmp_path, name):
    overrides, make_tokenizer, model_type = EXPORTS[name]
    tokenizer = make_tokenizer()
    config = dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32)
    model = _trained(GPTConfig(**config, **overrides))
    save_hf(model, tokenizer, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == model_type
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    text = TEXT[:150] + ("<|endoftext|>" if tokenizer.eot_token is not None else "")
    ids = tokenizer.encode(TEXT[:150]) + ([tokenizer.eot_token] if tokenizer.eot_token is not None else [])
    assert their_tokenizer(text)["input_ids"] == ids
    idx = torch.tensor([ids[:40]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, model(idx)[0], atol=1e-4, rtol=0)
        prompt = "To be, or not"
        ours = tokenizer.decode(model.generate(torch.tensor([tokenizer.encode(prompt)]), 20, temperature=0)[0])
        their_ids = their_tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = theirs.generate(their_ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert their_tokenizer.decode(out[0]) == ours
    reloaded, again = load_hf(str(tmp_path / "hf"))  # and back: the same model and the same ids
    torch.testing.assert_close(reloaded(idx)[0], model(idx)[0])
    assert again.encode(TEXT[:150]) == tokenizer.encode(TEXT[:150])


OWN_CODE = {  # models no standard transformers class expresses, and one that GPT-2 does after all
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "softcap-rmsnorm-relu": dict(logit_softcap=3.0, norm="rmsnorm", mlp="relu"),
    "rope-layernorm-exact-gelu-qkv-bias": dict(pos_encoding="rope", mlp="gelu_exact", bias=False, qkv_bias=True),
    "qwen3-with-biases-wide-heads": dict(
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        n_kv_head=2,
        head_dim=16,
        qk_norm=True,
        qk_norm_affine=True,
        mlp_hidden=40,
        norm_eps=1e-3,
        rope_base=500.0,
        tie_weights=False,
    ),
    "gpt2-relu2": dict(mlp="relu2", bias=False),  # activation_function "relu2": a standard GPT-2
}


@pytest.mark.parametrize("name", list(OWN_CODE))
def test_models_no_standard_class_expresses_go_out_with_their_own_modeling_code(tmp_path, name):
    model = _trained(
        GPTConfig(
            vocab_size=_char_tokenizer().vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32, **OWN_CODE[name]
        )
    )
    save_hf(model, _char_tokenizer(), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    own_code = name != "gpt2-relu2"
    assert config["model_type"] == ("minigpt" if own_code else "gpt2")
    assert (tmp_path / "hf" / "modeling_minigpt.py").is_file() == own_code
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=own_code).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
        prompt = idx[:1, :5]
        assert torch.equal(model.generate(prompt, 20, temperature=0)[:, 5:], _hf_greedy(theirs, prompt, 20))
    reloaded, _ = load_hf(str(tmp_path / "hf"))  # and back into minigpt: the same model
    assert reloaded.config == model.config or not own_code
    torch.testing.assert_close(reloaded(idx)[0], model(idx)[0])


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: several seconds
def test_own_code_runs_where_minigpt_cannot_be_imported(tmp_path):
    import subprocess
    import sys

    model = _trained(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, mlp="relu2", qk_norm=True))
    save_hf(model, _char_tokenizer(), tmp_path / "hf")
    idx = torch.randint(0, 50, (1, 12))
    torch.save({"idx": idx, "logits": model(idx)[0].detach()}, tmp_path / "expected.pt")
    script = (
        "import sys, torch, transformers; sys.modules['minigpt'] = None  # import minigpt now fails\n"
        "model = transformers.AutoModelForCausalLM.from_pretrained('hf', trust_remote_code=True)\n"
        "expected = torch.load('expected.pt')\n"
        "torch.testing.assert_close(model(expected['idx']).logits, expected['logits'], atol=1e-5, rtol=0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_own_code_generates_padded_batches_as_minigpt_does_each_row(tmp_path):
    """Left padding takes no position and is never attended to, in transformers' generate as in ours."""
    model = _trained(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, **OWN_CODE["sinusoidal"]))
    save_hf(model, _char_tokenizer(), tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    ids = torch.tensor([rows[0], [0, 0, 0] + rows[1]])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        out = theirs.generate(
            ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        for i, row in enumerate(rows):
            ours = model.generate(torch.tensor([row]), 12, temperature=0)[0, len(row) :]
            assert out[i, 6:].tolist() == ours.tolist()


def test_the_exported_config_names_end_of_text_only_when_the_vocabulary_has_it(tmp_path, capfd):
    from minigpt.tokenizers import CharTokenizer

    for name, tokenizer, expected in [
        ("eot", _char_tokenizer(), _char_tokenizer().eot_token),
        ("none", CharTokenizer(list("abcdefgh"), with_eot=False), None),
    ]:
        save_hf(tiny(vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / name)
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["bos_token_id"] == config["eos_token_id"] == expected
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name)
    assert "bos_token_id must be" not in capfd.readouterr().err  # transformers' complaint at GPT-2's 50256


def test_export_never_writes_into_a_folder_that_holds_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(MinigptError, match="not an empty folder"):
        save_hf(tiny(), _char_tokenizer(), tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_a_folder_whose_tensors_disagree_with_its_config_is_refused(tmp_path):
    torch.manual_seed(0)
    ARCHITECTURES["llama"]().save_pretrained(tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(MinigptError, match="gate_proj.weight.*has shape"):
        load_hf_model(tmp_path / "llama")
    save_hf(tiny(head_dim=16), _char_tokenizer(), tmp_path / "own")  # wider heads: no standard class
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    (tmp_path / "own" / "config.json").write_text(json.dumps({**config, "mlp_hidden": 64}))
    with pytest.raises(MinigptError, match=r"mlp.c_fc.weight has shape \(128, 32\) but its config.json implies"):
        load_hf_model(tmp_path / "own")
