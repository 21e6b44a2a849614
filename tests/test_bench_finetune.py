"""The fine-tuning benchmark compares like with like: same trainable parameters, both sides learn."""

import pytest

from minigpt.bench.finetune import bench_finetune, format_finetune_table

TINY_SHAPES = {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 128, "positions": 64}


@pytest.mark.slow
def test_both_sides_train_the_same_parameters_and_report_speed_and_memory():
    results = bench_finetune(quick=True, shapes=TINY_SHAPES, block_size=32, dtype="float32")
    full, lora = results["full"], results["lora"]
    for row in (full, lora):
        ours, theirs = row["minigpt"], row["transformers"]
        assert ours["trainable_params"] == theirs["trainable_params"]
        for side in (ours, theirs):
            assert side["tokens_per_s"] > 0 and side["peak_rss_mb"] > 100  # a fresh process with torch loaded
        assert row["speedup"] == round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2)
    # LoRA trains the adapters only: rank 8 on 4 projections per block, A (8 x in) and B (out x 8)
    n, layers = TINY_SHAPES["n_embd"], TINY_SHAPES["n_layer"]
    per_block = 8 * ((n + 3 * n) + (n + n) + (n + 4 * n) + (4 * n + n))
    assert lora["minigpt"]["trainable_params"] == layers * per_block < full["minigpt"]["trainable_params"]
    assert "| lora |" in format_finetune_table(results)
