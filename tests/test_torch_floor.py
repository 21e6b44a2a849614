"""pyproject's torch floor is true: features of a newer torch are imported lazily, and asking for one on
an older torch is one line naming the version it needs. An older torch is simulated by hiding the feature."""

import subprocess
import sys

from helpers import REPO, TINY


def _python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_muon_on_a_torch_without_it_is_one_line(char_data, tmp_path):
    out = tmp_path / "run"
    hide_muon = "import sys, torch; del torch.optim.Muon; from minigpt.cli import main; main(sys.argv[1:])"
    overrides = [f"data.dir={char_data}", f"out_dir={out}", *TINY, "train.max_steps=2"]
    result = _python(hide_muon, "train", "-", *overrides, "train.optimizer=muon")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "train.optimizer=muon needs torch 2.9 or newer" in result.stderr
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    plain = _python(hide_muon, "train", "-", *overrides)  # the rest trains as before
    assert plain.returncode == 0, plain.stderr


def test_fsdp_on_a_torch_without_fully_shard_is_one_line():
    code = (
        "import torch, torch.distributed.fsdp as f; del f.fully_shard\n"
        "from minigpt.errors import MinigptError\n"
        "from minigpt.train.fsdp import shard_model\n"
        "try:\n"
        "    shard_model(torch.nn.Linear(2, 2), torch.device('cpu'), torch.float32)\n"
        "except MinigptError as e:\n"
        "    print(e)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("train.parallel=fsdp needs torch 2.6 or newer")
