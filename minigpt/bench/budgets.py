"""Time budgets as a user runs them: `minigpt bench --budgets --text FILE`.

`train.max_seconds` (or `minigpt train CONFIG --time 90s`) lays the learning-rate schedule on the
wall-clock, so a run ends fully decayed, evaluated and saved at its budget. What that promises, checked
here with configs/shakespeare_char_fast.yaml on 30, 90 and 300 second budgets: a longer budget gives a
lower loss on the whole val split (`minigpt eval`), and each run's training clock (metrics.jsonl's
`time`: start-up is not training) ends within 5% of its budget. About 7.5 minutes.
"""

import tempfile
from pathlib import Path

from ..metrics import read_metrics
from .process import prepare_char, progress, timed, train_command, whole_val_loss

BUDGETS = (30, 90, 300)
FAST_CONFIG = "configs/shakespeare_char_fast.yaml"


def bench_budgets(
    text: str, *, budgets: tuple[float, ...] = BUDGETS, config: str = FAST_CONFIG, overrides: tuple[str, ...] = ()
) -> dict:
    """Each budget's training clock, whole-process seconds and whole-val loss, and whether the losses fall."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        data = prepare_char(text, work)
        runs = []
        for budget in budgets:
            out = work / f"budget_{budget:g}"
            whole, _ = timed([*train_command(config, data, out, *overrides), "--time", f"{budget:g}s"])
            clock = read_metrics(out)[-1]["time"]
            runs.append(
                {
                    "budget_s": budget,
                    "train_clock_s": clock,
                    "over_budget": clock / budget - 1,
                    "whole_process_s": whole,
                    "whole_val_loss": whole_val_loss(out),
                }
            )
            progress(f"time budget {budget:g} s: whole-val loss {runs[-1]['whole_val_loss']:.3f}, {whole:.0f} s in all")
    losses = [r["whole_val_loss"] for r in runs]
    return {"config": config, "runs": runs, "losses_fall": all(a > b for a, b in zip(losses, losses[1:]))}


def format_budgets_table(results: dict) -> str:
    lines = [
        f"time budgets, {results['config']}: losses fall as budgets grow: {'yes' if results['losses_fall'] else 'NO'}",
        "",
        "| budget | training clock | over the budget | whole process | whole-val loss |",
        "|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['budget_s']:g} s | {r['train_clock_s']:.1f} s | {r['over_budget']:+.1%} "
            f"| {r['whole_process_s']:.1f} s | {r['whole_val_loss']:.3f} |"
        )
    return "\n".join(lines)
