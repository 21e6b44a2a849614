"""Offline preference tuning (DPO) of the instruction-tuned quickstart model, and what a DPO step costs.

The instruction-tuned quickstart model (configs/instruct_quickstart.yaml) answers its four tasks with
the bare answer. The house style here ends every answer with a full stop. Each pair asks one of those
tasks: the chosen answer is the right one in the house style, the rejected one the same answer
without the stop (half of the time), or a wrong answer in the house style (the other half), so DPO must
learn the style without forgetting what is right. Held-out prompts use words and numbers the pairs never do.

    python scripts/dpo_demo.py data --out data/dpo_src
    minigpt prepare data/dpo_src/train.jsonl --format preference --tokenizer-from out/instruct_quickstart \\
        --out data/dpo --max-tokens 129
    minigpt train configs/dpo_quickstart.yaml
    python scripts/dpo_demo.py score out/instruct_quickstart --heldout data/dpo_src/heldout.jsonl   # before
    python scripts/dpo_demo.py score out/dpo_quickstart --heldout data/dpo_src/heldout.jsonl        # after

    python scripts/dpo_demo.py cost [--shape gpt2]   # ms per step: DPO against plain training, full and LoRA
"""

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from instruction_tuning_demo import TASKS, vocabulary

from minigpt.config import load_config
from minigpt.infer.chat import ChatSession
from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams
from minigpt.loader import load_model
from minigpt.lora import LoRASettings, apply_lora
from minigpt.model import GPT, GPTConfig
from minigpt.train.dpo import DPOObjective
from minigpt.train.optim import Optimizers
from minigpt.train.step import TrainStep, lm_loss

STOP = "."  # the house style: an answer ends with a full stop
SHAPES = {  # the models `cost` times, by the context length asked for
    "quickstart": lambda length: GPTConfig(vocab_size=100, block_size=length, n_layer=4, n_head=4, n_embd=128),
    "gpt2": lambda length: GPTConfig(block_size=length),
}


def make_pairs(seed: int = 0, per_task: int = 600) -> tuple[list, list]:
    """(train pairs, held-out questions) with disjoint words and number pairs."""
    rng = random.Random(seed)
    words = vocabulary()
    rng.shuffle(words)
    cut = len(words) // 5
    numbers = [(a, b) for a in range(10, 60) for b in range(10, 60)]
    rng.shuffle(numbers)
    splits = {"heldout": (words[:cut], numbers[:500]), "train": (words[cut:], numbers[500:])}
    out = {}
    for name, (split_words, split_numbers) in splits.items():
        n = per_task if name == "train" else 15
        questions = [(prompt(w), answer(w)) for prompt, answer in TASKS.values() for w in rng.sample(split_words, n)]
        questions += [(f"Add {a} and {b}.", str(a + b)) for a, b in split_numbers[:n]]
        rng.shuffle(questions)
        out[name] = questions
    pairs = []
    for question, answer in out["train"]:
        wrong = _wrong(answer, rng)
        rejected = answer if rng.random() < 0.5 else wrong + STOP
        pairs.append({"prompt": question, "chosen": answer + STOP, "rejected": rejected})
    return pairs, [{"prompt": q, "answer": a} for q, a in out["heldout"]]


