"""`minigpt bench --speculative RUN --text FILE [--draft RUN]`: what speculative decoding buys at batch 1.

    results = bench_speculative("out/shakespeare_char", "tinyshakespeare.txt", draft="out/small")

Two workloads on real text, both taken from the file's last tenth (the val split a char run never trained on):
- continue: a passage, continued;
- quote: a passage, a line asking for it again, and its first words, so that the answer quotes its prompt
  (what a chat answer that repeats the question, or code being edited, looks like).
Each is decoded greedily at batch 1 plainly, with prompt lookup, and with the draft model if given, the
three interleaved `repeats` times. Reported: tokens/s (median), the speedup over plain decoding, the share
of drafted tokens the model kept, and whether the text equals plain greedy decoding's (it must).
"""

import statistics
import time

from ..errors import read_user_text
from ..infer.engine import Engine
from ..infer.ready import ModelChoice, load_for_generation
from ..infer.sampling import SamplingParams
from ..infer.speculative import load_drafter
from .process import progress

PASSAGE_CHARS = 400


def workloads(text: str) -> dict[str, str]:
    """The two prompts, cut from the text's last tenth at line starts."""
    held_out = text[int(len(text) * 0.9) :]
    start = held_out.index("\n\n") + 2
    passage = held_out[start : start + PASSAGE_CHARS]
    passage = passage[: passage.rindex("\n") + 1]
    return {"continue": passage, "quote": f"{passage}\nSay that again:\n\n{passage[:40]}"}


def bench_speculative(run: str, text_path: str, draft: str | None = None, new_tokens: int = 200, repeats: int = 3):
    ready = load_for_generation(ModelChoice(run))  # as `minigpt sample RUN` loads it
    model, tokenizer = ready.model, ready.tokenizer
    drafters = {"plain": None, "prompt lookup": load_drafter("prompt-lookup", model, tokenizer)}
    if draft is not None:
        drafters[f"draft model {draft}"] = load_drafter(draft, model, tokenizer)
    results = {}
    for name, prompt in workloads(read_user_text(text_path, "--text")).items():
        ids = tokenizer.encode(prompt)
        params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True, on_full="slide")
        times = {how: [] for how in drafters}
        texts, kept = {}, {}
        for _ in range(repeats):
            for how, drafter in drafters.items():  # interleaved: a change in the machine's load hits all alike
                engine = Engine(model, tokenizer, max_batch=1, drafter=drafter)
                sequence = engine.submit(ids, params)
                start = time.perf_counter()
                for _ in engine.drive([sequence]):
                    pass
                times[how].append(time.perf_counter() - start)
                texts[how] = sequence.tokens
                kept[how] = (sequence.kept, sequence.drafted)
        plain = statistics.median(times["plain"])
        results[name] = {
            how: {
                "tokens_per_s": round(len(texts[how]) / statistics.median(times[how]), 1),
                "speedup": round(plain / statistics.median(times[how]), 2),
                "acceptance": round(kept[how][0] / kept[how][1], 3) if kept[how][1] else None,
                "kept_per_step": round(kept[how][0] / max(1, len(texts[how]) - kept[how][0]), 2),
                "same_text": texts[how] == texts["plain"],
                "seconds": [round(t, 3) for t in times[how]],
            }
            for how in drafters
        }
        progress(f"speculative, {name}: " + ", ".join(f"{h} {r['speedup']}x" for h, r in results[name].items()))
    return {"run": run, "new_tokens": new_tokens, "prompt_tokens": len(ids), "workloads": results}


def speculative_table(results: dict) -> str:
    lines = [
        f"speculative decoding at batch 1, greedy, {results['new_tokens']} new tokens ({results['run']})",
        "",
        "| workload | decoding | tokens/s | speedup | drafts kept | same text as plain |",
        "|---|---|---|---|---|---|",
    ]
    for workload, rows in results["workloads"].items():
        for how, r in rows.items():
            kept = "" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
            lines.append(
                f"| {workload} | {how} | {r['tokens_per_s']:,.1f} | {r['speedup']:.2f}x | {kept} | {r['same_text']} |"
            )
    return "\n".join(lines)
