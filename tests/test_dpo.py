"""DPO (train.objective=dpo): the loss against a hand-written reference, the refusals, resuming, LoRA
checkpoints, and a tiny chat model taught a rule by preference pairs alone."""

import copy
import json
import math
import random

import pytest
import torch
from helpers import TINY, read_metrics, run_main, save_untrained_run

from minigpt import GPT, GPTConfig
from minigpt.checkpoint import load_checkpoint
from minigpt.config import DPOConfig, load_config
from minigpt.data.batches import IGNORE_INDEX
from minigpt.data.chat import prepare_chat
from minigpt.data.preference import prepare_preference
from minigpt.infer.chat import ChatSession
from minigpt.infer.engine import Engine
from minigpt.infer.sampling import SamplingParams
from minigpt.loader import load_model
from minigpt.lora import LoRASettings, apply_lora
from minigpt.tokenizers import build_tokenizer
from minigpt.train.dpo import DPOObjective, dpo_loss
from minigpt.train.init_from import source_tokenizer
from minigpt.train.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread: on a busy machine, two threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def rule(word: str) -> str:
    """The preference the pairs teach: yes for words starting a-m, no for n-z."""
    return "yes" if word[0] <= "m" else "no"


def pair(word: str) -> dict:
    return {"prompt": word, "chosen": rule(word), "rejected": "no" if rule(word) == "yes" else "yes"}


