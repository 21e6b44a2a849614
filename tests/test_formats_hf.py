"""Hugging Face folders in and out (minigpt.formats.hf), checked against transformers' own models."""

import ast
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.checkpoint import load_model
from minigpt.errors import MinigptError
from minigpt.formats.hf import load_hf, save_hf
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
    via_load_model, _, meta = load_model(tmp_path / "hf")
    assert meta["tokenizer"] == "gpt2"
    torch.testing.assert_close(via_load_model(idx)[0], model(idx)[0])


def test_from_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(MinigptError, match="has no config.json"):
        load_hf(str(tmp_path))
    with pytest.raises(MinigptError, match="cannot be written as a Hugging Face model: pos_encoding='rope'"):
        save_hf(tiny(pos_encoding="rope"), load_tokenizer("gpt2"), tmp_path / "x")


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
    "overrides", [dict(tie_word_embeddings=False), dict(layer_norm_epsilon=1e-2), dict(n_inner=72)], ids=str
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
    ],
    ids=str,
)
def test_gpt2_config_fields_that_are_not_supported_are_refused_by_name(tmp_path, overrides, field):
    _, folder = _gpt2_folder(tmp_path, **overrides)
    with pytest.raises(MinigptError, match=field):
        load_hf(str(folder))
