"""dtype auto: what each phase of work runs in, per device."""

import pytest
import torch

from minigpt import device as device_module
from minigpt.device import inference, resolve_dtype
from minigpt.errors import MinigptError

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_trains_in_bf16_where_the_cpu_has_it_and_generates_in_float32(monkeypatch, has_bf16):
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: has_bf16)
    assert resolve_dtype("auto", CPU, phase="train") == (torch.bfloat16 if has_bf16 else torch.float32)
    assert resolve_dtype("auto", CPU, phase="generate") == torch.float32  # one-token steps are slower in bf16
    assert resolve_dtype("bfloat16", CPU, phase="generate") == torch.bfloat16  # asked for by name: obeyed


def test_float16_on_the_cpu_is_one_line():
    with pytest.raises(MinigptError, match="float16 is for GPUs"):
        resolve_dtype("float16", CPU)


def test_inference_gives_the_model_back_in_its_mode():
    model = torch.nn.Linear(2, 2).train()
    with inference(model, CPU, torch.float32):
        assert not model.training and not torch.is_grad_enabled()
    assert model.training
