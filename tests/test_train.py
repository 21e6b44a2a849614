"""Training end to end: checkpoints, exact resume after SIGKILL, signals, DDP on CPU, precision options."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import TINY, read_metrics, run_cli, torchrun

from minigpt.checkpoint import list_checkpoints, load_checkpoint
from minigpt.config import load_config
from minigpt.errors import MinigptError
from minigpt.train.optim import lr_multiplier
from minigpt.train.trainer import train


def config_for(data_dir, out_dir, *overrides):
    return load_config(None, [f"data.dir={data_dir}", f"out_dir={out_dir}", *TINY, *overrides])


def test_training_lowers_the_loss_and_writes_a_run_folder(char_data, tmp_path):
    out = tmp_path / "run"
    summary = train(
        config_for(
            char_data,
            out,
            "train.max_steps=60",
            "train.lr=3e-3",
            "train.log_interval=10",
            "train.eval_interval=30",
            "train.checkpoint_interval=20",
            "train.keep_checkpoints=1",
        )
    )
    metrics = read_metrics(out)
    train_losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert train_losses[-1] < min(3.35, train_losses[0] - 0.3)  # from ln(65) = 4.17 down towards bigram level
    assert [m["step"] for m in metrics if "val_loss" in m] == [20, 30, 40, 60]  # eval steps and checkpoint steps
    assert summary["step"] == 60 and summary["val_loss"] == metrics[-1]["val_loss"]
    assert (out / "config.yaml").is_file()
    kept = [p.name for p in list_checkpoints(out / "checkpoints")]
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert "step_0000060" in kept and f"step_{best['step']:07d}" in kept and len(kept) <= 2
    checkpoint = load_checkpoint(out, latest=True)
    assert {p.name for p in checkpoint.path.iterdir()} == {
        "model.safetensors",
        "state.pt",
        "meta.json",
        "char_vocab.json",
    }
    assert not any(k.startswith("_orig_mod") for k in checkpoint.weights)
    assert (
        checkpoint.record.tokenizer == "char" and checkpoint.record.config.model.vocab_size == 62
    )  # characters in this excerpt
    assert set(checkpoint.state()["rng"][0]) >= {"python", "numpy", "torch"}


def test_a_fresh_run_never_overwrites_one_with_checkpoints(char_data, tmp_path):
    out = tmp_path / "run"
    train(config_for(char_data, out, "train.max_steps=5", "train.checkpoint_interval=5"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(MinigptError, match="already holds checkpoints; add --resume"):
        train(config_for(char_data, out, "train.max_steps=5"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(MinigptError, match="holds no checkpoint to resume"):
        train(config_for(char_data, tmp_path / "empty", "train.max_steps=5"), resume=True)
    with pytest.raises(MinigptError, match=r"trained with model.n_layer=2 but the config says 3"):
        train(config_for(char_data, out, "train.max_steps=10", "model.n_layer=3"), resume=True)
    meta_file = list_checkpoints(out / "checkpoints")[-1] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(MinigptError, match=r"written by 2 process\(es\); resume with the same number \(now 1\)"):
        train(config_for(char_data, out, "train.max_steps=10"), resume=True)


def test_sigkill_then_resume_reproduces_every_loss_bitwise(char_data, tmp_path):
    args = [
        f"data.dir={char_data}",
        *TINY,
        "model.dropout=0.1",
        "train.max_steps=40",
        "train.log_interval=2",
        "train.eval_interval=10",
        "train.checkpoint_interval=8",
    ]
    reference = tmp_path / "reference"
    assert run_cli("train", "-", *args, f"out_dir={reference}").returncode == 0, "uninterrupted run failed"

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "minigpt", "train", "-", *args, f"out_dir={killed}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_0000016").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert list_checkpoints(killed / "checkpoints")[-1].name < "step_0000040"

    resumed = run_cli("train", "-", *args, f"out_dir={killed}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert read_metrics(killed) == read_metrics(reference)  # every train and val loss, bit for bit


def test_sigterm_saves_a_checkpoint_and_exits_143(char_data, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minigpt",
            "train",
            "-",
            f"data.dir={char_data}",
            *TINY,
            "train.max_steps=100000",
            "train.checkpoint_interval=100000",
            f"out_dir={out}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        time.sleep(0.05)
        assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143  # 128 + SIGTERM: saved, but not finished
    assert "stopped by SIGTERM" in stderr
    [checkpoint] = list_checkpoints(out / "checkpoints")
    assert 0 < int(checkpoint.name.removeprefix("step_")) < 100000


def test_two_processes_match_one_with_twice_the_accumulation(char_data, tmp_path):
    common = [
        f"data.dir={char_data}",
        *TINY,
        "train.max_steps=8",
        "train.log_interval=1",
        "train.eval_interval=4",
        "train.checkpoint_interval=8",
    ]
    single = run_cli("train", "-", *common, "train.grad_accum=2", f"out_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    ddp = torchrun("-m", "minigpt", "train", "-", *common, f"out_dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert [m["step"] for m in one] == [m["step"] for m in two]
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=2e-5), (a, b)


@pytest.mark.parametrize(
    "options",
    [
        ["dtype=bfloat16"],
        ["train.optimizer=muon", "train.schedule=wsd"],
        [
            "model.pos_encoding=rope",
            "model.norm=rmsnorm",
            "model.mlp=swiglu",
            "model.qk_norm=true",
            "model.n_kv_head=1",
            "model.logit_softcap=30",
            "model.tie_weights=false",
            "model.zero_init_proj=true",
        ],
    ],
    ids=["bf16-autocast", "muon-wsd", "modern-recipe"],
)
def test_training_options_learn(char_data, tmp_path, options):
    summary = train(
        config_for(
            char_data,
            tmp_path / "run",
            "train.max_steps=40",
            "train.lr=3e-3",
            "train.log_interval=40",
            "train.eval_interval=40",
            *options,
        )
    )
    assert summary["train_loss"] < 3.3 and math.isfinite(summary["val_loss"])


def test_learning_rate_schedules():
    t = load_config(None, ["train.max_steps=1001", "train.warmup_steps=100", "train.min_lr_ratio=0.1"]).train
    assert lr_multiplier(0, t) == pytest.approx(0.01) and lr_multiplier(99, t) == pytest.approx(1.0)
    assert lr_multiplier(550, t) == pytest.approx(0.55)  # cosine halfway: floor + (1 - floor) / 2
    assert lr_multiplier(1000, t) == pytest.approx(0.1)  # the last step is at the floor
    t.schedule = "linear"
    assert lr_multiplier(550, t) == pytest.approx(0.55) and lr_multiplier(775, t) == pytest.approx(0.325)
    assert lr_multiplier(1000, t) == pytest.approx(0.1)
    t.schedule, t.decay_fraction = "wsd", 0.2
    assert lr_multiplier(800, t) == 1.0 and lr_multiplier(900, t) == pytest.approx(0.55)
    assert lr_multiplier(1000, t) == pytest.approx(0.1)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
@pytest.mark.parametrize(
    ("max_steps", "warmup", "decay_fraction"), [(10, 4, 0.8), (1000, 100, 1.0), (1000, 100, 0.2), (7, 0, 0.5)]
)
def test_schedules_never_jump_and_end_at_the_floor(schedule, max_steps, warmup, decay_fraction):
    """Warmup overlapping wsd's decay window used to jump (1.0 -> 0.75, or 1.0 -> 0.91 at step 100),
    and the last step never reached the floor."""
    t = load_config(
        None,
        [f"train.max_steps={max_steps}", f"train.warmup_steps={warmup}", f"train.schedule={schedule}"]
        + [f"train.decay_fraction={decay_fraction}", "train.min_lr_ratio=0"],
    ).train
    rates = [lr_multiplier(step, t) for step in range(max_steps)]
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert max(rates) == pytest.approx(1.0)
    peak = rates.index(max(rates))
    assert all(a <= b for a, b in zip(rates[:peak], rates[1 : peak + 1]))  # rises to the peak...
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1 :]))  # ...then only falls
    assert rates[warmup] == 1.0  # the decay starts from the peak, where warmup ended


def test_torch_compile_gives_the_same_logits_on_cpu():
    from minigpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 40, (2, 16))
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(idx)[0], model(idx)[0], atol=1e-5, rtol=1e-5)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from minigpt import GPT, GPTConfig
    from minigpt.train.optim import Optimizers

    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_weights=False))
    optimizer = Optimizers(model, load_config(None, ["train.optimizer=muon"]).train)
    muon, adamw = optimizer.optimizers
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    for name, p in model.named_parameters():
        hidden_matrix = p.dim() == 2 and name.startswith("transformer.h.")
        assert (id(p) in in_muon) == hidden_matrix, name
    decayed = {id(p) for p in adamw.param_groups[0]["params"]}
    assert id(model.lm_head.weight) in decayed and id(model.transformer.ln_f.weight) not in decayed


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_our_optimizers_update_exactly_as_torchs(kind, monkeypatch):
    """Optimizers uses torch's classes with their compile guards left out: the updates are torch's, bit for bit
    (Muon's iterations in bf16, as torch runs them; on CPUs without bf16 units ours run in float32, below)."""
    from minigpt import GPT, GPTConfig
    from minigpt.train import optim
    from minigpt.train.optim import Optimizers

    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: True)

    torch.manual_seed(0)
    models = [GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    initial = [p.detach().clone() for p in models[0].parameters()]
    ours = Optimizers(models[0], load_config(None, [f"train.optimizer={kind}"]).train)
    twin = {id(p): q for p, q in zip(models[0].parameters(), models[1].parameters())}
    theirs = [
        type(o).__mro__[1]([{**g, "params": [twin[id(p)] for p in g["params"]]} for g in o.param_groups])
        for o in ours.optimizers
    ]
    assert [type(o).__mro__[1] for o in ours.optimizers] == [torch.optim.Muon, torch.optim.AdamW][2 - len(theirs) :]
    for _ in range(3):
        idx = torch.randint(0, 40, (2, 16))
        for model in models:
            model(idx, idx)[1].backward()
        ours.step(torch.amp.GradScaler(enabled=False))
        ours.zero_grad()
        for optimizer in theirs:
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(torch.equal(a, b) for a, b in zip(models[0].parameters(), initial))  # every tensor was updated


@pytest.mark.parametrize("bf16_units", [True, False])
def test_muon_iterates_in_float32_where_bf16_would_be_emulated(bf16_units, monkeypatch):
    """AVX2-only CPUs emulate bf16 (several times slower than float32): Muon's Newton-Schulz runs in float32
    there, and still orthogonalises (singular values pushed from anywhere into roughly 0.5-1.5)."""
    from minigpt.train import optim

    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: bf16_units)
    expected = torch.bfloat16 if bf16_units else torch.float32
    assert optim.newton_schulz_dtype(torch.device("cpu")) == expected
    assert optim.newton_schulz_dtype(torch.device("cuda")) == torch.bfloat16
    torch.manual_seed(0)
    updates = torch.randn(3, 32, 64) * torch.logspace(-3, 1, 64)  # columns of very different sizes
    out = optim._newton_schulz(updates, (3.4445, -4.7750, 2.0315), 5, 1e-7, expected)
    assert out.dtype == expected
    singular = torch.linalg.svdvals(out.float())
    assert singular.min() > 0.3 and singular.max() < 1.6


