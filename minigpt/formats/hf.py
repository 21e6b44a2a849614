"""Read and write Hugging Face causal-LM folders: config.json + model.safetensors (or pytorch_model.bin).

    model, tokenizer = load_hf("path/to/folder")   # or a Hub name such as "gpt2" (needs the network once)
    save_hf(model, tokenizer, "out/hf")           # transformers' AutoModelForCausalLM reads it back

Our parameter names are GPT-2's, so for GPT-2 the only differences are: Hugging Face's Conv1D layers
store weights as (in, out) where nn.Linear stores (out, in), hence four transposes; the attention layers
carry a causal-mask buffer we do not need; and a tied lm_head is left out of the file.
"""

import json
from pathlib import Path

from ..checkpoint import safe_torch_load
from ..errors import MinigptError
from ..model import GPT, GPTConfig
from ..tokenizers import Tokenizer, load_tokenizer

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf(path_or_name: str) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a Hugging Face folder, or of a Hub name (downloaded once, then cached)."""
    folder = _resolve(path_or_name)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MinigptError(f"{folder} has no config.json; expected a Hugging Face GPT-2 folder")
    model = GPT(gpt2_config(json.loads(config_file.read_text())))
    state = _read_weights(folder)
    state = {
        k.removeprefix("transformer."): v
        for k, v in state.items()
        if not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    ours = model.state_dict()
    loaded = {}
    for name, tensor in state.items():
        key = name if name == "lm_head.weight" else f"transformer.{name}"
        if key not in ours:
            raise MinigptError(f"unexpected tensor {name!r} in {folder}; is it a GPT-2 checkpoint?")
        loaded[key] = tensor.t() if name.endswith(TRANSPOSED) else tensor
    missing = set(ours) - set(loaded) - {"lm_head.weight"}
    if missing:
        raise MinigptError(f"{folder} lacks {len(missing)} GPT-2 tensors, e.g. {sorted(missing)[0]}")
    loaded.setdefault("lm_head.weight", loaded["transformer.wte.weight"])
    model.load_state_dict(loaded)
    return model, load_tokenizer("gpt2")


def save_hf(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> None:
    """Write model (and, for now, nothing of the tokenizer) as a Hugging Face GPT-2 folder."""
    c = model.config
    default_arch = (
        c.pos_encoding == "learned"
        and c.norm == "layernorm"
        and c.mlp == "gelu"
        and c.bias
        and c.tie_weights
        and c.n_kv_head in (None, c.n_head)
        and not c.qk_norm
        and not c.logit_softcap
    )
    if not default_arch:
        raise MinigptError(
            "only the GPT-2 architecture (learned positions, layernorm, gelu, bias, tied weights) "
            "can be saved in Hugging Face GPT-2 format"
        )
    from safetensors.torch import save_file

    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        tensors[key] = (tensor.t() if key.endswith(TRANSPOSED) else tensor).contiguous().cpu()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    hf_config = dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_ctx=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        tie_word_embeddings=True,
    )
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))


def gpt2_config(hf: dict) -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT2Config dict."""
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise MinigptError(f"GPT-2 checkpoint uses activation {activation!r}; only gelu_new (tanh GELU) is supported")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=0.0,
        bias=True,
    )


def _resolve(path_or_name: str) -> Path:
    path = Path(path_or_name)
    if path.is_dir():
        return path
    if path.exists():
        raise MinigptError(f"{path_or_name} is not a folder with config.json and model weights")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_name, allow_patterns=["config.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown name, or no hub library: one message for the user
        raise MinigptError(
            f"{path_or_name!r} is no local folder and could not be downloaded from the Hugging Face "
            f"Hub ({type(e).__name__}); give a run's out_dir, a checkpoint folder or a Hugging Face folder"
        ) from None


def _read_weights(folder: Path) -> dict:
    if (folder / "model.safetensors").is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(folder / "model.safetensors")
        except SafetensorError as e:
            raise MinigptError(f"{folder / 'model.safetensors'} is corrupted ({e}); download it again") from None
    if (folder / "pytorch_model.bin").is_file():
        # weights_only: a pickle from the internet may not run code
        return safe_torch_load(folder / "pytorch_model.bin")
    raise MinigptError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
