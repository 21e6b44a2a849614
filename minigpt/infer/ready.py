"""What `sample`, `chat` and `serve` do before they generate: load the model on its device, choose the
dtype it runs in, lay float32 weights out for one-token steps on a CPU (nn/decode_layout.py), load
speculative decoding's drafter, and (when no thread count was asked for) time which thread count
decodes faster.

    ready = load_for_generation(ModelChoice("out/quickstart", quantize="int8"))
    engine = ready.engine(max_batch=8)
"""

from dataclasses import dataclass

import torch

from ..device import resolve_device, resolve_dtype, running_on
from ..loader import load_model
from ..nn.decode_layout import decode_layout
from .engine import Engine, fastest_threads
from .speculative import load_drafter


@dataclass
class ModelChoice:
    """Which model to generate with and how: the options sample, chat and serve share."""

    path: str  # a run, a checkpoint or a Hugging Face model (a LoRA run comes merged)
    latest: bool = False  # the newest checkpoint instead of the best
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None  # "int8": int8 linear layers (CPU)
    speculative: str | None = None  # "prompt-lookup", or the path of a smaller draft model
    measure_threads: bool = False  # time 1 thread against one per core and keep the faster
    compile: bool = False  # decode steps compiled ahead of time (Engine's compile_decode)


@dataclass
class ReadyModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    drafter: object = None  # None, or a drafter of speculative.py
    speculative: str | None = None  # what --speculative named
    compile: bool = False  # decode steps compiled
    quantize: str | None = None  # what --quantize named

    def running_on(self) -> str:
        """For the start-up line: 'cpu, float32, 1 thread', int8 weights, a compiled decode step and the
        speculative drafter, if any."""
        how = f", {self.quantize} weights" if self.quantize else ""
        how += ", compiled decode step" if self.compile else ""
        how += f", speculative decoding with {self.speculative}" if self.speculative else ""
        return running_on(self.device, self.dtype) + how

    def engine(self, **options) -> Engine:
        """An Engine over this model as it was chosen (device, dtype, drafter, compiled steps); options are
        the Engine's others (max_batch, max_context, ...)."""
        return Engine(
            self.model,
            self.tokenizer,
            device=self.device,
            dtype=self.dtype,
            drafter=self.drafter,
            compile_decode=self.compile,
            **options,
        )


def laid_out_for_decoding(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """model, its float linear layers laid out for one-token steps where that pays: float32 on a CPU (a GPU's
    BLAS does not care; int8 layers have their own layout). What the benchmarks time too."""
    if device.type == "cpu" and dtype == torch.float32:
        decode_layout(model)
    return model


def load_for_generation(choice: ModelChoice) -> ReadyModel:
    """The chosen model, loaded and ready to generate."""
    torch_device = resolve_device(choice.device)
    torch_dtype = resolve_dtype(choice.dtype, torch_device, phase="generate")
    model, tokenizer, _ = load_model(choice.path, latest=choice.latest, device=torch_device, quantize=choice.quantize)
    laid_out_for_decoding(model, torch_device, torch_dtype)
    drafter = load_drafter(choice.speculative, model, tokenizer, torch_device)
    if choice.measure_threads:  # no thread count asked for: the faster of 1 and one per core, timed
        fastest_threads(model, torch_device, torch_dtype)
    return ReadyModel(
        model,
        tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        drafter=drafter,
        speculative=choice.speculative,
        compile=choice.compile,
        quantize=choice.quantize,
    )