def random_words(n: int, rng: random.Random) -> list[str]:
    return [rng.choice(LETTERS) + "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5))) for _ in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def files_under(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


# ---- the loss ----------------------------------------------------------------------------------


def hand_written_loss(policy, reference, x, y, beta, label_smoothing, sft_weight=0.0):
    """DPO written out from the paper, pair by pair and token by token (the chosen rows first), plus
    sft_weight times the chosen answers' negative log-likelihood per token."""

    def logp(model, row):
        logits = model(x[row : row + 1])[0][0]  # (T, V)
        total = torch.zeros(())
        for t in range(y.shape[1]):
            if y[row, t] != IGNORE_INDEX:
                total = total + logits[t, y[row, t]] - torch.logsumexp(logits[t], dim=0)
        return total

    pairs = x.shape[0] // 2
    loss = torch.zeros(())
    for k in range(pairs):
        with torch.no_grad():
            ref_chosen, ref_rejected = logp(reference, k), logp(reference, k + pairs)
        z = beta * ((logp(policy, k) - ref_chosen) - (logp(policy, k + pairs) - ref_rejected))
        pair_loss = -(1 - label_smoothing) * torch.log(torch.sigmoid(z)) - label_smoothing * torch.log(
            torch.sigmoid(-z)
        )
        loss = loss + pair_loss / pairs
    chosen_tokens = sum(int(y[row, t] != IGNORE_INDEX) for row in range(pairs) for t in range(y.shape[1]))
    nll = -sum(logp(policy, row) for row in range(pairs)) / chosen_tokens
    return loss + sft_weight * nll


def fixed_batch(vocab_size: int, pairs: int = 3, length: int = 10):
    """Chosen rows then rejected ones: shared prompts, answers of several lengths, padding after them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (2 * pairs, length), generator=g)
    x[pairs:, :4] = x[:pairs, :4]  # each rejected answer follows its chosen one's prompt
    y = torch.full_like(x, IGNORE_INDEX)
    for row, (start, end) in enumerate([(3, 7), (3, 10), (3, 5), (3, 9), (3, 6), (3, 10)]):
        y[row, start:end] = torch.randint(0, vocab_size, (end - start,), generator=g)
    return x, y


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=16))


def test_dpo_loss_its_statistics_and_its_derivative_follow_the_formula():
    beta, eps = 0.3, 0.15
    policy = torch.tensor([-2.0, -1.0, -4.0, -3.5, -1.5, -2.0], requires_grad=True)  # 3 chosen, 3 rejected
    reference = torch.tensor([-2.5, -1.0, -3.0, -3.0, -1.0, -2.5])
    loss, stats = dpo_loss(policy, reference, beta, eps)
    chosen = beta * (policy[:3] - reference[:3]).detach()
    rejected = beta * (policy[3:] - reference[3:]).detach()
    margin = chosen - rejected
    expected = sum(
        -(1 - eps) * math.log(1 / (1 + math.exp(-m))) - eps * math.log(1 / (1 + math.exp(m))) for m in margin.tolist()
    )
    assert loss.item() == pytest.approx(expected / 3, abs=1e-6)
    assert stats["reward_accuracy"].item() == pytest.approx((margin > 0).float().mean().item())
    assert stats["reward_margin"].item() == pytest.approx(margin.mean().item(), abs=1e-6)
    assert stats["chosen_reward"].item() == pytest.approx(chosen.mean().item(), abs=1e-6)
    assert stats["rejected_reward"].item() == pytest.approx(rejected.mean().item(), abs=1e-6)
    loss.backward()
    # d loss / d margin = -(1 - eps) sigmoid(-m) + eps sigmoid(m); the margin moves with +beta chosen, -beta rejected
    slope = -(1 - eps) * torch.sigmoid(-margin) + eps * torch.sigmoid(margin)
    assert torch.allclose(policy.grad, torch.cat([beta * slope, -beta * slope]) / 3, atol=1e-7)
    assert dpo_loss(reference, reference, beta)[0].item() == pytest.approx(math.log(2))  # the start: log 2


@pytest.mark.parametrize("label_smoothing, sft_weight", [(0.0, 0.0), (0.2, 0.0), (0.1, 0.7)])
def test_loss_and_gradient_equal_the_hand_written_reference_against_a_frozen_copy(label_smoothing, sft_weight):
    model = tiny_model()
    start = copy.deepcopy(model)
    settings = DPOConfig(beta=0.5, label_smoothing=label_smoothing, sft_weight=sft_weight)
    objective = DPOObjective(model, settings, lora=False)
    with torch.no_grad():  # the policy moves on; the reference must stay the starting point
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = fixed_batch(12)
    loss, stats = objective(model, x, y)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = hand_written_loss(model, start, x, y, 0.5, label_smoothing, sft_weight)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    if sft_weight:  # logged on its own: the loss less the DPO part
        dpo_part = hand_written_loss(model, start, x, y, 0.5, label_smoothing).item()
        assert stats["chosen_nll"].item() == pytest.approx((expected.item() - dpo_part) / sft_weight, abs=1e-6)
    else:
        assert "chosen_nll" not in stats
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6), name
    assert all(not p.requires_grad for p in objective.reference.parameters())
    assert objective.reference_bytes() == sum(p.numel() * 4 for p in start.parameters())


def test_with_lora_the_reference_is_the_base_with_its_adapters_switched_off():
    model = tiny_model()
    base = copy.deepcopy(model)
    apply_lora(model, LoRASettings(rank=2))
    with torch.no_grad():  # adapters that change the output, as after some training
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.copy_(0.1 * torch.randn_like(p))
    objective = DPOObjective(model, DPOConfig(beta=0.5, label_smoothing=0.1), lora=True)
    assert objective.reference is model and objective.reference_bytes() == 0  # no second copy
    x, y = fixed_batch(12)
    before = model(x)[0]
    loss, _ = objective(model, x, y)
    assert torch.equal(model(x)[0], before) and model.training  # adapters back on, mode as it was
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    expected = hand_written_loss(model, base, x, y, 0.5, 0.1)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert ours and all(torch.allclose(g, model.get_parameter(name).grad, atol=1e-6) for name, g in ours.items())


# ---- runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A chat model to start from (untrained: resuming and refusals need no skill) and yes/no pairs."""
    root = tmp_path_factory.mktemp("dpo")
    tokenizer = build_tokenizer("char", [LETTERS + "yesno"])
    tokenizer.add_chat_tokens()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
    run = save_untrained_run(root / "chat", model, tokenizer)
    rows = [pair(w) for w in random_words(200, random.Random(0))]
    prepare_preference(str(write_jsonl(root / "pairs.jsonl", rows)), source_tokenizer(str(run)), root / "pairs")
    return run, root / "pairs"


def dpo_args(source, out_dir, *more):
    run, pairs = source
    return [f"data.dir={pairs}", f"out_dir={out_dir}", *TINY, f"train.init_from={run}", "train.objective=dpo", *more]


class Killed(Exception):
    """Stands in for SIGKILL: the run dies mid-way, after its last checkpoint."""


@pytest.mark.parametrize("lora", [[], ["train.lora.rank=2", "train.lr=1e-2"]], ids=["full", "lora"])
def test_a_killed_dpo_run_resumes_bitwise_with_the_same_reference(source, tmp_path, monkeypatch, lora):
    args = ["train.max_steps=10", "train.log_interval=1", "train.eval_interval=5", "train.checkpoint_interval=4", *lora]
    train(load_config(None, dpo_args(source, tmp_path / "whole", *args)))

    real_step = Trainer.train_step

    def dying_step(self, check_finite=True):
        if self.step == 6:  # two steps after the checkpoint of step 4
            raise Killed
        return real_step(self, check_finite)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(Killed):
        train(load_config(None, dpo_args(source, tmp_path / "killed", *args)))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    train(load_config(None, dpo_args(source, tmp_path / "killed", *args)), resume=True)

    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "killed")
    assert resumed == whole  # every loss and reward, bit for bit: the reference was the start again
    train_records = [r for r in whole if "train_loss" in r]
    assert set(train_records[0]) >= {
        "train_loss",
        "reward_accuracy",
        "reward_margin",
        "chosen_reward",
        "rejected_reward",
    }
    assert train_records[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 1
    val = [r for r in whole if "val_loss" in r]
    assert val and "val_reward_accuracy" in val[-1] and "val_perplexity" not in val[-1]


def test_a_lora_dpo_checkpoint_holds_adapters_and_samples_like_any_run(source, tmp_path, capsys):
    out = tmp_path / "lora"
    train(load_config(None, dpo_args(source, out, "train.lora.rank=2", "train.lr=1e-2", "train.max_steps=6")))
    saved = load_checkpoint(out)
    assert saved.weights and all(name.endswith(("lora_a", "lora_b")) for name in saved.weights)
    model, tokenizer, _ = load_model(str(out))
    base, _, _ = load_model(str(source[0]))
    x = torch.tensor([tokenizer.encode_chat([{"role": "user", "content": "abc"}])])
    assert not torch.equal(model(x)[0], base(x)[0])  # the adapters came back, merged
    code, _, err = run_main(capsys, "sample", out, "--max-new-tokens", "3", "--prompt", "ab", "--seed", "0")
    assert code == 0, err


def test_bad_dpo_settings_are_one_line_and_nothing_is_written(source, char_data, tmp_path, capsys):
    run, pairs = source
    base = ["train", "-", f"out_dir={tmp_path / 'run'}", *TINY]
    cases = [
        ([f"data.dir={pairs}", "train.objective=dpo"], "error: train.objective=dpo needs train.init_from"),
        ([f"data.dir={pairs}"], f"error: the data in {pairs} is preference pairs (prepare --format preference); train"),
        (
            [f"data.dir={char_data}", "train.objective=dpo", f"train.init_from={run}"],
            f"error: train.objective=dpo trains on preference pairs, but the data in {char_data} is plain text",
        ),
        ([f"data.dir={pairs}", f"train.init_from={run}", "train.objective=dpo", "train.dpo.beta=0"], "beta must be"),
        ([f"data.dir={pairs}", "train.objective=dpo", "train.dpo.label_smoothing=0.5"], "label_smoothing must be"),
        ([f"data.dir={pairs}", "train.objective=dpo", "train.dpo.sft_weight=-1"], "sft_weight must be 0 or more"),
        ([f"data.dir={pairs}", "train.objective=ppo"], "train.objective is 'ppo'; expected one of lm, dpo"),
    ]
    before = files_under(tmp_path), files_under(pairs)
    for overrides, fragment in cases:
        code, out, err = run_main(capsys, *base, *overrides)
        assert code == 2 and out == "" and fragment in err and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert (files_under(tmp_path), files_under(pairs)) == before


# ---- a rule taught by preferences alone --------------------------------------------------------------


def answers(run, words):
    """The greedy answer of RUN to each word, each in a fresh conversation (run loaded as `minigpt chat` does)."""
    model, tokenizer, _ = load_model(str(run))
    engine = Engine(model.eval(), tokenizer, max_batch=1)
    with torch.inference_mode():
        return ["".join(ChatSession(engine, SamplingParams(max_tokens=6, temperature=0)).reply(w)) for w in words]


def follows_rule(run, words) -> float:
    return sum(a == rule(w) for a, w in zip(answers(run, words), words)) / len(words)


@pytest.mark.slow
def test_dpo_teaches_a_chat_model_the_preferred_answers(tmp_path):
    """A tiny chat model answers yes or no at random, and DPO on pairs that prefer yes for words starting a-m
    and no for n-z makes it follow that rule on 60 held-out words.

    The chat data's coin is weighted by the word's first letter (80:20, towards the rule for half of the
    letters and against it for the others), so the model looks at the first letter as a chat model looks at
    its question, and half of the held-out words start against the rule. With an even coin for every answer
    nothing at the answer's first position looks at the word: DPO then separates the pairs by the answers'
    later characters, pushing the rejected answer's continuation down, and greedy answers come out as 'nes'
    while the reward accuracy reaches 1 (likelihood displacement, DPO's known failure, not what this tests).
    Conservative DPO (label smoothing) keeps the margin bounded, which keeps the answers' wording: with
    plain DPO, reward margins grow without end and a model this small loses its 'yes' ('es', 'o')."""
    rng = random.Random(2)
    letters = list(LETTERS)
    rng.shuffle(letters)
    against = set(letters[:13])  # letters whose coin leans against the rule
    words = list(dict.fromkeys(random_words(6000, rng)))
    held_out = [w for w in words if w[0] in against][:30] + [w for w in words if w[0] not in against][:30]
    rest = [w for w in words if w not in set(held_out)]

    def coin(word):
        leaning = rule(word) if word[0] not in against else ("no" if rule(word) == "yes" else "yes")
        return leaning if rng.random() < 0.8 else ("no" if leaning == "yes" else "yes")

    chat_rows = [
        {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": coin(w)}]} for w in rest[:2400]
    ]
    prepare_chat(str(write_jsonl(tmp_path / "chat.jsonl", chat_rows)), "char", tmp_path / "chat", max_tokens=17)
    model = [
        "model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=16", "model.pos_encoding=rope",
        "model.norm=rmsnorm", "model.mlp=relu2", "model.tie_weights=false", "model.qk_norm=true", "model.bias=false",
    ]  # fmt: skip
    common = ["train.progress=false", "dtype=float32", "train.warmup_steps=5", "train.eval_steps=2"]
    chat_run = tmp_path / "chat_run"
    chat = ["train.max_steps=300", "train.batch_size=16", "train.lr=3e-3", "train.eval_interval=300"]
    train(load_config(None, [f"data.dir={tmp_path / 'chat'}", f"out_dir={chat_run}", *model, *common, *chat]))

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(w) for w in rest[2400:5400]])
    prepare_preference(str(pairs), source_tokenizer(str(chat_run)), tmp_path / "pairs", max_tokens=17)
    dpo_run = tmp_path / "dpo_run"
    dpo = ["train.max_steps=200", "train.batch_size=32", "train.lr=1e-3", "train.eval_interval=100"]
    dpo += ["train.dpo.beta=1", "train.dpo.label_smoothing=0.05", "train.log_interval=10"]
    dpo += [f"train.init_from={chat_run}", "train.objective=dpo"]
    train(load_config(None, [f"data.dir={tmp_path / 'pairs'}", f"out_dir={dpo_run}", *common, *dpo]))

    before, after = follows_rule(chat_run, held_out), follows_rule(dpo_run, held_out)
    assert after >= 0.8 and after >= before + 0.2, (before, after)
    records = read_metrics(dpo_run)
    assert all("reward_accuracy" in r for r in records if "train_loss" in r)
    assert [r for r in records if "val_reward_accuracy" in r][-1]["val_reward_accuracy"] >= 0.9
