"""Built-in corpora, both offline: `shakespeare` (shipped with the package) and `pydocs`.

`shakespeare` is tiny Shakespeare (1.1 MB of public-domain plays, the text of
Karpathy's char-rnn and nanoGPT), so the fine-tuning examples need no network.

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
from collections.abc import Iterator
from pathlib import Path

BUILTIN_CORPORA = ("shakespeare", "pydocs")

# C modules (no .py source to read) whose import does nothing but define names.
PYDOCS_C_MODULES = ("builtins", "sys", "math", "cmath", "itertools", "time", "array", "binascii", "unicodedata", "zlib")
# Folders of the stdlib that hold tests or third-party packages, not the library.
PYDOCS_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_DOC_CHARS = 40  # skip one-line stubs such as "Return self."


def shakespeare_path() -> Path:
    """The tiny Shakespeare text file that ships inside the package."""
    return Path(__file__).with_name("tinyshakespeare.txt")


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
