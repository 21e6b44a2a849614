"""One training run per out_dir at a time: an OS lock on out_dir/train.lock.

Two runs writing into one folder would interleave their metrics.jsonl and overwrite each other's
checkpoints. The lock is flock(2) on an open file, so the kernel drops it when its process ends in
any way, kill -9 included: nothing stale is ever left to clean up. The file stays behind (holding
the last holder's process id, for the refusal message); deleting it could let two runs lock two
different files of the same name.

The file is opened read-only (flock does not need write access), so that a run holds no file of
out_dir open for writing between saves. Platforms without fcntl (Windows) take no lock.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import MinigptError
from ..paths import check_output_folder, first_missing

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = "train.lock"


@contextmanager
def out_dir_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on OUT_DIR (created if missing) for the duration; yields the folder.

    A folder made here is removed again if the body fails and nothing but the lock was written,
    so a run refused for bad input leaves no trace.
    """
    folder = check_output_folder(out_dir, "out_dir")
    created = first_missing(folder.absolute())
    lock_path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise MinigptError(f"cannot create out_dir {folder} ({e.strerror or e}); choose another place") from None
    try:
        _lock(fd, lock_path, folder)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield folder
    except BaseException:
        if created is not None and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, lock_path: Path, folder: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_path.read_text().strip() or "unknown"
        raise MinigptError(
            f"out_dir {folder} is in use by another training run (process {holder}); "
            "wait for it to finish, stop it, or choose another out_dir"
        ) from None
    holder = f"{os.getpid()}\n"
    if lock_path.read_text() != holder:  # unchanged when the same process takes it again
        lock_path.write_text(holder)
