"""The README's examples run as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_blocks_example_runs_and_prints_what_it_says():
    [example] = [block for block in python_blocks() if "TransformerBlock" in block]
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch.Size([2, 7, 64])"


def test_the_quickstart_and_test_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in text and "python -m pytest -q" in ci
    extras = re.search(r'pip install --quiet -e "(\.\[[a-z,]+\])"', ci).group(1)  # what CI installs
    assert f'pip install torch==2.13.0 && pip install -e "{extras}"' in text
    assert "pip install --quiet torch==2.13.0" in ci


def test_the_sampling_example_runs_on_a_run_folder(tmp_path):
    from serve_helpers import tiny_run

    [example] = [block for block in python_blocks() if "generate_text" in block]
    run = tiny_run(tmp_path / "run")
    code = example.replace("out/shakespeare_char", str(run)) + "\nprint(len(texts), ids.shape)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 torch.Size([1, 56])"
