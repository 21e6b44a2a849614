"""Checks on the places a command will write, made before it writes anything.

A mistake in an output path (the empty string of an unset variable, a file where a folder belongs,
a folder under a file, a read-only place) becomes one MinigptError naming the path and the fix,
instead of a traceback from deep inside a save, or a run written into the current directory.
"""

import os
from pathlib import Path

from .errors import MinigptError


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """PATH as a folder this process can create or write into; `what` names it in messages (e.g. '--out')."""
    path = _not_empty(path, what, "a folder path such as out/run")
    if path.exists() and not path.is_dir():
        raise MinigptError(f"{what} {path} is a file; give a folder path")
    _check_writable(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str, replace: bool = False) -> Path:
    """PATH as a file this process can create (or, with replace, replace); `what` names it in messages
    (e.g. '--out'). An existing file is refused without replace: it may be the user's own."""
    path = _not_empty(path, what, "a file name such as loss.png")
    if path.is_dir():
        raise MinigptError(f"{what} {path} is a folder; give a file name such as {path / 'picture.png'}")
    if path.exists() and not replace:
        raise MinigptError(f"{what} {path} already exists; give a new file name, or add --force to replace it")
    _check_writable(path.parent, what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise MinigptError(f"{what} {path} is read-only; give another file name")
    return path


def first_missing(path: Path) -> Path | None:
    """The outermost folder of PATH that does not exist yet (None if PATH exists): what undoes creating PATH."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            return missing
        missing = folder
    return missing


def _not_empty(path: str | os.PathLike, what: str, example: str) -> Path:
    # Path("") is ".": without this check an unset $OUT would quietly write into the current folder.
    if not str(path).strip():
        raise MinigptError(f"{what} is empty (an unset variable?); give {example}")
    return Path(path)


def _check_writable(folder: Path, what: str, named: Path | None = None) -> None:
    """The nearest existing folder at or above FOLDER must be a folder we may write into."""
    named = named or folder
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MinigptError(f"{what} {named} lies under {existing}, which is a file; give a path outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MinigptError(
            f"{what} {named} cannot be written: {existing} is read-only or not writable by this user; "
            "choose another place"
        )