def _wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: another number, or the answer with two characters swapped."""
    if answer.isdigit():
        return str(int(answer) + rng.choice([-10, -1, 1, 10]))
    if len(answer) < 2:
        return chr(ord("a") + (ord(answer.lower()) - ord("a") + 1) % 26)
    i = rng.randrange(len(answer) - 1)
    swapped = answer[:i] + answer[i + 1] + answer[i] + answer[i + 2 :]
    return swapped if swapped != answer else answer + answer[-1]


def score(run: str, heldout: list[dict]) -> tuple[float, float]:
    """(share of held-out answers in the house style, share right once the stop is taken off), greedy."""
    model, tokenizer, _ = load_model(run)
    engine = Engine(model.eval(), tokenizer, max_batch=1)
    styled = right = 0
    with torch.inference_mode():
        for row in heldout:
            text = "".join(ChatSession(engine, SamplingParams(max_tokens=24, temperature=0)).reply(row["prompt"]))
            styled += text.endswith(STOP)
            right += text.removesuffix(STOP).strip() == row["answer"]
    return styled / len(heldout), right / len(heldout)


def step_cost(config: GPTConfig, pairs: int, length: int, steps: int = 20) -> dict:
    """Milliseconds per optimizer step, median of `steps`: plain training on the 2 * pairs sequences a DPO
    batch holds, then DPO against a frozen copy, then LoRA (rank 8) plain and DPO against the base."""
    torch.manual_seed(0)
    x = torch.randint(0, config.vocab_size, (2 * pairs, length))
    y = torch.roll(x, -1, dims=1)
    y[:, : length // 2] = -100  # the prompt half is context, the answer half is trained on
    train = load_config(None, ["train.lr=1e-4", "train.weight_decay=0"]).train
    results = {}
    for name, lora, objective in [
        ("plain", False, "lm"),
        ("dpo", False, "dpo"),
        ("lora plain", True, "lm"),
        ("lora dpo", True, "dpo"),
    ]:
        model = GPT(config)
        if lora:
            apply_lora(model, LoRASettings(rank=8))
        loss = DPOObjective(model, train.dpo, lora) if objective == "dpo" else lm_loss
        train.lora = LoRASettings(rank=8 if lora else 0)
        step = TrainStep(model, Optimizers(model, train), torch.amp.GradScaler(enabled=False), lambda: (x, y), train,
                         torch.device("cpu"), torch.float32, objective=loss)  # fmt: skip
        times = []
        for i in range(steps + 2):  # two warm-up steps
            start = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - start)
        reference = loss.reference_bytes() if objective == "dpo" else 0
        results[name] = {"ms": 1e3 * statistics.median(times[2:]), "reference_mb": reference / 2**20}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("data", help="write train.jsonl (pairs) and heldout.jsonl (questions)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("score", help="house-style share and exactness of a run's held-out answers")
    p.add_argument("path", help="a run or checkpoint")
    p.add_argument("--heldout", required=True)
    p = commands.add_parser("cost", help="time DPO steps against plain ones on this machine")
    p.add_argument("--pairs", type=int, default=8, help="pairs per step (twice as many sequences)")
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--shape", choices=SHAPES, default="quickstart", help="gpt2: 124M parameters, minutes on a CPU")
    p.add_argument("--steps", type=int, default=20, help="timed steps per kind (after two warm-up steps)")
    args = parser.parse_args(argv)

    if args.command == "data":
        pairs, heldout = make_pairs(args.seed)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", pairs), ("heldout", heldout)):
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(pairs)} preference pairs and {len(heldout)} held-out questions in {out}")
    elif args.command == "score":
        heldout = [json.loads(line) for line in Path(args.heldout).read_text(encoding="utf-8").splitlines()]
        styled, right = score(args.path, heldout)
        print(f"{args.path}: {styled:.0%} of {len(heldout)} held-out answers end with '{STOP}', {right:.0%} right")
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        config = SHAPES[args.shape]
        print(f"{args.shape}: {args.pairs} pairs of {args.length} tokens per step, {torch.get_num_threads()} threads")
        results = step_cost(config(args.length), args.pairs, args.length, steps=args.steps)
        for kind, r in results.items():
            base = results["lora plain" if kind.startswith("lora") else "plain"]["ms"]
            memory = f", reference {r['reference_mb']:.0f} MB" if "dpo" in kind else ""
            print(f"  {kind:10s} {r['ms']:8.1f} ms/step ({r['ms'] / base:.2f}x){memory}")


if __name__ == "__main__":
    main()
