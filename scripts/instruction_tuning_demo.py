"""Offline instruction tuning of the quickstart model: make the instructions, then score held-out answers.

The quickstart model (a character-level GPT pretrained on Python's documentation) knows English
and Python words but has never seen a question answered. This script generates small instruction
tasks offline, from words of Python's own reference manual, with answers a program can check:

    Uppercase: module           -> MODULE
    Reverse: value              -> eulav
    Add 23 and 58.              -> 81
    First letter of syntax?     -> s

Held-out prompts use words and number pairs that never appear in the training set, so exact match
on them measures whether the model learned each task, not the examples.

    python scripts/instruction_tuning_demo.py data --out data/instruct_src
    minigpt prepare data/instruct_src/train.jsonl --format chat --tokenizer-from out/quickstart --out data/instruct
    minigpt train configs/instruct_quickstart.yaml
    python scripts/instruction_tuning_demo.py score out/instruct_quickstart --heldout data/instruct_src/heldout.jsonl
    python scripts/instruction_tuning_demo.py score out/quickstart --heldout data/instruct_src/heldout.jsonl \\
        --data data/instruct              # "before": the base model, with rows for the chat tokens added
"""

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch

from minigpt.data.batches import load_meta
from minigpt.infer.chat import ChatSession
from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams
from minigpt.loader import load_model
from minigpt.model import GPTConfig
from minigpt.tokenizers import load_tokenizer
from minigpt.train.init_from import init_model

TASKS = {
    "upper": (lambda w: f"Uppercase: {w}", lambda w: w.upper()),
    "reverse": (lambda w: f"Reverse: {w}", lambda w: w[::-1]),
    "first": (lambda w: f"First letter of {w}?", lambda w: w[0]),
}


def vocabulary() -> list[str]:
    """Lowercase words of 3 to 8 letters from the reference manual that `help()` shows, sorted."""
    from pydoc_data.topics import topics

    return sorted({w for text in topics.values() for w in re.findall(r"\b[a-z]{3,8}\b", text)})


def make_examples(seed: int = 0, heldout_fraction: float = 0.2, per_task: int = 1200) -> tuple[list, list]:
    """(train, heldout) lists of {"messages": [...]} with disjoint words and number pairs."""
    rng = random.Random(seed)
    words = vocabulary()
    rng.shuffle(words)
    cut = int(len(words) * heldout_fraction)
    pairs = [(a, b) for a in range(10, 60) for b in range(10, 60)]
    rng.shuffle(pairs)
    held_pairs = pairs[: len(pairs) // 5]
    splits = {"heldout": (words[:cut], held_pairs), "train": (words[cut:], pairs[len(held_pairs) :])}
    out = {}
    for name, (split_words, split_pairs) in splits.items():
        n = per_task if name == "train" else 25
        rows = []
        for prompt, answer in TASKS.values():
            rows += [_pair(prompt(w), answer(w)) for w in (rng.choice(split_words) for _ in range(n))]
        rows += [_pair(f"Add {a} and {b}.", str(a + b)) for a, b in split_pairs[:n]]
        rng.shuffle(rows)
        out[name] = rows
    return out["train"], out["heldout"]


def _pair(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@torch.inference_mode()
def greedy_answers(model, tokenizer, questions: list[str]) -> list[str]:
    """Each question's greedy answer (up to 24 tokens), each in a fresh conversation."""
    engine = Engine(model, tokenizer, max_batch=1)
    params = SamplingParams(max_tokens=24, temperature=0)
    return ["".join(ChatSession(engine, params).reply(question)) for question in questions]


def exact_match(model, tokenizer, heldout: list[dict]) -> float:
    """Share of held-out questions answered exactly (greedy, each in a fresh conversation)."""
    questions, answers = zip(*((m["content"] for m in row["messages"]) for row in heldout))
    given = greedy_answers(model, tokenizer, list(questions))
    return sum(text.strip() == answer for text, answer in zip(given, answers)) / len(heldout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("data", help="write train.jsonl and heldout.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("score", help="held-out exact match of a run")
    p.add_argument("path", help="a run or checkpoint")
    p.add_argument("--heldout", required=True)
    p.add_argument("--data", default=None, help="score PATH as the start of fine-tuning on this chat data folder")
    args = parser.parse_args(argv)

    if args.command == "data":
        train, heldout = make_examples(args.seed)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train), ("heldout", heldout)):
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(train)} training and {len(heldout)} held-out conversations in {out}")
        return

    heldout = [json.loads(line) for line in Path(args.heldout).read_text(encoding="utf-8").splitlines()]
    if args.data is None:
        model, tokenizer, _ = load_model(args.path)
    else:
        tokenizer = load_tokenizer(load_meta(args.data)["tokenizer"], args.data)
        model, _ = init_model(args.path, tokenizer, GPTConfig())
    start = time.perf_counter()
    with torch.inference_mode():
        score = exact_match(model.eval(), tokenizer, heldout)
    print(f"held-out exact match {score:.1%} ({len(heldout)} questions, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
