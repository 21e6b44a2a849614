"""minigpt.nn.int8: int8 weights within half a quantization step, the layers it replaces, and the commands."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import naive_generate, repo_env, run_main, save_untrained_run
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


@pytest.fixture(params=["native", "bf16"])
def kernel(request, monkeypatch):
    """Int8Linear layers made in this test use this kernel: minigpt's integer product, or the bf16 fallback."""
    if request.param == "native" and not int8.native_int8_kernel():
        pytest.skip("minigpt's int8 kernel is for Linux on x86 with a C++ compiler")
    if request.param == "bf16":
        monkeypatch.setattr(int8, "native_int8_kernel", lambda: False)
    return request.param


def test_int8_linear_is_within_its_rounding_of_the_float_layer(kernel):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    quantized = Int8Linear(linear)
    assert quantized.native == (kernel == "native")
    step = linear.weight.abs().amax(dim=1) / 127  # one quantization step per output row
    weight = quantized.dequantized_weight()
    scale_rounding = 2**-8 if kernel == "bf16" else 1e-6  # the bf16 kernel keeps its scales in bf16
    assert ((weight - linear.weight).abs() <= step[:, None] / 2 + scale_rounding * linear.weight.abs()).all()
    for rows in (1, MAX_KERNEL_ROWS + 8):  # one token; a long prefill (the bf16 kernel dequantizes for it)
        x = torch.randn(rows, 64)
        y = quantized(x).float()
        exact = linear(x).detach()
        bound = x.abs().sum(dim=1, keepdim=True) * step / 2  # each weight is off by at most half a step
        if kernel == "native":  # and each input by half of its row's step: 8 bits over the row's largest value
            input_step = x.abs().amax(dim=1, keepdim=True) / 127
            bound = bound + input_step * weight.abs().sum(dim=1) / 2 + 1e-5
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
    if kernel == "native":  # each row is rounded to int8 with its own scale: the same numbers either way
        assert torch.equal(by_rows, at_once)
    else:
        torch.testing.assert_close(by_rows.float(), at_once.float(), rtol=2e-2, atol=2e-2)
    tolerance = 2e-2
    reference = F.linear(x, quantized.dequantized_weight())
    torch.testing.assert_close(at_once.float(), reference, rtol=tolerance, atol=tolerance)


PRODUCT = """
import sys, torch
from minigpt.nn import int8_native
torch.ops.load_library(int8_native.built_library(sys.argv[1]))
torch.manual_seed(0)
x, weight = torch.randn(7, 96), torch.randint(-127, 128, (10, 96), dtype=torch.int8)
scale, bias = torch.rand(10), torch.randn(10)
y = torch.ops.minigpt.int8_linear(x, int8_native.pack(weight), scale, bias)
torch.save([x, weight, scale, bias, y], sys.argv[2])
"""


@pytest.mark.skipif(not int8.native_int8_kernel(), reason="needs minigpt's int8 kernel (x86 Linux)")
def test_the_avx2_build_of_the_kernel_gives_this_cpus_numbers(tmp_path):
    # 10 outputs: two groups of 4 and a padded one; 7 rows: whole groups of rows and single ones on either ISA
    script = tmp_path / "product.py"
    script.write_text(PRODUCT)
    for arch in ("haswell", "native"):  # haswell: AVX2 without VNNI, whatever this CPU has
        command = [sys.executable, script, arch, tmp_path / arch]
        run = subprocess.run(command, capture_output=True, text=True, env=repo_env())
        assert run.returncode == 0, run.stderr[-2000:]
    x, weight, scale, bias, avx2 = torch.load(tmp_path / "haswell")
    # the integer sums are exact on both; scaling them may round the last bit differently
    torch.testing.assert_close(avx2, torch.load(tmp_path / "native")[-1], rtol=1e-6, atol=1e-5)
    x_scale = x.abs().amax(dim=1, keepdim=True) / 127
    exact = torch.round(x / x_scale) @ weight.float().T * x_scale * scale + bias
    torch.testing.assert_close(avx2, exact)


@pytest.mark.skipif(not int8.native_int8_kernel(), reason="needs minigpt's int8 kernel (x86 Linux)")
def test_without_a_compiler_int8_layers_fall_back_to_bf16_with_one_line(tmp_path):
    env = repo_env(CXX=str(tmp_path / "no-such-compiler"), MINIGPT_CACHE=str(tmp_path / "cache"))
    code = "from minigpt.nn.int8 import Int8Linear; import torch; print(Int8Linear(torch.nn.Linear(64, 8)).native)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
    assert run.stderr.count("\n") == 1 and "int8 kernel could not be built" in run.stderr, run.stderr
    assert "no-such-compiler" in run.stderr and "int8 layers multiply in bf16" in run.stderr


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
