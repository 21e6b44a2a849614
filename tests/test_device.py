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


@pytest.mark.parametrize("faster", [torch.float32, torch.bfloat16])
def test_auto_trains_in_the_dtype_measured_faster_and_a_resume_keeps_it(char_data, tmp_path, monkeypatch, faster):
    from helpers import TINY

    from minigpt.checkpoint import load_checkpoint
    from minigpt.config import load_config
    from minigpt.train import precision
    from minigpt.train import trainer as train_module

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    measured = []

    def timed(run, candidates, repeats=2):
        for dtype in candidates:
            run(dtype)  # the real forward and backward, once each
        measured.append(candidates)
        return {dtype: (1.0 if dtype == faster else 2.0) for dtype in candidates}

    monkeypatch.setattr(precision, "time_dtypes", timed)
    overrides = [f"data.dir={char_data}", f"out_dir={tmp_path / 'run'}", *TINY, "dtype=auto"]
    probe = load_config(None, [*overrides, f"out_dir={tmp_path / 'probe'}"])  # a Trainer alone: no lock, no run
    trainer = train_module.Trainer(probe, resume=False, rank=0, world_size=1, local_rank=0)
    assert trainer.dtype == faster and measured == [(torch.float32, torch.bfloat16)]
    assert all(p.grad is None for p in trainer.model.parameters())  # the timing leaves no gradients behind
    train_module.train(load_config(None, [*overrides, "train.max_steps=2"]))
    assert load_checkpoint(tmp_path / "run").record.dtype == str(faster).removeprefix("torch.")
    other = torch.bfloat16 if faster == torch.float32 else torch.float32
    monkeypatch.setattr(precision, "time_dtypes", lambda run, c, repeats=2: {other: 1.0, faster: 2.0})
    resumed = train_module.Trainer(
        load_config(None, [*overrides, "train.max_steps=4"]), resume=True, rank=0, world_size=1, local_rank=0
    )
    assert resumed.dtype == faster  # the run's own choice, not a new measurement


def test_the_dtype_timing_runs_on_a_bounded_slice_of_a_big_batch(char_data, tmp_path, monkeypatch):
    """A wide run's whole batch would take a minute a pass: dtype=auto times DTYPE_TIMING_TOKENS tokens."""
    from helpers import TINY

    from minigpt.config import load_config
    from minigpt.model import GPT
    from minigpt.train import precision
    from minigpt.train.trainer import Trainer

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    shapes = []

    def timed(run, candidates, repeats=2):
        for dtype in candidates:
            run(dtype)
        return {dtype: 1.0 for dtype in candidates}

    monkeypatch.setattr(precision, "time_dtypes", timed)
    overrides = [f"data.dir={char_data}", f"out_dir={tmp_path / 'run'}", *TINY, "dtype=auto", "train.batch_size=256"]
    original_forward = GPT.forward
    monkeypatch.setattr(
        GPT,
        "forward",
        lambda self, idx, *a, **k: shapes.append(tuple(idx.shape)) or original_forward(self, idx, *a, **k),
    )
    Trainer(load_config(None, overrides), resume=False, rank=0, world_size=1, local_rank=0)
    block = load_config(None, overrides).model.block_size
    assert shapes == [(precision.DTYPE_TIMING_TOKENS // block, block)] * 2
