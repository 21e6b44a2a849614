"""The tutorial scripts in scripts/examples: each main() is run and its numbers redone by hand here."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "scripts" / "examples"


@pytest.fixture(autouse=True)
def from_an_empty_folder(tmp_path, monkeypatch):
    """Every example runs from an empty working folder and writes nothing there."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield
    assert list(folder.iterdir()) == []


def load(name: str):
    """Import scripts/examples/<name>.py as a module (its file name starts with a digit, so no plain import)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def softmax(scores):
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def test_01_budget_table_and_learned_attention():
    result = load("01_attention_as_weighted_sum").main()
    X, W = [10.0, 6.0, 2.5], 2.0
    A = [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.6, 0.3, 0.1]]
    V = [x * W for x in X]
    Z = [sum(a * v for a, v in zip(row, V)) for row in A]
    assert result["V"].flatten().tolist() == pytest.approx(V)
    assert result["Z"].flatten().tolist() == pytest.approx(Z)
    assert Z == pytest.approx([20.0, 19.2, 16.1])

    # The learned table is a real attention table, and it gets close to the target budget.
    assert result["final_loss"] < 1.0
    torch.testing.assert_close(result["learned_A"].sum(dim=-1), torch.ones(3))
    assert (result["learned_A"] >= 0).all()
    assert result["learned_Z"].flatten().tolist() == pytest.approx([20.0, 19.0, 16.0], abs=0.5)


def test_02_kernel_regression_and_scoring_functions():
    result = load("02_attention_pooling_kernel_regression").main()
    keys, values, query = [68, 60, 64], [126, 110, 115], 62
    scores = [-((query - k) ** 2) / 2 for k in keys]
    assert scores == [-18, -2, -2]
    weights = softmax(scores)
    assert result["scores"].tolist() == pytest.approx(scores)
    assert result["weights"].tolist() == pytest.approx(weights, abs=1e-7)
    assert result["estimate"] == pytest.approx(sum(w * v for w, v in zip(weights, values)), rel=1e-6)
    assert result["estimate"] == pytest.approx(112.5, abs=1e-4)  # 60 and 64 share the weight equally

    keys2 = [[68, 91], [60, 87], [64, 88]]
    queries = [[64, 85], [61, 80]]
    dot = [[sum(a * b for a, b in zip(q, k)) for k in keys2] for q in queries]
    assert result["dot_scores"].tolist() == dot  # whole numbers: exact in float32
    # minigpt.nn.attention_weights is softmax(q . k / sqrt(d)): check it against the formula
    scaled = [softmax([s / math.sqrt(2) for s in row]) for row in dot]
    for row, expected in zip(result["scaled_weights"].tolist(), scaled):
        assert row == pytest.approx(expected, abs=1e-6)

    W_q, W_k, w_v = (p.tolist() for p in result["additive_params"])
    for i, q in enumerate(queries):
        for j, k in enumerate(keys2):
            hidden = [
                math.tanh(sum(wq * a for wq, a in zip(W_q[h], q)) + sum(wk * b for wk, b in zip(W_k[h], k)))
                for h in range(len(w_v))
            ]
            expected = sum(v * t for v, t in zip(w_v, hidden))
            assert result["additive_scores"][i, j].item() == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(result["additive_weights"].sum(dim=-1), torch.ones(2))


def test_03_self_attention_step_by_step():
    result = load("03_self_attention_step_by_step").main()
    X = [
        [0.43, 0.15, 0.89],
        [0.55, 0.87, 0.66],
        [0.57, 0.85, 0.64],
        [0.22, 0.58, 0.33],
        [0.77, 0.25, 0.10],
        [0.05, 0.80, 0.55],
    ]
    scores = [sum(a * b for a, b in zip(x, X[1])) for x in X]
    assert [round(s, 4) for s in scores] == [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865]
    assert result["scores"].tolist() == pytest.approx(scores, abs=1e-6)

    weights = softmax(scores)
    assert result["weights"].sum().item() == pytest.approx(1.0)
    assert result["weights"].tolist() == pytest.approx(weights, abs=1e-6)
    z2 = [sum(w * x[d] for w, x in zip(weights, X)) for d in range(3)]
    assert [round(z, 4) for z in z2] == [0.4419, 0.6515, 0.5683]
    assert result["z2"].tolist() == pytest.approx(z2, abs=1e-6)
    torch.testing.assert_close(result["Z"][1], result["z2"])

    causal = result["causal_weights"]
    assert torch.all(causal.triu(diagonal=1) == 0)
    torch.testing.assert_close(causal.sum(dim=-1), torch.ones(6))
    assert result["mask_difference"] < 1e-6
    torch.testing.assert_close(result["multihead_minigpt"], result["multihead_step_by_step"])


def test_04_two_ways_of_multihead_attention_agree():
    result = load("04_multihead_two_ways").main()
    assert result["diff_ways"] < 1e-6
    assert result["diff_minigpt"] < 1e-6
    torch.testing.assert_close(result["minigpt"], result["way1"])


def test_examples_run_as_scripts():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "04_multihead_two_ways.py")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "max |way 1 - way 2|" in run.stdout


@pytest.mark.slow
def test_05_encoder_decoder_learns_to_reverse():
    # Half the script's default steps: still perfect on every seed tried, in a few seconds.
    result = load("05_encoder_decoder_reverse").main(steps=150, seed=0)
    assert result["accuracy"] > 0.95


def test_the_example_that_needs_a_run_says_in_one_line_what_to_run_first():
    done = subprocess.run([sys.executable, str(EXAMPLES / "06_classify_with_a_gpt.py")], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr  # run from the fixture's empty folder
    assert done.stderr.count("\n") == 1 and "first run `minigpt train configs/quickstart.yaml`" in done.stderr
