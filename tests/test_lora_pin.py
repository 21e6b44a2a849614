"""A LoRA run is pinned to the base it was trained on: the exact checkpoint, checked by its sha256."""

import io
import os
import re
from contextlib import redirect_stderr

import pytest
import torch
from helpers import TINY

from minigpt.checkpoint import load_checkpoint
from minigpt.config import load_config
from minigpt.errors import MinigptError
from minigpt.loader import load
from minigpt.train.trainer import train

pytestmark = pytest.mark.usefixtures("no_network")


def _train(data_dir, out_dir, *overrides, resume=False):
    base = ["train.lr=3e-3", "train.eval_interval=10", "train.checkpoint_interval=10"]
    config = load_config(None, [f"data.dir={data_dir}", f"out_dir={out_dir}", *TINY, *base, *overrides])
    return train(config, resume=resume)


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks the Hugging Face Hub for a model."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"the Hub was asked for {args}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def _lora_on_base(char_data, root, keep: int):
    """A base run (out_dir `base`, relative) and a LoRA run on it, both trained from root."""
    _train(char_data, "base", "train.max_steps=20", f"train.keep_checkpoints={keep}")
    _train(char_data, "lora", "train.init_from=base", "train.lora.rank=2", "train.max_steps=4")
    return root / "lora"


@pytest.fixture(scope="module")
def pinned_lora(char_data, tmp_path_factory):
    """A LoRA run on a base given by a relative path, and what training it printed."""
    root = tmp_path_factory.mktemp("pinned")
    start, printed = os.getcwd(), io.StringIO()
    os.chdir(root)
    try:
        with redirect_stderr(printed):
            lora = _lora_on_base(char_data, root, keep=2)
    finally:
        os.chdir(start)
    return root, lora, printed.getvalue()


def test_lora_run_loads_from_another_folder_without_the_hub(pinned_lora, monkeypatch, no_hub):
    root, lora, _ = pinned_lora
    pin = load_checkpoint(lora).record.base
    assert pin["path"] == str(root / "base" / "checkpoints" / "step_0000020") and len(pin["sha256"]) == 64
    monkeypatch.chdir(root)
    here, _ = load(lora)
    monkeypatch.chdir(lora)  # `base` means nothing here, and must not be sent to the Hub
    there, _ = load(lora)
    assert all(torch.equal(a, b) for a, b in zip(here.state_dict().values(), there.state_dict().values()))


def test_train_start_names_the_source_and_what_lora_trains(pinned_lora):
    _, _, printed = pinned_lora
    lines = [line for line in printed.splitlines() if line.startswith("init_from ")]
    assert len(lines) == 1, printed
    assert re.fullmatch(
        r"init_from base \(step 20\): /\S+/base/checkpoints/step_0000020; "
        r"LoRA: [\d,]+ trainable of [\d.]+M parameters \(\d+\.\d\d%\)",
        lines[0],
    )


def test_lora_run_keeps_its_base_as_the_base_trains_on(char_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lora = _lora_on_base(char_data, tmp_path, keep=5)
    before, _ = load(lora)
    _train(char_data, "base", "train.max_steps=40", "train.keep_checkpoints=5", resume=True)
    assert load_checkpoint("base").path.name != "step_0000020"  # best moved on; the pinned one is still there
    after, _ = load(lora)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))


def test_lora_run_refuses_a_base_that_changed(char_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lora = _lora_on_base(char_data, tmp_path, keep=1)
    _train(char_data, "base", "train.max_steps=40", "train.keep_checkpoints=1", resume=True)
    assert not (tmp_path / "base" / "checkpoints" / "step_0000020").exists()  # rotated away
    with pytest.raises(MinigptError, match="the base of this LoRA run changed: .*step_0000020 was sha256"):
        load(lora)
    with pytest.raises(MinigptError, match="the base of this LoRA run changed"):  # nor does it resume on it
        _train(char_data, "lora", "train.init_from=base", "train.lora.rank=2", "train.max_steps=8", resume=True)
