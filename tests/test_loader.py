"""minigpt.load: the function on every access, whatever has been imported; local-looking paths that do
not exist are errors naming them, never Hub repository ids."""

import importlib
import pkgutil

import pytest
import torch
from serve_helpers import tiny_run

import minigpt
from minigpt.errors import MinigptError


def test_minigpt_load_is_the_function_after_every_submodule_is_imported(tmp_path):
    run = tiny_run(tmp_path / "run")
    for module in pkgutil.walk_packages(minigpt.__path__, "minigpt."):
        if module.name == "minigpt.__main__" or module.name.endswith(("harness", "onnx", "gguf")):
            continue  # the command itself; optional extras (lm-eval, onnx, gguf) may be missing
        importlib.import_module(module.name)
    assert callable(minigpt.load)
    first = None
    for _ in range(3):  # the README's first line of Python, run again and again
        model, tokenizer = minigpt.load(run)
        logits, _ = model(torch.tensor([tokenizer.encode("To be")]))
        assert first is None or torch.equal(logits, first)
        first = logits


@pytest.mark.parametrize("path", ["./missing", "/no/such/run", "~/nowhere", "a/b/c", "{tmp}/missing"])
def test_a_missing_local_looking_path_is_an_error_naming_it_and_never_goes_to_the_hub(tmp_path, monkeypatch, path):
    import minigpt.formats.hf as hf

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hugging Face Hub was asked")

    monkeypatch.setattr(hf, "load_hf", no_hub)
    path = path.format(tmp=tmp_path)
    with pytest.raises(MinigptError, match=f"{path} does not exist"):
        minigpt.load(path)


def test_a_hub_looking_name_goes_to_the_hugging_face_loader(monkeypatch):
    import minigpt.formats.hf as hf

    asked = []
    monkeypatch.setattr(
        hf, "load_hf", lambda name: asked.append(name) or (_ for _ in ()).throw(MinigptError("offline"))
    )
    for name in ("gpt2", "Qwen/Qwen3-0.6B"):
        with pytest.raises(MinigptError, match="offline"):
            minigpt.load(name)
    assert asked == ["gpt2", "Qwen/Qwen3-0.6B"]
