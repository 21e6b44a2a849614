"""minigpt's own int8 kernel (int8_kernel.cpp): the operation `minigpt::int8_linear`, built for this CPU.

    if native_int8_kernel():
        y = torch.ops.minigpt.int8_linear(rows, pack(weight_int8), scale, bias)

The C++ source ships with the package and is compiled on first use with the machine's C++ compiler (the
one `--compile` uses; $CXX or c++), about 10 s, for this CPU's instructions (-march=native: AVX-512 VNNI
or AVX2). The library is kept in ~/.cache/minigpt (or $MINIGPT_CACHE), named by the source, the PyTorch
version and the CPU's features, so a home folder shared by machines of two kinds keeps one for each.
Where it cannot be built (not Linux on x86, no compiler), `native_int8_kernel()` says so once on stderr
and returns False, and int8 layers use PyTorch's bf16 kernel instead.
"""

import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

SOURCE = Path(__file__).with_name("int8_kernel.cpp")
OUTPUTS_PER_GROUP, VALUES_PER_VECTOR = 4, 32  # the packed layout int8_kernel.cpp reads

# The operation's schema, and its shape for tracing (torch.export runs it on fake tensors); the kernel itself
# registers from C++ when its library loads.
_operations = torch.library.Library("minigpt", "DEF")
_operations.define("int8_linear(Tensor rows, Tensor weight, Tensor scale, Tensor? bias) -> Tensor")


@torch.library.register_fake("minigpt::int8_linear", lib=_operations)
def _int8_linear_shape(rows, weight, scale, bias):
    return rows.new_empty(rows.shape[0], scale.shape[0])


def pack(weight_int8: torch.Tensor) -> torch.Tensor:
    """weight_int8 (out, in) in the kernel's layout: output features in groups of 4 (the last padded with
    zeros), each group's 4 rows interleaved 32 values at a time, so that a group is one run of memory."""
    out_features, in_features = weight_int8.shape
    padded = torch.cat([weight_int8, weight_int8.new_zeros(-out_features % OUTPUTS_PER_GROUP, in_features)])
    groups = padded.view(-1, OUTPUTS_PER_GROUP, in_features // VALUES_PER_VECTOR, VALUES_PER_VECTOR)
    return groups.transpose(1, 2).contiguous()


def unpack(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """pack's inverse: the (out, in) int8 weight."""
    groups, vectors = packed.shape[:2]
    return packed.transpose(1, 2).reshape(groups * OUTPUTS_PER_GROUP, vectors * VALUES_PER_VECTOR)[:out_features]


@functools.cache
def native_int8_kernel() -> bool:
    """Whether torch.ops.minigpt.int8_linear runs minigpt's kernel here: built (once) and loaded."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        torch.ops.load_library(built_library())
        return True
    except OSError as error:  # no compiler, an unwritable cache, a library that does not load
        reason = str(error)
    except subprocess.CalledProcessError as error:  # the compiler's first error, not its whole output
        errors = [line for line in error.stderr.splitlines() if "error" in line]
        reason = errors[0].strip() if errors else f"{error.cmd[0]} exited with status {error.returncode}"
    print(f"minigpt: the int8 kernel could not be built ({reason}); int8 layers multiply in bf16", file=sys.stderr)
    return False


def built_library(arch: str = "native") -> Path:
    """The kernel's shared library for this PyTorch and the CPU arch (gcc's -march: "native" is this one's;
    "haswell" gives the AVX2 code on any newer x86), compiled if the cache has none."""
    compiler = os.environ.get("CXX", "c++")
    flags = ["-O3", f"-march={arch}", "-fopenmp", "-shared", "-fPIC", "-std=c++20"]
    flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join([compiler, *flags]).encode(), _cpu()):
        key.update(part)
    folder = Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")
    library = folder / f"int8_kernel-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    libraries = [f"-L{path}" for path in cpp_extension.library_paths()]
    # written beside its final name and renamed: two processes building at once each leave a whole library
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as staging:
        command = [compiler, *flags, *includes, str(SOURCE), "-o", staging.name, *libraries, "-lc10", "-ltorch_cpu"]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
            os.replace(staging.name, library)
        finally:
            Path(staging.name).unlink(missing_ok=True)
    return library


def _cpu() -> bytes:
    """This CPU's model and instruction-set features: a library built with -march=native runs only there."""
    with open("/proc/cpuinfo", "rb") as info:
        lines = info.read().split(b"\n\n")[0].splitlines()
    return b"\n".join(line for line in lines if line.startswith((b"model name", b"flags")))
