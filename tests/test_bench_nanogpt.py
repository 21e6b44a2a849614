"""minigpt bench --nanogpt: nanoGPT's own scripts and minigpt's commands run side by side (a few steps here)."""

from pathlib import Path

import pytest
from conftest import SHARED
from helpers import run_main

from minigpt.bench.nanogpt import bench_nanogpt, format_nanogpt_table

ANCHOR = SHARED / "anchors" / "nanoGPT"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not ANCHOR.is_dir(), reason="the nanoGPT anchor is not beside the project")
def test_both_sides_run_and_are_timed(shakespeare_file, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs are found from the project's root, as the README runs it
    results = bench_nanogpt(str(ANCHOR), str(shakespeare_file), steps=(3,), new_tokens=5, recipes=())
    (row,) = results["training"]
    assert row["steps"] == 3 and row["nanogpt_s"] > 0 and row["minigpt_s"] > 0
    assert row["ratio"] == pytest.approx(row["nanogpt_s"] / row["minigpt_s"])
    assert row["nanogpt_val_loss_estimate"] > 3.0  # nanoGPT's evaluation at step 0, read from its output
    assert 3.0 < row["minigpt_whole_val_loss"] < 4.5  # 3 steps from ln(65) = 4.17
    g = results["generation"]
    assert g["minigpt_s"] > 0 and g["minigpt_int8_s"] > 0 and g["nanogpt_s"] > 0
    table = format_nanogpt_table(results)
    assert "3 steps" in table and "--quantize int8" in table


def test_a_folder_that_is_no_nanogpt_checkout_is_refused_before_any_timing(tmp_path, capsys):
    code, out, err = run_main(capsys, "bench", "--nanogpt", tmp_path, "--text", tmp_path / "missing.txt")
    assert code == 2 and out == ""
    assert err.strip() == f"error: --nanogpt {tmp_path} is not a nanoGPT checkout (no train.py and sample.py there)"
