"""minigpt.nn.int8: int8 weights within half a quantization step, the layers it replaces, and the commands."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import naive_generate, run_main, save_untrained_run
from test_sample import widen_weights
from torch import nn

from minigpt import GPT, GPTConfig
from minigpt.bench.generate import bench_generation
from minigpt.errors import MinigptError
from minigpt.loader import check_quantize
from minigpt.nn import int8
from minigpt.nn.int8 import MAX_KERNEL_ROWS, Int8Linear, quantize_int8
from minigpt.nn.lora import LoRALinear
from minigpt.tokenizers import load_tokenizer


@pytest.fixture(params=["x86", "bf16"])
def kernel(request, monkeypatch):
    """Int8Linear layers made in this test use this kernel: x86's integer product, or the bf16 fallback."""
    if request.param == "x86" and not int8.x86_int8_kernels():
        pytest.skip("this PyTorch has no x86 int8 kernels (fbgemm)")
    if request.param == "bf16":
        monkeypatch.setattr(int8, "x86_int8_kernels", lambda: False)
    return request.param


def test_int8_linear_is_within_its_rounding_of_the_float_layer(kernel):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    quantized = Int8Linear(linear)
    assert bool(quantized.packed) == (kernel == "x86")
    step = linear.weight.abs().amax(dim=1) / 127  # one quantization step per output row
    weight = quantized.dequantized_weight()
    scale_rounding = 2**-8 if kernel == "bf16" else 1e-6  # the bf16 kernel keeps its scales in bf16
    assert ((weight - linear.weight).abs() <= step[:, None] / 2 + scale_rounding * linear.weight.abs()).all()
    for rows in (1, MAX_KERNEL_ROWS + 8):  # one token; a long prefill (the bf16 kernel dequantizes for it)
        x = torch.randn(rows, 64)
        y = quantized(x).float()
        exact = linear(x).detach()
        bound = x.abs().sum(dim=1, keepdim=True) * step / 2  # each weight is off by at most half a step
        if kernel == "x86":  # and each input by half of its own step: 7 bits over the call's range, zero included
            input_step = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
            bound = bound + weight.abs().sum(dim=1) * input_step / 2 + 1e-5
        else:
            bound = bound + 0.01 * exact.abs() + 0.02  # the product itself runs in bf16
        assert ((y - exact).abs() <= bound).all()
        assert not torch.allclose(y, exact, atol=1e-5)  # it really is quantized


def test_one_row_at_a_time_and_all_rows_at_once_agree(kernel):
    torch.manual_seed(0)
    quantized = Int8Linear(nn.Linear(32, 16, bias=False))
    x = torch.randn(MAX_KERNEL_ROWS + 1, 32)
    by_rows = torch.cat([quantized(row[None]) for row in x])  # one row at a time: the decode kernel
    at_once = quantized(x)  # a prefill: over MAX_KERNEL_ROWS rows the bf16 kernel dequantizes first
    # x86 rounds a call's inputs to one scale: all rows at once round more coarsely than one row
    tolerance = 5e-2 if kernel == "x86" else 2e-2
    torch.testing.assert_close(by_rows.float(), at_once.float(), rtol=tolerance, atol=tolerance)
    reference = F.linear(x, quantized.dequantized_weight())
    torch.testing.assert_close(at_once.float(), reference, rtol=tolerance, atol=tolerance)


def test_only_plain_linears_of_an_aligned_width_are_replaced():
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8), LoRALinear(8, 32, rank=2))
    quantize_int8(model)
    assert isinstance(model[0], Int8Linear)
    assert type(model[2]) is nn.Linear  # 24 inputs: not a multiple of 16, which the kernel needs
    assert isinstance(model[3], LoRALinear)
    assert model(torch.randn(3, 32)).shape == (3, 32)


@pytest.fixture(scope="module")
def models(char_data):
    torch.manual_seed(0)
    vocab_size = load_tokenizer("char", char_data).vocab_size
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=64))
    widen_weights(model, std=0.15)
    quantized = GPT(model.config)
    quantized.load_state_dict(model.state_dict())
    return model, quantize_int8(quantized.eval())


def test_a_quantized_gpt_gives_nearly_the_same_logits(models):
    model, quantized = models
    assert sum(isinstance(m, Int8Linear) for m in quantized.modules()) == 2 * 4 + 1  # 4 per block + the head
    idx = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        exact, got = model(idx)[0], quantized(idx)[0].float()
    assert (got - exact).abs().max() < 0.1 * exact.abs().max()  # x86 rounds inputs too; eval measures the loss
    assert (got.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9


def test_a_quantized_gpt_decodes_with_its_cache_as_without(models):
    _, quantized = models
    idx = torch.randint(0, quantized.config.vocab_size, (1, 5))
    cached = quantized.generate(idx, 30, temperature=0)
    recomputed = naive_generate(quantized, idx, 30)
    assert torch.equal(cached, recomputed)


def test_quantizing_on_a_gpu_or_by_an_unknown_method_is_refused():
    with pytest.raises(MinigptError, match="for generation on the CPU"):
        check_quantize("int8", torch.device("cuda"))
    with pytest.raises(MinigptError, match="expected one of: int8"):
        check_quantize("int4", torch.device("cpu"))
    check_quantize(None, torch.device("cuda"))  # nothing asked, nothing to refuse


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, char_data, models):
    model, _ = models
    return save_untrained_run(
        tmp_path_factory.mktemp("quantize") / "run", model, load_tokenizer("char", char_data), char_data
    )


def test_sample_and_eval_take_quantize_int8(run_dir, capsys):
    code, out, err = run_main(
        capsys, "sample", run_dir, "--prompt", "ROMEO:", "--temperature", "0", "--quantize", "int8"
    )
    assert code == 0 and out.startswith("ROMEO:") and len(out) > len("ROMEO:\n") + 100
    assert "float32" in err and ", int8 weights" in err  # the start-up line says how the weights are kept
    losses = {}
    for quantize in ([], ["--quantize", "int8"]):
        code, out, _ = run_main(capsys, "eval", run_dir, "--json", *quantize)
        assert code == 0
        losses[bool(quantize)] = json.loads(out)["loss"]
    assert losses[True] != losses[False] and abs(losses[True] - losses[False]) < 0.05 * losses[False]


def test_an_unknown_quantization_is_one_line_with_exit_code_2(run_dir, capsys):
    code, out, err = run_main(capsys, "sample", run_dir, "--quantize", "int4")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "invalid choice: 'int4' (choose from 'int8')" in err


def test_the_generation_benchmark_times_int8_weights_on_a_cpu():
    result = bench_generation(
        n_layer=1, n_head=2, n_embd=32, block_size=32, new_tokens=10, recompute_tokens=5, batch_sizes=(1,)
    )
    assert result["int8_tokens_per_s"] > 0 and result["cache_tokens_per_s"] > 0
