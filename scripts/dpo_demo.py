"""Offline preference tuning (DPO) of the instruction-tuned quickstart model, and what a DPO step costs.

The instruction-tuned quickstart model (configs/instruct_quickstart.yaml) answers its four tasks with
the bare answer. The house style here ends every answer with a full stop. Each pair asks one of those
tasks: the chosen answer is the right one in the house style, the rejected one the same answer without
the stop. The two share every token but the end, so the pair says only "end with a stop" (DPO's
log-ratios cancel on the rest, though the weights they share still move). Held-out prompts use words and numbers the
pairs never do; `score` greedy-answers them (style share, exactness) and, given the reference, gives
the held-out reward accuracy: the share of held-out pairs whose chosen answer gained more
log-probability over the reference than its rejected one. DPO alone raises the stop everywhere on such
pairs (answers become "...."): configs/dpo_quickstart.yaml adds the chosen answers' NLL (train.dpo.sft_weight)
and gives 0% -> 100% in the house style with exactness 82% -> 77% (its header has the numbers).

    python scripts/dpo_demo.py data --out data/dpo_src
    minigpt prepare data/dpo_src/train.jsonl --format preference --tokenizer-from out/instruct_quickstart \\
        --out data/dpo --max-tokens 129
    minigpt train configs/dpo_quickstart.yaml
    python scripts/dpo_demo.py score out/instruct_quickstart --heldout data/dpo_src/heldout.jsonl   # before
    python scripts/dpo_demo.py score out/dpo_quickstart --heldout data/dpo_src/heldout.jsonl \\
        --reference out/instruct_quickstart                                                        # after

    python scripts/dpo_demo.py cost [--shape gpt2]   # ms per step: DPO against plain training, full and LoRA
"""

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from instruction_tuning_demo import TASKS, greedy_answers, vocabulary

from minigpt.config import load_config
from minigpt.data.batches import IGNORE_INDEX
from minigpt.data.preference import answer_ids
from minigpt.loader import load_model
from minigpt.lora import LoRASettings, apply_lora
from minigpt.model import GPT, GPTConfig
from minigpt.train.dpo import DPOObjective, answer_logprobs
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
    pairs = [{"prompt": q, "chosen": a + STOP, "rejected": a} for q, a in out["train"]]
    return pairs, [{"prompt": q, "answer": a} for q, a in out["heldout"]]


def score(run: str, heldout: list[dict]) -> tuple[float, float]:
    """(share of held-out answers in the house style, share right once the stop is taken off), greedy."""
    model, tokenizer, _ = load_model(run)
    texts = greedy_answers(model.eval(), tokenizer, [row["prompt"] for row in heldout])
    styled = sum(text.endswith(STOP) for text in texts)
    right = sum(text.removesuffix(STOP).strip() == row["answer"] for text, row in zip(texts, heldout))
    return styled / len(heldout), right / len(heldout)


@torch.inference_mode()
def reward_accuracy(run: str, reference: str, heldout: list[dict]) -> float:
    """The share of held-out pairs (right answer with the stop, chosen; without, rejected) whose chosen
    answer gained more log-probability over the reference than the rejected one: DPO's reward accuracy."""
    gains = []
    for path in (run, reference):
        model, tokenizer, _ = load_model(path)
        model.eval()
        logps = []
        for row in heldout:
            prompt = [{"role": "user", "content": row["prompt"]}]
            for answer in (row["answer"] + STOP, row["answer"]):
                ids, mask = answer_ids(tokenizer, prompt, [{"role": "assistant", "content": answer}])
                x = torch.tensor([ids[:-1]])
                y = torch.tensor([[t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]])
                logps.append(answer_logprobs(model(x)[0], y).item())
        gains.append(torch.tensor(logps).view(-1, 2))
    chosen, rejected = (gains[0] - gains[1]).unbind(1)
    return (chosen > rejected).float().mean().item()


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
    p.add_argument("--reference", default=None, help="the run DPO started from: also the held-out reward accuracy")
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
        if args.reference:
            accuracy = reward_accuracy(args.path, args.reference, heldout)
            print(f"held-out reward accuracy against {args.reference}: {accuracy:.0%}")
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