def test_a_cpu_run_never_imports_torch_dynamo(char_data, tmp_path):
    """torch.optim's guards against torch.compile import torch._dynamo, 2 s of a short run's start-up."""
    code = (
        "import sys; from minigpt.config import load_config; from minigpt.train.trainer import train; "
        "train(load_config(None, sys.argv[1:])); print('torch._dynamo' in sys.modules)"
    )
    args = [f"data.dir={char_data}", f"out_dir={tmp_path / 'run'}", *TINY, "train.max_steps=2", "device=cpu"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_missing_logging_extras_only_add_a_note(char_data, tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    summary = train(config_for(char_data, tmp_path / "run", "train.max_steps=2", "train.tensorboard=true"))
    assert summary["step"] == 2
    assert "tensorboard is not installed" in capsys.readouterr().err


def test_a_time_budget_lays_the_schedule_on_the_clock():
    t = load_config(None, ["train.max_seconds=60", "train.warmup_steps=10", "train.min_lr_ratio=0.1"]).train
    assert lr_multiplier(0, t, budget_used=0.0) == pytest.approx(0.1)  # warmup still counts steps
    assert lr_multiplier(500, t, budget_used=0.5) == pytest.approx(0.55)  # cosine halfway through the budget
    assert lr_multiplier(900, t, budget_used=1.0) == pytest.approx(0.1)  # fully decayed when it is spent
    t.schedule, t.decay_fraction = "wsd", 0.2
    assert lr_multiplier(500, t, budget_used=0.8) == 1.0 and lr_multiplier(600, t, budget_used=0.9) == pytest.approx(
        0.55
    )
    slow_warmup = [lr_multiplier(s, t, budget_used=0.85 + s / 1000) for s in range(10)]
    assert slow_warmup == sorted(slow_warmup) or max(slow_warmup) <= 1.0  # the lower of ramp and decay: no jump


def test_train_with_a_time_budget_ends_decayed_evaluated_and_saved(char_data, tmp_path, capsys):
    from helpers import run_main

    out = tmp_path / "run"
    args = ["train", "-", f"data.dir={char_data}", f"out_dir={out}", *TINY, "train.eval_interval=1000"]
    code, _, err = run_main(capsys, *args, "train.log_interval=1", "--time", "3s")
    assert code == 0, err
    metrics = read_metrics(out, drop=())
    last_train = [m for m in metrics if "train_loss" in m][-1]
    assert last_train["lr"] == pytest.approx(0.1 * 1e-3)  # min_lr_ratio * lr: the schedule ran its course
    assert "val_loss" in metrics[-1] and metrics[-1]["step"] == last_train["step"] > 1
    checkpoint = load_checkpoint(out, latest=True)
    assert checkpoint.record.step == last_train["step"] and checkpoint.record.config.train.max_seconds == 3.0
    code, _, err = run_main(capsys, *args, "--time", "soon")
    assert code == 2 and "--time 'soon' is not a duration; give seconds, minutes or hours" in err
