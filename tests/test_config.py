"""Configs: YAML, dotted overrides, and a clear message for every mistake."""

from pathlib import Path

import pytest

from minigpt.config import RunConfig, load_config, save_config
from minigpt.errors import MinigptError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_sections_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "out_dir: out/a\nmodel:\n  n_layer: 3\ntrain:\n  lr: 3.0e-4\n")
    config = load_config(
        path,
        [
            "train.max_steps=200",
            "model.n_layer=2",
            "out_dir=out/try",
            "train.lr=1e-3",
            "model.n_kv_head=null",
            "compile=false",
        ],
    )
    assert (config.out_dir, config.model.n_layer, config.train.max_steps) == ("out/try", 2, 200)
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.compile == "false" and config.model.n_kv_head is None
    assert config.model.n_head == RunConfig().model.n_head  # untouched keys keep their defaults


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_step=3", "unknown config key 'train.max_step'; did you mean train.max_steps"),
        ("model.n_layers=3", "did you mean model.n_layer"),
        ("trian.lr=1", "unknown config key 'trian'; did you mean train"),
        ("model.n_layer=two", "model.n_layer must be int, got 'two'"),
        ("train.lr=fast", "train.lr must be float, got 'fast'"),
        ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
        ("train.lr=-0.1", "train.lr must not be negative, got -0.1"),
        ("model.vocab_size=100", "vocab_size comes from the prepared data"),
        ("dtype=fp8", "dtype is 'fp8'; expected one of auto, float32, bfloat16, float16"),
        ("device=tpu", "device is 'tpu'; expected auto, cpu, cuda, cuda:N or mps"),
        ("model.n_embd=100", "n_embd (100) must be divisible by n_head (12)"),
        ("model.n_kv_head=5", "n_kv_head (5) must divide n_head (12)"),
        ("train.max_steps", "override 'train.max_steps' is not of the form key=value"),
        ("train.lr=nan", "train.lr must be a finite number, got 'nan'"),
        ("train.grad_clip=.inf", "train.grad_clip must be a finite number, got inf"),
    ],
)
def test_mistakes_are_named(override, message):
    with pytest.raises(MinigptError) as error:
        load_config(None, [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(MinigptError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(MinigptError, match=r"is not valid YAML at line 2"):
        load_config(write(tmp_path, "model:\n\tn_layer: 2\n"))
    with pytest.raises(MinigptError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(MinigptError, match="model must be a section"):
        load_config(write(tmp_path, "model: 3\n"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    config = load_config(path)
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == config.to_dict()


def test_quickstart_ends_in_the_promised_minutes():
    """The quickstart is laid on a time budget, not a step count: on a busy machine it still ends."""
    config = load_config(CONFIGS[0].with_name("quickstart.yaml"))
    assert config.train.max_seconds is not None and config.train.max_seconds <= 300
