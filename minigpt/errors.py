"""The one exception type for mistakes a user can make, and reading the files a user names.

The command line catches it and prints its message as a single line with
exit code 2 (bad input) or 1 (a runtime failure such as a full disk).
"""

import errno
import os
import re
import stat
from pathlib import Path

MAX_TEXT_BYTES = 1 << 30  # 1 GiB: more than any prompt or evaluation text; prepare reads corpora file by file
SEED_LIMIT = 2**64  # random seeds are 64-bit unsigned everywhere (torch.Generator's range)


class MinigptError(Exception):
    """A problem the user caused and can fix; the message says what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def write_fix(error: OSError, path) -> str:
    """What to do about a write that failed with `error`: where permission was refused (or the file
    system is read-only) freeing disk space would not help, so name the path to make writable."""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {path} writable"
    return "free disk space"


def read_user_text(path, what: str = "", *, invalid: dict[str, int] | None = None, max_bytes=MAX_TEXT_BYTES) -> str:
    """The text of a file the user named, exactly as its bytes say: the one reader for user text.

    No newline translation: a file with Windows line endings keeps its \r\n, so `prepare`, `eval
    --text-file` and `--prompt-file` see the same characters and count the same bytes. Strict by
    default (a file that is not UTF-8 is a MinigptError); with an `invalid` dict, as `prepare` reads
    a corpus, bytes that are not UTF-8 become U+FFFD and are counted there under the file's name.
    Only regular files of at most max_bytes are read: a named pipe would block and /dev/zero never end.
    """
    label = f"{what} {path}" if what else str(path)
    check_regular_file(path, label)
    try:
        with Path(path).open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as e:
        raise MinigptError(f"cannot read {label} ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise MinigptError(f"{label} is larger than {max_bytes:,} bytes; give a smaller file")
    if invalid is None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MinigptError(f"{label} is not UTF-8 text") from None
    if b"\x00" in data:
        raise MinigptError(
            f"{label} is not a text file (it holds NUL bytes: binary data or UTF-16); "
            "give UTF-8 text, or convert it first"
        )
    # surrogateescape maps each bad byte to one lone surrogate: count them, then replace them.
    text, count = re.subn("[\udc80-\udcff]", "\ufffd", data.decode("utf-8", errors="surrogateescape"))
    if count:
        invalid[str(path)] = count
    return text


def check_regular_file(path, label: str) -> None:
    """A MinigptError unless path is a regular file (or a link to one): not missing, a folder, a pipe or a device."""
    try:
        mode = os.stat(path).st_mode  # stat, unlike open, never blocks on a named pipe
    except FileNotFoundError:
        raise MinigptError(f"{label} does not exist") from None
    except OSError as e:
        raise MinigptError(f"cannot read {label} ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise MinigptError(f"{label} is a folder; expected a text file")
    if not stat.S_ISREG(mode):
        raise MinigptError(f"{label} is not a regular file (a pipe or a device?); give a file")
