"""The run record (minigpt/run.py): one typed owner of a checkpoint's metadata, old checkpoints included."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY

from minigpt.checkpoint import checkpoint_dir, load_checkpoint
from minigpt.config import load_config
from minigpt.data.prepare import prepare
from minigpt.errors import MinigptError
from minigpt.infer.sample import generate_text
from minigpt.infer.sampling import SamplingParams
from minigpt.loader import load_model
from minigpt.run import FORMAT, RunRecord
from minigpt.train.checkpointing import load_state_dict, run_record, state_dict
from minigpt.train.trainer import Trainer, train

LEGACY = Path(__file__).parent / "fixtures" / "legacy_run"  # written by minigpt 0.1's first release
LEGACY_CORPUS = "to be or not to be that is the question\nwhether tis nobler in the mind to suffer\n" * 40


def test_the_record_round_trips_through_json():
    config = load_config(None, ["model.n_layer=2", "train.lr=3e-4"])
    config.model.vocab_size = 77
    record = RunRecord(step=12, config=config, tokenizer="char", elapsed=1.5, val_loss=2.0, loader=[{"position": 3}])
    again = RunRecord.from_json(record.to_json())
    assert again == record and again.config.model.vocab_size == 77 and again.format == FORMAT


def test_a_record_from_a_newer_minigpt_or_not_a_record_is_one_line(tmp_path):
    config = load_config(None)
    text = json.dumps({**json.loads(RunRecord(step=1, config=config, tokenizer="char").to_json()), "format": 99})
    with pytest.raises(MinigptError, match="newer minigpt"):
        RunRecord.from_json(text)
    with pytest.raises(MinigptError, match="not a minigpt run record"):
        RunRecord.from_json("{}")


def test_a_checkpoint_of_the_first_release_loads_samples_and_resumes(tmp_path):
    checkpoint = load_checkpoint(LEGACY)
    assert checkpoint.record.format == 1 and checkpoint.record.step == 4
    assert checkpoint.record.config.model.vocab_size == 19 and checkpoint.record.tokenizer == "char"
    model, tokenizer, source = load_model(LEGACY)
    assert source.record.step == 4
    text = generate_text(model, tokenizer, "to be", SamplingParams(max_tokens=5, temperature=0))[0]
    assert len(text) == 5

    (tmp_path / "corpus.txt").write_text(LEGACY_CORPUS)
    prepare(str(tmp_path / "corpus.txt"), "char", tmp_path / "data", num_proc=1, progress=False)
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    meta = run / "checkpoints" / "step_0000004" / "meta.json"  # its data folder is here now
    meta.write_text(meta.read_text().replace("/tmp/legacy/data", str(tmp_path / "data")))
    overrides = [f"data.dir={tmp_path / 'data'}", f"out_dir={run}", "train.max_steps=6", "train.progress=false"]
    saved = (LEGACY / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(saved)
    summary = train(load_config(tmp_path / "config.yaml", overrides), resume=True)
    assert summary["step"] == 6 and load_checkpoint(run, latest=True).record.format == FORMAT


def test_the_step_folder_is_named_in_one_place(tmp_path):
    assert checkpoint_dir(tmp_path, 42) == tmp_path / "checkpoints" / "step_0000042"


def test_the_trainer_leaves_the_callers_config_alone(char_data, tmp_path):
    config = load_config(None, [f"data.dir={char_data}", f"out_dir={tmp_path / 'run'}", *TINY])
    before = repr(config)
    trainer = Trainer(config, resume=False, rank=0, world_size=1, local_rank=0)
    assert repr(config) == before and trainer.config.model.vocab_size == 62


def test_trainer_state_round_trips(char_data, tmp_path):
    """state_dict / load_state_dict (checkpointing.py) carry optimizer moments, the scaler and RNG states."""
    config = load_config(None, [f"data.dir={char_data}", f"out_dir={tmp_path / 'a'}", *TINY])
    a = Trainer(config, resume=False, rank=0, world_size=1, local_rank=0)
    for _ in range(3):
        a.train_step()
    record, state = run_record(a, val_loss=None), copy.deepcopy(state_dict(a))  # like torch's, it holds references
    weights = {k: v.clone() for k, v in a.model.state_dict().items()}
    expected = [a.train_step().item() for _ in range(2)]
    b = Trainer(
        load_config(None, [f"data.dir={char_data}", f"out_dir={tmp_path / 'b'}", *TINY]),
        resume=False,
        rank=0,
        world_size=1,
        local_rank=0,
    )
    b.model.load_state_dict(weights)
    load_state_dict(b, record, state)  # RNG states included: b draws what a drew
    assert b.step == 3
    assert [b.train_step().item() for _ in range(2)] == expected


def test_fp16_scaler_state_is_saved_and_restored(char_data, tmp_path):
    """A resumed fp16 run used to restart at scale 65,536; the scaler's state now travels with the run.
    (fp16 autocast needs a GPU: the scaler itself runs on any device, which is what is checked.)"""
    config = load_config(None, [f"data.dir={char_data}", f"out_dir={tmp_path / 'run'}", *TINY])
    trainer = Trainer(config, resume=False, rank=0, world_size=1, local_rank=0)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    trainer.scaler.scale(torch.ones(()))  # the scaler starts its state lazily
    trainer.scaler.update(new_scale=8.0)
    state = state_dict(trainer)
    assert state["scaler"]["scale"] == 8.0
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    trainer.scaler = fresh
    load_state_dict(trainer, run_record(trainer, val_loss=None), state)
    assert fresh.get_scale() == 8.0


def test_a_run_of_skipped_steps_stops(char_data, tmp_path):
    """fp16 (or on_nan=skip) skips a step whose gradients overflow; a diverged run used to skip for ever."""
    from minigpt.train.step import MAX_SKIPPED_STEPS

    out = tmp_path / "run"
    config = load_config(None, [f"data.dir={char_data}", f"out_dir={out}", *TINY, "train.on_nan=skip", "train.lr=1e30"])
    trainer = Trainer(config, resume=False, rank=0, world_size=1, local_rank=0)
    with torch.no_grad():
        trainer.model.transformer.wte.weight.fill_(float("nan"))  # every step from now on is non-finite
    with pytest.raises(MinigptError, match=f"{MAX_SKIPPED_STEPS + 1} steps in a row"):
        trainer.run()
    assert trainer.step == MAX_SKIPPED_STEPS + 1
