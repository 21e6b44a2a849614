"""Every shipped config makes a model that can leave: each exports to Hugging Face, loads in transformers
and writes the same greedy tokens there as minigpt does; GGUF exports it or names the settings that would.

The models are the configs' own architectures made small (fewer, narrower layers: the same kind of
model), with random weights large enough that greedy choices are clear.
"""

import dataclasses
import json

import pytest
import torch
from helpers import REPO, save_untrained_run

from minigpt.config import load_config
from minigpt.errors import MinigptError
from minigpt.formats.export import export
from minigpt.model import GPT
from minigpt.tokenizers import CharTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

SMALL = ["model.n_layer=2", "model.n_head=4", "model.n_embd=32", "model.block_size=32", "model.dropout=0.0"]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
# config -> (the class transformers runs it with, what gguf says: its llama.cpp architecture or the refusal)
SHIPPED = {
    "quickstart": ("MinigptForCausalLM", "model.mlp=swiglu .* or model.qk_norm=false"),
    "shakespeare_char": ("GPT2LMHeadModel", "gpt2"),
    "shakespeare_char_fast": ("MinigptForCausalLM", "model.mlp=swiglu .* or model.qk_norm=false"),
}


@pytest.fixture(params=list(SHIPPED))
def shipped_run(request, tmp_path):
    """A run of the config's architecture, shrunk, saved as `minigpt train` saves one."""
    tokenizer = CharTokenizer.from_texts([TEXT, "a second document"])
    config = load_config(REPO / "configs" / f"{request.param}.yaml", SMALL)
    model = GPT(dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size))
    torch.manual_seed(0)
    with torch.no_grad():  # zero_init_proj starts the head at zero: every logit equal, no choice to compare
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    return request.param, save_untrained_run(tmp_path / "run", model.eval(), tokenizer), model.eval(), tokenizer


def test_each_shipped_config_exports_to_transformers_with_the_same_greedy_tokens(shipped_run, tmp_path, capsys):
    name, run, model, tokenizer = shipped_run
    hf_class, _ = SHIPPED[name]
    export(run, "hf", tmp_path / "hf")
    own_code = hf_class == "MinigptForCausalLM"
    note = capsys.readouterr().err
    assert ("trust_remote_code=True" in note) == own_code
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=own_code).eval()
    assert type(theirs).__name__ == hf_class
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == tokenizer.eot_token
    prompt = torch.tensor([tokenizer.encode("First Citizen:\n")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(prompt).logits, model(prompt)[0], atol=1e-5, rtol=0)
        ours = model.generate(prompt, 16, temperature=0)
        mask = torch.ones_like(prompt)  # else generate takes the prompt's "\n" (id 0, the pad_token_id) for padding
        out = theirs.generate(
            prompt, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert out.tolist() == ours.tolist()
    assert len(set(ours[0, prompt.shape[1] :].tolist())) > 1  # a text, not one token again and again


def test_each_shipped_config_exports_to_gguf_or_names_the_settings_that_would(shipped_run, tmp_path, capsys):
    name, run, model, _ = shipped_run
    _, gguf = SHIPPED[name]
    if gguf != "gpt2":
        with pytest.raises(MinigptError, match=f"gguf export cannot express mlp=relu2 with qk_norm=true: .*{gguf}"):
            export(run, "gguf", tmp_path / "gguf")
        return
    import gguf as gguf_package

    export(run, "gguf", tmp_path / "gguf")
    assert "note: llama.cpp computes GELU in its tanh form" in capsys.readouterr().err  # mlp=gelu_exact
    reader = gguf_package.GGUFReader(tmp_path / "gguf" / "model.gguf")
    assert reader.get_field("general.architecture").contents() == "gpt2"
