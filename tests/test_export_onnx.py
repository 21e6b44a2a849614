"""ONNX export: ONNX Runtime's logits equal minigpt's for other batch sizes and lengths than the traced ones."""

import numpy as np
import pytest
import torch
from helpers import save_untrained_run
from tokenizers import Tokenizer

from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer

# rotary positions, RMSNorm, SwiGLU, QK-norm, grouped-query attention, untied head: the most that can go wrong
LLAMA_LIKE = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=2, tie_weights=False)
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.slow  # torch.onnx.export traces the model: several seconds
def test_onnx_runtime_logits_equal_minigpts(tmp_path, capfd):
    from minigpt.formats.export import export

    tokenizer = CharTokenizer(list("abcdefgh "), with_eot=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=24, n_layer=2, n_head=4, n_embd=32, **LLAMA_LIKE)).eval()
    run = save_untrained_run(tmp_path / "run", model, tokenizer)
    files = export(run, "onnx", tmp_path / "onnx")
    assert {"model.onnx", "tokenizer.json"} <= {f.name for f in files}
    assert "torchvision" not in capfd.readouterr().err  # the exporter's notes on operators a GPT never uses
    hf_tokenizer = Tokenizer.from_file(str(tmp_path / "onnx" / "tokenizer.json"))
    assert hf_tokenizer.encode("bad cafe").ids == tokenizer.encode("bad cafe")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    for batch, length in [(1, 24), (3, 7), (2, 1)]:
        ids = torch.randint(0, 10, (batch, length))
        (logits,) = session.run(None, {"input_ids": ids.numpy()})
        with torch.no_grad():
            expected = model(ids)[0].numpy()
        assert logits.shape == (batch, length, 10)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
