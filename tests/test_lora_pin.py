"""A LoRA run is pinned to the base it was trained on: the exact checkpoint, checked by its sha256."""

import io
import json
import os
import re
import shutil
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


def _as_before_pins(lora, init_from: str) -> None:
    """Make the LoRA run's checkpoints look as a run from before bases were pinned: no pin, init_from as given."""
    for meta in lora.glob("checkpoints/step_*/meta.json"):
        record = json.loads(meta.read_text())
        record.pop("base", None)
        record["config"]["train"]["init_from"] = init_from
        meta.write_text(json.dumps(record))


def test_an_older_lora_run_on_a_hub_name_finds_it_in_the_local_cache_only(pinned_lora, tmp_path, monkeypatch):
    """Before pins, init_from held a bare name: `gpt2` (a Hub model) and `base` (a folder) look alike. Such a
    run loads its base from this machine's Hugging Face cache when the name is there, and never goes online."""
    import huggingface_hub

    root, pinned, _ = pinned_lora
    lora = tmp_path / "old_lora"
    shutil.copytree(pinned, lora)
    cache = tmp_path / "hub"  # the cache layout: models--NAME/refs/main names the snapshot folder
    shutil.copytree(root / "base" / "checkpoints" / "step_0000020", cache / "models--tinybase" / "snapshots" / "abc1")
    (cache / "models--tinybase" / "refs").mkdir()
    (cache / "models--tinybase" / "refs" / "main").write_text("abc1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    expected, _ = load(pinned)
    _as_before_pins(lora, "tinybase")
    model, _ = load(lora)
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), model.state_dict().values()))
    _as_before_pins(lora, "base")  # a folder of the directory it was trained in, not here and not cached
    with pytest.raises(MinigptError, match=r"init_from=base, is no folder in .* and no Hugging Face model"):
        load(lora)


def test_a_pinned_hub_base_gone_from_the_cache_is_fetched_at_its_revision_or_named(pinned_lora, tmp_path):
    """A base pinned from the Hub is its snapshot folder in the cache; if the cache was cleared, that revision is
    fetched again. Offline (as the tests are) that fails in one line naming the model and its revision."""
    _, pinned, _ = pinned_lora
    lora = tmp_path / "hub_lora"
    shutil.copytree(pinned, lora)
    for meta in lora.glob("checkpoints/step_*/meta.json"):
        record = json.loads(meta.read_text())
        gone = str(tmp_path / "cleared" / "snapshots" / "abc1")
        record["base"] = {**record["base"], "init_from": "someone/tiny", "revision": "abc1", "path": gone}
        meta.write_text(json.dumps(record))
    with pytest.raises(MinigptError, match=r"^the Hugging Face model someone/tiny at revision abc1 could not be had"):
        load(lora)
