"""Take a model out of minigpt: `minigpt export PATH --format hf|gguf|onnx --out DIR`.

    export("out/shakespeare_char", "gguf", "exported/shakespeare", outtype="q8_0")

    hf    config.json, model.safetensors and tokenizer files for transformers' Auto classes
    gguf  model.gguf for llama.cpp and Ollama (f32, f16 or q8_0 weights)
    onnx  model.onnx (input_ids -> logits) for ONNX Runtime, with the tokenizer as tokenizer.json

The output folder must be new or empty: nothing a user made is overwritten. Files are written into
a temporary folder beside it and renamed into place, so a refused model or a failure halfway
leaves nothing behind. What a user of the files must know (a folder that needs trust_remote_code,
a GELU that llama.cpp computes in another form) is printed as a note on stderr.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import MinigptError
from ..loader import load_model
from ..paths import check_output_folder

FORMATS = ("hf", "gguf", "onnx")


def export(
    path: str | Path, fmt: str, out_dir: str | Path, *, outtype: str | None = None, latest: bool = False
) -> list[Path]:
    """Write the model behind PATH (anything load_model reads) to out_dir in format fmt; returns the files.

    outtype is the GGUF weight type (f32, f16 or q8_0; default f16) and applies to gguf only.
    """
    if fmt not in FORMATS:
        raise MinigptError(f"unknown export format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if outtype is not None and fmt != "gguf":
        raise MinigptError(f"--outtype applies to gguf only; {fmt} is written in float32")
    if fmt == "gguf":
        from .gguf import check_outtype

        check_outtype(outtype or "f16")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model, tokenizer, _ = load_model(path, latest=latest)
    made = next((p for p in reversed(out_dir.absolute().parents) if not p.exists()), None)  # parents to create
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        note = _write(fmt, model, tokenizer, tmp, outtype)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(made or tmp, ignore_errors=True)
        raise
    if note:
        print(f"note: {note}", file=sys.stderr)
    return sorted(out_dir.iterdir())


def _check_out_dir(out_dir: Path) -> None:
    check_output_folder(out_dir, "--out")  # empty, a file, under a file, read-only: one line
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise MinigptError(f"output folder {out_dir} already holds files; name a new or empty folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise MinigptError(f"output {out_dir} is a file; name a new or empty folder")


def _write(fmt: str, model, tokenizer, folder: Path, outtype: str | None) -> str | None:
    """Write the files of fmt into folder; returns the note a user of them must read, if any."""
    if fmt == "hf":
        from .hf import export_note, save_hf

        save_hf(model, tokenizer, folder)
        return export_note(model.config)
    if fmt == "gguf":
        from .gguf import export_note, save_gguf

        save_gguf(model, tokenizer, folder / "model.gguf", outtype=outtype or "f16")
        return export_note(model.config)
    from .hf_tokenizer import to_hf_tokenizer
    from .onnx import save_onnx

    save_onnx(model, folder / "model.onnx")
    to_hf_tokenizer(tokenizer, model.config.block_size).save(folder)  # what ONNX Runtime users load
    return None
