"""Models that no standard transformers class expresses, written with their own modeling code.

The folder carries modeling_minigpt.py (this package's file, copied as it is: torch and transformers
only) and a config.json whose auto_map points transformers at it, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

runs the model exactly; that is how new architectures reach the Hugging Face Hub. The config holds our
GPTConfig field for field and the tensors keep our names, so reading such a folder back is direct.
"""

from dataclasses import asdict, dataclass

from ..model import GPT, GPTConfig
from .hf_architectures import Architecture

CODE = "modeling_minigpt.py"


@dataclass(frozen=True)
class OwnCode(Architecture):
    """An Architecture whose config and tensor names are ours: it expresses every model."""

    def their_names(self, ours: str) -> tuple[str, ...]:
        return (ours,)

    def cannot_express(self, config: GPTConfig) -> list[str]:
        return []

    def to_config(self, hf: dict) -> GPTConfig:
        return GPTConfig.from_dict(hf)  # GPT() validates it, naming a bad value

    def from_model(self, model: GPT) -> dict:
        module = CODE.removesuffix(".py")
        return {
            "model_type": self.model_type,
            "architectures": [self.hf_class],
            "auto_map": {"AutoConfig": f"{module}.MinigptConfig", "AutoModelForCausalLM": f"{module}.{self.hf_class}"},
            **asdict(model.config),
            "tie_word_embeddings": model.config.tie_weights,  # transformers' name, read when it ties the head
        }


MINIGPT = OwnCode(
    model_type="minigpt",
    hf_class="MinigptForCausalLM",
    fields={},
    fixed={},
    accepted={},
    layer_prefix="",
    layer={},
    top={},
    code=(CODE,),
)
