"""Write a model as an ONNX graph: token ids (batch, sequence) in, logits (batch, sequence, vocab) out.

    save_onnx(model, "out/model.onnx")

Batch size and sequence length are dynamic axes (the sequence up to block_size), so ONNX Runtime
runs any batch of equal-length rows. The graph has no KV cache: each call reads the whole text.
"""

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

OPSET = 18


class _LogitsOnly(nn.Module):
    """GPT.forward returns (logits, loss); an exported graph wants one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]


def save_onnx(model, path: str | Path) -> Path:
    """Export model (float32, eval mode) to the ONNX file path; returns it."""
    path = Path(path)
    block_size = model.config.block_size
    example = torch.zeros((2, min(8, block_size)), dtype=torch.long)
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=2, max=block_size)
    wrapper = _LogitsOnly(model.float().eval())
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}},
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path))
    return path


@contextmanager
def _quiet_exporter():
    """Silence the exporter's notes on its own internals: its warnings, and the log line its registry
    writes for each torchvision operator it skips when torchvision is absent (operators a GPT never uses)."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")

    def not_torchvision(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")

    registry.addFilter(not_torchvision)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        registry.removeFilter(not_torchvision)
