"""What `sample`, `chat` and `serve` do before they generate: load the model on its device, choose the
dtype it runs in, lay float32 weights out for one-token steps on a CPU (nn/decode_layout.py), load
speculative decoding's drafter, and (when no thread count was asked for) time which thread count
decodes faster.

    ready = load_for_generation("out/quickstart", device="auto", dtype="auto")
    engine = Engine(ready.model, ready.tokenizer, device=ready.device, dtype=ready.dtype, drafter=ready.drafter)
"""

from dataclasses import dataclass

import torch

from ..device import resolve_device, resolve_dtype, running_on
from ..loader import load_model
from ..nn.decode_layout import decode_layout
from .engine import fastest_threads
from .speculative import load_drafter


@dataclass
class ReadyModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    drafter: object  # None, or a drafter of speculative.py
    speculative: str | None  # what --speculative named

    def running_on(self) -> str:
        """For the start-up line: 'cpu, float32, 1 thread' and the speculative drafter, if any."""
        how = f", speculative decoding with {self.speculative}" if self.speculative else ""
        return running_on(self.device, self.dtype) + how


def load_for_generation(
    path: str,
    *,
    latest: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    speculative: str | None = None,
    measure_threads: bool = False,
) -> ReadyModel:
    """The model at PATH (a run, a checkpoint or a Hugging Face model; a LoRA run comes merged), ready."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, phase="generate")
    model, tokenizer, _ = load_model(path, latest=latest, device=torch_device, quantize=quantize)
    if torch_device.type == "cpu" and torch_dtype == torch.float32 and quantize is None:
        decode_layout(model)  # int8 layers have their own layout; a GPU's BLAS does not care
    drafter = load_drafter(speculative, model, tokenizer, torch_device)
    if measure_threads:  # no thread count asked for: the faster of 1 and one per core, timed
        fastest_threads(model, torch_device, torch_dtype)
    return ReadyModel(model, tokenizer, torch_device, torch_dtype, drafter, speculative)
