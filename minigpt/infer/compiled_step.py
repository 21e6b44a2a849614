"""The compiled decode step behind --compile: one new token for every row of a KV cache, as native code.

    step = CompiledStep(model)
    logits = step(idx, caches, length)   # idx (rows, 1); caches: make_cache's ragged caches, every row at length
    logits = step(idx, caches, length, ragged=True)   # rows at their own lengths (caches' lengths), the longest length

torch.export traces the model's one-token step (the cache length symbolic: one trace serves every
length) and AOTInductor compiles it into a shared library, which the step then calls with no Python
between its operations and nothing checked at each call. torch.compile did the same work behind its
guards and wrappers, 0.3 ms of a 2 ms step of the 6 x 384 model on 2 CPU cores (README, performance).
On a CPU the weights are frozen into the library: Inductor packs each one into a blocked layout and
writes the one-row products as C++ kernels of its own (max_autotune's CPP templates, fused with the
layer norms and GELUs around them). So the library holds a second copy of the weights, made for these
weights: the model must not change while its CompiledStep is in use.

A ragged step (rows at different positions: a server's batch) writes each row at its own position and
masks each row's attention to its own keys, over the longest row's length. One library per batch size,
thread count and kind (all are compiled in), each compiled at its first use: 30-100 s on 2 CPU cores.
"""

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from ..nn.attention import KVCache


class CompileFailed(Exception):
    """Compiling the step failed (no C++ compiler, an operation the exporter cannot trace): decode eagerly."""


class CompiledStep:
    """model's one-token decode step, compiled ahead of time; see the module docstring."""

    def __init__(self, model):
        self.model = model
        self.libraries = {}  # (rows, capacity, threads, ragged) -> the compiled step
        self.positions = None  # arange(capacity): its first `length` entries carry the length into the step

    def fits(self, length: int, capacity: int) -> bool:
        """Whether the step takes a cache of this capacity at this length: all but its last free position
        (there the exporter proves the key slice contiguous and specialises on it) and at least 2 positions
        free."""
        return 1 <= length <= capacity - 2

    def __call__(self, idx: torch.Tensor, caches: list[KVCache], length: int, ragged: bool = False) -> torch.Tensor:
        """The last position's logits (rows, vocab) of idx (rows, 1), fed after the `length` positions every
        row of caches holds, or with ragged after each row's own (caches[0].lengths; length the longest). All
        of the caches' rows and storage are used: what rows without a sequence write is never read. The keys
        and values land in caches; their lengths are the caller's to advance."""
        capacity = caches[0].k.shape[2]
        key = (idx.shape[0], capacity, torch.get_num_threads(), ragged)
        if key not in self.libraries:
            self.libraries[key] = self._compile(caches, idx.device, ragged)
        if self.positions is None or self.positions.shape[0] != capacity:
            self.positions = torch.arange(capacity, device=idx.device)
        # the tensors as the library takes them, flat (DecodeStep's arguments in order): its Python wrapper
        # would flatten them itself, 40 microseconds a step
        lengths = [caches[0].lengths] if ragged else []
        flat = [idx, self.positions[:length], *lengths, *(cache.k for cache in caches), *(cache.v for cache in caches)]
        return self.libraries[key].loader.run(flat)[0]

    def _compile(self, caches: list[KVCache], device: torch.device, ragged: bool):
        rows, capacity = caches[0].k.shape[0], caches[0].k.shape[2]
        # traced on stand-ins of the same shapes, at a length the exporter does not specialise on (0 and 1)
        stand_ins = [torch.zeros_like(cache.k) for cache in caches], [torch.zeros_like(cache.v) for cache in caches]
        idx = torch.zeros((rows, 1), dtype=torch.long, device=device)
        length = Dim("length", min=1, max=capacity - 2)
        configs = {}
        if device.type == "cpu":
            configs = {
                "freezing": True,
                "max_autotune": True,
                "max_autotune_gemm_backends": "CPP,ATEN",
                "autotune_num_choices_displayed": 0,  # no tables of kernel timings on stderr
                "max_autotune_report_choices_stats": False,
            }
            # torch 2.13's kernel timing calls a storage API it deprecates itself: nothing a user can act on
            warnings.filterwarnings(
                "ignore", "TypedStorage is deprecated", UserWarning, "torch._inductor.select_algorithm"
            )
        # the rows' own lengths: stand-ins within the traced length
        lengths = [torch.zeros(rows, dtype=torch.long, device=device)] if ragged else []
        try:
            program = torch.export.export(
                RaggedDecodeStep(self.model) if ragged else DecodeStep(self.model),
                (idx, torch.arange(2, device=device), *lengths, *stand_ins),
                dynamic_shapes=(None, {0: length}, *[None] * len(lengths), [None] * len(caches), [None] * len(caches)),
            )
            with tempfile.TemporaryDirectory() as folder:  # the loaded library needs no file left behind
                path = torch._inductor.aoti_compile_and_package(
                    program, package_path=str(Path(folder) / "step.pt2"), inductor_configs=configs
                )
                return torch._inductor.aoti_load_package(path, run_single_threaded=True)
        except Exception as error:  # whatever stops it, the engine decodes without it
            raise CompileFailed(type(error).__name__) from error


class DecodeStep(nn.Module):
    """model's forward for one new token per row, on tensors alone (what torch.export traces): the keys
    and values of each layer at full capacity, and the cache length as the size of `positions`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, positions, keys, values):
        caches = [KVCache.over(k, v, positions.shape[0]) for k, v in zip(keys, values)]
        logits, _ = self.model(idx, cache=caches, only_last=True)
        return logits[:, -1]


class RaggedDecodeStep(DecodeStep):
    """DecodeStep for rows at their own positions: `lengths` (rows,) says where each row writes, and
    `positions` the longest row's length."""

    def forward(self, idx, positions, lengths, keys, values):
        caches = [KVCache.over(k, v, positions.shape[0], lengths) for k, v in zip(keys, values)]
        logits, _ = self.model(idx, cache=caches, only_last=True)
        return logits[:, -1]
