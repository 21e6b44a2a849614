"""minigpt bench --budgets: one whole-process run per wall-clock budget, each evaluated on the whole val split."""

from helpers import TINY, run_main

from minigpt.bench.budgets import bench_budgets, format_budgets_table


def test_each_budget_is_one_run_with_its_clock_and_whole_val_loss(shakespeare_file, tmp_path, capsys):
    text = tmp_path / "small.txt"
    text.write_text(shakespeare_file.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    results = bench_budgets(str(text), budgets=(1.5, 3), config="-", overrides=(*TINY, "train.progress=false"))
    first, second = results["runs"]
    assert (first["budget_s"], second["budget_s"]) == (1.5, 3)
    for r in results["runs"]:
        assert 0 < r["train_clock_s"] < r["whole_process_s"]  # start-up and the final eval are no training
        assert r["over_budget"] == r["train_clock_s"] / r["budget_s"] - 1
        assert 2.0 < r["whole_val_loss"] < 4.5
    assert results["losses_fall"] == (first["whole_val_loss"] > second["whole_val_loss"])
    assert "| 1.5 s |" in format_budgets_table(results)
    progress = capsys.readouterr().err.splitlines()  # minutes of benchmarks are not silent
    assert [line.split(":")[0] for line in progress] == ["time budget 1.5 s", "time budget 3 s"]


def test_budgets_without_a_text_file_are_refused_before_any_timing(capsys):
    code, out, err = run_main(capsys, "bench", "--budgets")
    assert code == 2 and out == ""
    assert err.strip() == "error: --budgets needs --text: tiny Shakespeare's text file (got None)"
