"""train.parallel: FSDP2 against DDP and one process, exact resume from sharded checkpoints, memory per process."""

import json
import shutil

import pytest
import torch
from helpers import TINY, read_metrics, run_cli, torchrun

from minigpt.checkpoint import SHARDS, checkpoint_dir, load_checkpoint
from minigpt.config import load_config
from minigpt.errors import MinigptError
from minigpt.loader import load_model
from minigpt.model import GPT, GPTConfig
from minigpt.train.trainer import train


@pytest.mark.slow
def test_fsdp_matches_ddp_and_one_process_and_resumes_exactly(char_data, tmp_path):
    common = [
        f"data.dir={char_data}",
        *TINY,
        "train.max_steps=8",
        "train.log_interval=1",
        "train.eval_interval=4",
        "train.checkpoint_interval=4",
    ]
    single = run_cli("train", "-", *common, "train.grad_accum=2", f"out_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    for parallel in ("ddp", "fsdp"):
        options = [*common, f"train.parallel={parallel}", f"out_dir={tmp_path / parallel}"]
        run = torchrun("-m", "minigpt", "train", "-", *options)
        assert run.returncode == 0, run.stderr[-2000:]
    one, ddp, fsdp = (read_metrics(tmp_path / name) for name in ("single", "ddp", "fsdp"))
    assert [m["step"] for m in one] == [m["step"] for m in ddp] == [m["step"] for m in fsdp]
    for a, b, c in zip(one, ddp, fsdp):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-5) and c[key] == pytest.approx(a[key], abs=1e-5), (
                    a,
                    b,
                    c,
                )

    # the checkpoint holds the shards and a whole model that loads as any other
    final = checkpoint_dir(tmp_path / "fsdp", 8)
    assert (final / SHARDS / ".metadata").is_file()
    model, _, source = load_model(tmp_path / "fsdp", latest=True)
    assert source.record.step == 8 and source.record.config.train.parallel == "fsdp"
    ddp_weights = load_checkpoint(tmp_path / "ddp", latest=True).weights
    for name, tensor in load_checkpoint(final).weights.items():
        torch.testing.assert_close(tensor, ddp_weights[name], atol=1e-5, rtol=0)

    # drop the last checkpoint: resuming from step 4's shards must give every later loss bit for bit
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed_dir)
    shutil.rmtree(checkpoint_dir(resumed_dir, 8))
    options = [*common, "train.parallel=fsdp", f"out_dir={resumed_dir}", "--resume"]
    resumed = torchrun("-m", "minigpt", "train", "-", *options)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "step_0000004" in resumed.stderr
    assert read_metrics(resumed_dir) == fsdp


SHARD_SIZES = """
import json, pathlib, sys, torch, torch.distributed as dist
from minigpt.config import TrainConfig
from minigpt.train.fsdp import local_numel, shard_model
from minigpt.model import GPT, GPTConfig
from minigpt.train.optim import Optimizers

dist.init_process_group("gloo")
config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
sizes = {}
for sharded in (False, True):
    torch.manual_seed(0)
    model = GPT(config)
    if sharded:
        shard_model(model, torch.device("cpu"), torch.float32)
    optimizer = Optimizers(model, TrainConfig())
    x = torch.randint(0, 64, (2, 16))
    model(x, x)[1].backward()
    optimizer.step(torch.amp.GradScaler(enabled=False))
    sizes["sharded" if sharded else "whole"] = local_numel(model, optimizer.optimizers)
# one file a rank: two ranks printing to one pipe can run their lines together
out = pathlib.Path(sys.argv[1]) / f"rank{dist.get_rank()}.json"
out.write_text(json.dumps({"rank": dist.get_rank(), **sizes}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp_halves_parameter_and_optimizer_memory_per_process(tmp_path):
    script = tmp_path / "shard_sizes.py"
    script.write_text(SHARD_SIZES)
    run = torchrun(script, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    ranks = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    n_params = sum(
        p.numel() for p in GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)).parameters()
    )
    whole = ranks[0]["whole"]
    assert whole == 3 * n_params  # each weight and its two AdamW moments
    for r in ranks:
        assert r["whole"] == whole
        assert r["sharded"] == whole // 2  # every dimension sharded here is even: exactly half each


def test_fsdp_refuses_muon_lora_and_unknown_modes():
    with pytest.raises(MinigptError, match="train.optimizer=muon cannot be used with train.parallel=fsdp"):
        load_config(None, ["train.parallel=fsdp", "train.optimizer=muon"])
    with pytest.raises(MinigptError, match="train.lora cannot be used with train.parallel=fsdp"):
        load_config(None, ["train.parallel=fsdp", "train.lora.rank=4"])
    with pytest.raises(MinigptError, match="train.parallel is 'zero'; expected one of ddp, fsdp"):
        load_config(None, ["train.parallel=zero"])


def test_resume_with_another_parallel_mode_is_refused(char_data, tmp_path):
    config = load_config(None, [f"data.dir={char_data}", f"out_dir={tmp_path}", *TINY, "train.max_steps=2"])
    train(config)
    other = load_config(
        None, [f"data.dir={char_data}", f"out_dir={tmp_path}", *TINY, "train.max_steps=4", "train.parallel=fsdp"]
    )
    with pytest.raises(MinigptError, match="written with train.parallel=ddp; resume with the same"):
        train(other, resume=True)
