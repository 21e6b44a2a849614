"""llama.cpp runs the GGUF export: greedy tokens equal minigpt's (opt-in: needs llama-cpp-python built)."""

import importlib.util

import pytest
from helpers import REPO

pytest.importorskip("llama_cpp")


def _script():
    spec = importlib.util.spec_from_file_location("check_llama_cpp", REPO / "scripts" / "check_llama_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_llama_cpp_greedy_tokens_equal_minigpts(tmp_path):
    script = _script()
    for name, path in script.own_models(tmp_path).items():
        result = script.check(path, "the quick brown fox", n_tokens=20)
        assert result["tokens_equal"], name
        assert result["greedy_equal"], (name, result)
        assert result["max_logit_difference"] < 1e-2, (name, result)
