"""Ctrl-C and SIGTERM while a large model is being built end `minigpt train` at once: one line, the
shell's exit code, no traceback, no out_dir left behind. A long build is simulated: GPT() sleeps."""

import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY, repo_env

SLOW_BUILD = """
import sys, time
import minigpt.model

build = minigpt.model.GPT.__init__

def slow_build(self, *args, **kwargs):
    print("building", file=sys.stderr, flush=True)
    build(self, *args, **kwargs)
    time.sleep(120)  # a model of thousands of layers

minigpt.model.GPT.__init__ = slow_build
from minigpt.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_model_build_ends_train_at_once(char_data, tmp_path, sig, code):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, "train", "-", f"data.dir={char_data}", f"out_dir={out}", *TINY],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env=repo_env(),
    )
    assert process.stderr.readline() == "building\n"
    process.send_signal(sig)
    sent = time.monotonic()
    err = process.stderr.read()
    assert process.wait(timeout=60) == code
    assert time.monotonic() - sent < 10
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"stopped by {sig.name} while setting up the run" in err
    assert not out.exists()
