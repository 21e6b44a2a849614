"""Built-in corpora: `shakespeare` (downloaded once) and `pydocs` (offline).

`pydocs` is real human-written English that every Python installation
carries: the reference manual bundled for `help()` (pydoc_data.topics), the
docstrings of the built-in C modules, and the docstrings of every module,
class and function in the standard library's source files. Source files are
read with `ast` and never imported, so nothing with side effects runs (think
`this`, `antigravity` or `tkinter`). It needs no network, gives a few MB of
text and is identical on every run of the same Python: the quickstart corpus.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import os
import sysconfig
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import MinigptError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BUILTIN_CORPORA = ("shakespeare", "pydocs")

# C modules (no .py source to read) whose import does nothing but define names.
PYDOCS_C_MODULES = ("builtins", "sys", "math", "cmath", "itertools", "time", "array", "binascii", "unicodedata", "zlib")
# Folders of the stdlib that hold tests or third-party packages, not the library.
PYDOCS_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_DOC_CHARS = 40  # skip one-line stubs such as "Return self."


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where downloads are kept: the argument, else $MINIGPT_CACHE, else ~/.cache/minigpt."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")


def shakespeare_path(cache: str | os.PathLike | None = None) -> Path:
    """The tiny Shakespeare text file, downloaded on first use only."""
    path = cache_dir(cache) / "tinyshakespeare.txt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
            partial.write_bytes(response.read())
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise MinigptError(
            f"could not download tiny Shakespeare from {SHAKESPEARE_URL} ({e}); "
            f"put the file at {path} yourself, or use the offline corpus 'pydocs'"
        ) from None
    partial.replace(path)
    return path


def pydocs_documents() -> Iterator[str]:
    """Yield the pydocs corpus, one topic or docstring per document, in a fixed order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions ship Python without it
        topics = {}
    docs = (topics[name] for name in sorted(topics))
    docs = itertools.chain(docs, _c_module_docstrings(), _stdlib_source_docstrings())
    seen: set[str] = set()
    for doc in docs:
        doc = inspect.cleandoc(doc)
        if len(doc) >= MIN_DOC_CHARS and doc not in seen:  # re-exports share docstrings
            seen.add(doc)
            yield doc


def _c_module_docstrings() -> Iterator[str]:
    """Docstrings of C modules, their classes, functions and methods, by sorted name."""
    for module_name in PYDOCS_C_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # not built into this Python (e.g. zlib)
            continue
        objects = [module] + [obj for name, obj in sorted(vars(module).items()) if not name.startswith("_")]
        for obj in objects:
            yield from _docstring(obj)
            if inspect.isclass(obj):
                for name, member in sorted(vars(obj).items()):
                    if not name.startswith("_"):
                        yield from _docstring(member)


def _docstring(obj: object) -> Iterator[str]:
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str):
        yield doc


def _stdlib_source_docstrings() -> Iterator[str]:
    """Docstrings parsed (not imported) from the stdlib's .py files, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in PYDOCS_SKIP_DIRS)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                tree = ast.parse(Path(folder, name).read_bytes())
            except (SyntaxError, ValueError):  # a few files are deliberately invalid
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False)
                    if doc:
                        yield doc
