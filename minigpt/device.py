"""Choosing the device, the precision and the CPU threads, and the autocast context that applies the precision.

device = resolve_device("auto"); dtype = resolve_dtype("auto", device, phase="generate")
threads = set_threads(config.threads)   # or $MINIGPT_THREADS; 0 / None: torch's default
"""

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import MinigptError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_memory() -> int | None:
    """Bytes of memory this machine can still give a process (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed: float, what: str, advice: str) -> None:
    """Refuse, in one line, work whose estimated memory the machine does not have (before it starts
    growing until the kernel kills it)."""
    available = available_memory()
    if available is not None and needed > available:
        raise MinigptError(
            f"{what} would need at least {needed / 2**30:,.1f} GB of memory; this machine has "
            f"{available / 2**30:,.1f} GB available; {advice}"
        )


def check_device_name(name: str) -> None:
    """A device name minigpt accepts, whether or not this machine has that device."""
    if name not in ("auto", "cpu", "mps", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise MinigptError(f"device is {name!r}; expected auto, cpu, cuda, cuda:N or mps")


def resolve_device(name: str = "auto") -> torch.device:
    """auto picks CUDA, then Apple's MPS, then the CPU; a device that is not there is an error."""
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MinigptError(f"device {name!r} was asked for but this machine has no CUDA GPU; use device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise MinigptError("device 'mps' was asked for but this machine has no Apple GPU; use device=cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise MinigptError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(name)


THREADS_VARIABLE = "MINIGPT_THREADS"
CPU_FEATURES = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX-512 BF16": "avx512_bf16", "AMX": "amx_bf16"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_features() -> dict[str, bool]:
    """Which of the vector units that decide CPU speed this CPU has (what `minigpt bench` prints)."""
    flags = cpu_flags()
    return {name: flag in flags for name, flag in CPU_FEATURES.items()}


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), which makes autocast pay off.
    Elsewhere (AVX2-only CPUs, most laptops) torch emulates bf16, several times slower than float32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def set_threads(threads: int | None = None) -> int | None:
    """Let torch use `threads` CPU threads, else $MINIGPT_THREADS (0: torch's default, one per core); returns
    the number asked for, None when neither asks (generation then measures: engine.fastest_threads).
    Set once at start-up, before any work."""
    if threads is None:
        raw = os.environ.get(THREADS_VARIABLE, "").strip()
        if not raw:
            return None
        try:
            threads = int(raw)
        except ValueError:
            raise MinigptError(
                f"{THREADS_VARIABLE} is {raw!r}; expected a whole number, 0 for torch's default"
            ) from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise MinigptError(f"threads is {threads!r}; expected a whole number, 0 (or none) for torch's default")
    if threads:
        torch.set_num_threads(threads)
    return threads


def running_on(device: torch.device, dtype: torch.dtype) -> str:
    """Where work runs, for start-up lines: 'cpu, float32, 2 threads' (threads only on the CPU)."""
    where = f"{device.type}, {str(dtype).removeprefix('torch.')}"
    threads = torch.get_num_threads()
    return f"{where}, {threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else where


def resolve_dtype(name: str, device: torch.device, phase: str = "train") -> torch.dtype:
    """The dtype a phase of work runs in; `auto` picks what is faster there.

    phase "train" (and batched forward passes such as eval): bf16 on GPUs that have it (fp16 on older
    ones) and on CPUs with bf16 units (AVX-512 BF16 / AMX), else float32. phase "generate": the same
    on GPUs, but float32 on CPUs: generation is dominated by one-token decode steps, whose narrow
    matmuls run slower in bf16 than in float32 on these CPUs (measured: `minigpt bench`).
    """
    if name != "auto":
        if name not in DTYPES:
            raise MinigptError(f"unknown dtype {name!r}; expected auto, float32, bfloat16 or float16")
        if name == "float16" and device.type == "cpu":
            raise MinigptError("dtype float16 is for GPUs; on the CPU use bfloat16 or float32")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and phase == "train" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def time_dtypes(run: Callable[[torch.dtype], None], candidates: tuple[torch.dtype, ...], repeats: int = 2) -> dict:
    """Seconds of run(dtype) for each candidate: the best of `repeats` timed calls after a warm-up.

    What dtype=auto measures on a CPU with bf16 units, where bf16 pays for wide matmuls but can lose
    on narrow ones: which is faster depends on the model's width and the CPU, so it is timed.
    """
    seconds = {}
    for dtype in candidates:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run(dtype)
            times.append(time.perf_counter() - start)
        seconds[dtype] = min(times[1:])
    return seconds


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass: matmuls in dtype, weights and reductions in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def inference(model: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """Run model for inference (eval mode, no autograd, autocast to dtype), then give it back in the
    mode it was in: a caller that was training keeps training."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, dtype):
            yield
    finally:
        model.train(was_training)
