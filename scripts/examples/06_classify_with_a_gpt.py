"""Classification on a GPT backbone: which standard-library package does a docstring come from?

A GPT trained to predict the next character has learned features of the text it read; a linear
head on its last token's hidden state turns them into a classifier (chapter 6 of "Build a Large
Language Model (From Scratch)"). The data is offline: docstrings of four stdlib packages, read from
their source files with `ast` (nothing is imported). The head trains on 80% of them; accuracy is
measured on the other 20% and compared with always guessing the most common package.

    model, tokenizer = minigpt.load(PATH)                           # a run, checkpoint or HF folder
    classifier = SequenceClassifier(model, num_classes=4, train_blocks=1)
    ids, mask = pad_batch(token_lists, model.config.block_size)     # right padding + attention mask
    loss = F.cross_entropy(classifier(ids, mask), labels)

Run after the quickstart (`minigpt train configs/quickstart.yaml`):
    python scripts/examples/06_classify_with_a_gpt.py out/quickstart     (about two minutes on 2 CPU cores)
"""

import ast
import random
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import minigpt
from minigpt.errors import MinigptError
from minigpt.train.classify import SequenceClassifier, pad_batch

PACKAGES = ("asyncio", "email", "logging", "xml")
MIN_CHARS = 40


def docstrings(packages=PACKAGES, per_package: int = 200) -> list[tuple[str, int]]:
    """(docstring, package index) pairs: modules, classes and functions of each package, tests left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    examples = []
    for label, package in enumerate(packages):
        found = []
        for path in sorted((root / package).rglob("*.py")):
            if "test" in path.parts or "tests" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= MIN_CHARS:
                        found.append((doc, label))
        examples += found[:per_package]
    return examples


def split(examples: list, seed: int = 0, test_fraction: float = 0.2) -> tuple[list, list]:
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * test_fraction)
    return shuffled[cut:], shuffled[:cut]


def encodable(examples: list, tokenizer) -> list:
    """The examples the tokenizer can encode (a char vocabulary may lack a rare character)."""
    kept = []
    for text, label in examples:
        try:
            kept.append((tokenizer.encode(text), label))
        except MinigptError:
            continue
    return kept


def majority_accuracy(train: list, test: list) -> float:
    most_common = Counter(label for _, label in train).most_common(1)[0][0]
    return sum(label == most_common for _, label in test) / len(test)


def accuracy(classifier, test: list, block_size: int, batch_size: int = 32) -> float:
    classifier.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(test), batch_size):
            batch = test[i : i + batch_size]
            ids, mask = pad_batch([ids for ids, _ in batch], block_size)
            predicted = classifier(ids, mask).argmax(dim=-1)
            right += sum(int(p) == label for p, (_, label) in zip(predicted, batch))
    return right / len(test)


def train_head(classifier, train: list, block_size: int, steps: int = 300, batch_size: int = 16, lr: float = 1e-3):
    """AdamW on the trainable parameters (the head and the unfrozen top blocks); returns the last loss."""
    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(1)
    classifier.train()
    for _ in range(steps):
        batch = rng.sample(train, batch_size)
        ids, mask = pad_batch([ids for ids, _ in batch], block_size)
        labels = torch.tensor([label for _, label in batch])
        loss = F.cross_entropy(classifier(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def main(path: str = "out/quickstart", steps: int = 300) -> dict:
    torch.manual_seed(0)
    model, tokenizer = minigpt.load(path)
    block = model.config.block_size
    train, test = (encodable(part, tokenizer) for part in split(docstrings()))
    print(f"{len(train)} training and {len(test)} held-out docstrings from {', '.join(PACKAGES)}")
    baseline = majority_accuracy(train, test)
    print(f"baseline (always the most common package): {baseline:.1%}")

    classifier = SequenceClassifier(model, num_classes=len(PACKAGES), train_blocks=1)
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    print(f"trainable: the top block, the final norm and the head: {trainable:,} parameters")
    start = time.perf_counter()
    loss = train_head(classifier, train, block, steps=steps)
    result = {"baseline": baseline, "accuracy": accuracy(classifier, test, block), "loss": loss}
    print(f"{steps} steps in {time.perf_counter() - start:.0f} s, last loss {loss:.3f}")
    print(f"held-out accuracy: {result['accuracy']:.1%} (baseline {baseline:.1%})")
    return result


if __name__ == "__main__":
    run = sys.argv[1] if len(sys.argv) > 1 else "out/quickstart"
    if not Path(run).is_dir():  # the one prerequisite: say what to run, in one line
        sys.exit(
            f"error: {run} does not exist; first run `minigpt train configs/quickstart.yaml`, or pass a run's folder"
        )
    main(run)
