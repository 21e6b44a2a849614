"""lm-evaluation-harness: minigpt's model class scores a local multiple-choice task like lm-eval's own hf model."""

import json

import pytest
from helpers import multiple_choice_task, run_cli

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

QUESTIONS = [
    ("The cat sat on the", ["mat", "moon", "idea", "river"], 0),
    ("Water boils at one hundred degrees", ["Celsius", "apples", "Tuesday", "north"], 0),
    ("She opened the door and", ["walked in", "purple", "seven", "the the"], 0),
    ("To be or not to", ["be", "sing", "house", "blue"], 0),
    ("One, two, three,", [" four", " dog", " green", " up"], 1),
    ("The capital of France is", ["Paris", "banana", "swim", "quickly"], 2),
]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A random-weight GPT-2 with a byte-level BPE trained on the questions, saved as a Hugging Face folder."""
    import torch

    from minigpt.formats.hf_tokenizer import to_hf_tokenizer
    from minigpt.tokenizers import BPETokenizer

    corpus = [" ".join([q, *c]) for q, c, _ in QUESTIONS] * 20
    tokenizer = BPETokenizer.train("bpe:400", corpus)
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # larger weights than the default init: scores that differ between choices
        for p in model.parameters():
            p.mul_(5.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(folder)
    to_hf_tokenizer(tokenizer, max_length=64).save(folder)
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A tiny multiple-choice task: YAML over a local JSON lines file."""
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    return multiple_choice_task(tmp_path_factory.mktemp("tasks"), rows, metrics=("acc", "acc_norm"))


def _requests(task_dir):
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(task_dir), include_defaults=False).load(["tiny_mc"])["tasks"]["tiny_mc"]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return [r for r in task.instances]


def test_loglikelihoods_equal_lm_evals_hf_model(gpt2_folder, task_dir):
    from lm_eval.models.huggingface import HFLM

    from minigpt.eval.harness import MinigptLM
    from minigpt.loader import load_model

    requests = _requests(task_dir)
    assert len(requests) == sum(len(c) for _, c, _ in QUESTIONS)
    ours = MinigptLM(*load_model(gpt2_folder)[:2], batch_size=5).loglikelihood(requests)
    theirs = HFLM(pretrained=str(gpt2_folder), batch_size=5, device="cpu").loglikelihood(requests)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    assert [score for score, _ in ours] == pytest.approx([score for score, _ in theirs], abs=1e-4)
    assert len({round(score, 3) for score, _ in ours}) > len(QUESTIONS)  # the scores tell choices apart


def test_rolling_loglikelihood_and_generation_equal_hf(gpt2_folder):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from minigpt.eval.harness import MinigptLM
    from minigpt.loader import load_model

    text = "The cat sat on the mat; water boils. " * 12  # longer than one 64-token window
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    prompts = ["Once upon a time", "Once upon a tide", "The end"]  # two of one length: one batch
    generate = [
        Instance("generate_until", {}, (p, {"until": ["."], "max_gen_toks": 12}), i) for i, p in enumerate(prompts)
    ]
    ours = MinigptLM(*load_model(gpt2_folder)[:2], batch_size=4)
    theirs = HFLM(pretrained=str(gpt2_folder), batch_size=4, device="cpu")
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(theirs.loglikelihood_rolling(rolling), abs=1e-3)
    texts = ours.generate_until(generate)
    assert texts == theirs.generate_until(generate)
    assert any(texts)


def test_accuracy_equals_hf_model(gpt2_folder, task_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from minigpt.eval.harness import results_table, run_tasks
    from minigpt.loader import load_model

    expected = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(gpt2_folder)},
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=4,
        device="cpu",
    )["results"]["tiny_mc"]
    model, tokenizer, _ = load_model(gpt2_folder)
    results = run_tasks(model, tokenizer, ["tiny_mc"], include_path=str(task_dir), batch_size=4)
    ours = results["results"]["tiny_mc"]
    assert (ours["acc,none"], ours["acc_norm,none"]) == (expected["acc,none"], expected["acc_norm,none"])
    assert "tiny_mc" in results_table(results) and "acc_norm" in results_table(results)


@pytest.mark.slow  # two runs of the command; lm-eval indexes all its tasks to tell that one is unknown
def test_cli_prints_json_and_refuses_an_unknown_task(gpt2_folder, task_dir):
    result = run_cli("eval", gpt2_folder, "--tasks", "tiny_mc", "--include-path", task_dir, "--limit", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["tiny_mc"]) >= {"acc,none", "acc_norm,none"}
    result = run_cli("eval", gpt2_folder, "--tasks", "tiny_mcq", "--include-path", task_dir)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown task 'tiny_mcq'" in result.stderr and "tiny_mc" in result.stderr
    result = run_cli("eval", gpt2_folder, "--limit", "3")
    assert (result.returncode, result.stderr) == (
        2,
        "error: --limit, --num-fewshot and --include-path go with --tasks\n",
    )


def test_generation_without_end_of_text_and_from_an_empty_context():
    import torch
    from lm_eval.api.instance import Instance

    from minigpt.eval.harness import MinigptLM
    from minigpt.model import GPT, GPTConfig
    from minigpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer(list("\nab."), with_eot=False)  # a single text's vocabulary: no end-of-text
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    request = Instance("generate_until", {}, ("", {"until": ["zzz"], "max_gen_toks": 6}), 0)
    (text,) = MinigptLM(model, tokenizer).generate_until([request])
    start = torch.tensor([[tokenizer.encode("\n")[0]]])  # an empty context starts a document, as in sampling
    assert text == tokenizer.decode(model.generate(start, 6, temperature=0)[0, 1:])
    assert len(text) == 6  # newlines do not stop it: only the task's stop strings and end-of-text would
