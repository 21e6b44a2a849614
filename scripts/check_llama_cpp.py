"""Check that llama.cpp runs minigpt's GGUF export: same prompt tokens, same greedy tokens, close logits.

    pip install llama-cpp-python      # builds llama.cpp from source: several minutes on 2 cores
    python scripts/check_llama_cpp.py out/shakespeare_char --prompt "ROMEO:" --tokens 20

Without PATH it checks random-weight models of its own, for each llama.cpp architecture that
minigpt writes (gpt2 with a char vocabulary and with GPT-2's BPE, gpt2 without biases and with the
exact GELU as configs/shakespeare_char.yaml has them, llama with a trained BPE and grouped-query
attention, qwen3 with QK-norm, arcee with ReLU^2). Each line prints the largest difference between
llama.cpp's logits and minigpt's; for an exact-GELU model also the part of it that llama.cpp's tanh
GELU explains (minigpt's logits with one form against the other). Exit code 0 when every check passes.
tests/test_export_llama_cpp.py runs the same checks when llama_cpp is importable.
"""

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from minigpt.checkpoint import save_checkpoint
from minigpt.config import RunConfig
from minigpt.errors import MinigptError
from minigpt.formats.export import export
from minigpt.loader import load_model
from minigpt.model import GPT, GPTConfig
from minigpt.run import RunRecord
from minigpt.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog; the dog sleeps in the café — naïve, isn't it?\n\n  1234 "
ROPE = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)
MODELS = {
    "gpt2 (char vocabulary)": (dict(), "char"),
    "gpt2 (GPT-2's BPE)": (dict(), "gpt2"),
    "gpt2 (no biases, exact GELU: shakespeare_char)": (dict(bias=False, mlp="gelu_exact"), "char"),
    "llama (trained BPE, grouped-query attention, untied head)": (dict(ROPE, n_kv_head=2, tie_weights=False), "bpe"),
    "qwen3 (QK-norm)": (dict(ROPE, qk_norm=True), "bpe"),
    "arcee (ReLU^2, untied head)": (dict(ROPE, mlp="relu2", tie_weights=False), "bpe"),
}


def check(path, prompt: str, n_tokens: int = 20, outtype: str = "f32") -> dict:
    """Export PATH to GGUF, run it in llama.cpp, and compare with minigpt; returns what was compared."""
    from llama_cpp import Llama

    model, tokenizer, _ = load_model(path)
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), n_tokens, temperature=0)[0, len(ids) :].tolist()
        logits = model(torch.tensor([ids]))[0][0, -1].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        export(path, "gguf", Path(tmp) / "gguf", outtype=outtype)
        llm = Llama(
            str(Path(tmp) / "gguf" / "model.gguf"),
            n_ctx=model.config.block_size,
            n_threads=2,
            logits_all=True,  # scores of every position, so the last one is always at hand
            verbose=False,
        )
        # the prompt, and a text with multi-byte characters, runs of spaces and digits
        tokenized_equal = all(
            llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tokenizer.encode(text)
            for text in (prompt, TEXT)
        )
        llm.eval(ids)
        their_logits = np.array(llm.scores[llm.n_tokens - 1])[: model.config.vocab_size]
        greedy = []
        for _ in range(n_tokens):  # argmax by hand: no sampler settings in between
            token = int(np.argmax(llm.scores[llm.n_tokens - 1][: model.config.vocab_size]))
            greedy.append(token)
            llm.eval([token])
        llm.close()
    result = {
        "tokens_equal": tokenized_equal,
        "greedy_equal": greedy == expected,
        "max_logit_difference": float(np.abs(their_logits - logits).max()),
        "minigpt": expected,
        "llama.cpp": greedy,
        "text": tokenizer.decode(expected),
    }
    if model.config.mlp == "gelu_exact":
        result["tanh_gelu_difference"] = tanh_gelu_difference(model, ids)
    return result


@torch.no_grad()
def tanh_gelu_difference(model: GPT, ids: list[int]) -> float:
    """The largest change in the last position's logits when model's exact GELU becomes the tanh form."""
    tanh = GPT(dataclasses.replace(model.config, mlp="gelu")).eval()
    tanh.load_state_dict(model.state_dict())
    idx = torch.tensor([ids])
    return float((tanh(idx)[0][0, -1] - model(idx)[0][0, -1]).abs().max())


def own_models(folder: Path) -> dict[str, Path]:
    """Random-weight runs of each architecture, with weights large enough that greedy choices are clear."""
    runs = {}
    for i, (name, (overrides, kind)) in enumerate(MODELS.items()):
        if kind == "char":
            tokenizer = CharTokenizer.from_texts([TEXT, TEXT.upper()])
        elif kind == "gpt2":
            tokenizer = load_tokenizer("gpt2")
        else:
            tokenizer = BPETokenizer.train("bpe:320", [TEXT * 50])
        torch.manual_seed(i)
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64, **overrides)
        model = GPT(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(4.0)
        record = RunRecord(step=1, config=RunConfig(model=config), tokenizer=tokenizer.spec)
        save_checkpoint(folder / f"run{i}", record, model, {}, tokenizer, keep=1)
        runs[name] = folder / f"run{i}"
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help="a run's out_dir or checkpoint folder (default: models of its own)")
    parser.add_argument("--prompt", default="the quick brown fox")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--outtype", default="f32", help="f32 | f16 | q8_0 (greedy tokens may differ below f32)")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        runs = {args.path: Path(args.path)} if args.path else own_models(Path(tmp))
        for name, path in runs.items():
            result = check(path, args.prompt, args.tokens, args.outtype)
            passed = result["tokens_equal"] and result["greedy_equal"]
            ok &= passed
            difference = f"max logit difference {result['max_logit_difference']:.2e}"
            if "tanh_gelu_difference" in result:
                difference += f" (tanh against exact GELU in minigpt: {result['tanh_gelu_difference']:.2e})"
            print(f"{'PASS' if passed else 'FAIL'} {name}: {difference}; {result}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MinigptError as e:
        sys.exit(f"error: {e}")
