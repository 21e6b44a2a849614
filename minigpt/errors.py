"""The one exception type for mistakes a user can make, and reading the files a user names.

The command line catches it and prints its message as a single line with
exit code 2 (bad input) or 1 (a runtime failure such as a full disk).
"""

import re
from pathlib import Path


class MinigptError(Exception):
    """A problem the user caused and can fix; the message says what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_user_text(path, what: str = "", *, invalid: dict[str, int] | None = None) -> str:
    """The text of a file the user named, exactly as its bytes say: the one reader for user text.

    No newline translation: a file with Windows line endings keeps its \r\n, so `prepare`, `eval
    --text-file` and `--prompt-file` see the same characters and count the same bytes. Strict by
    default (a file that is not UTF-8 is a MinigptError); with an `invalid` dict, as `prepare` reads
    a corpus, bytes that are not UTF-8 become U+FFFD and are counted there under the file's name.
    """
    label = f"{what} {path}" if what else str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MinigptError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise MinigptError(f"{label} is a folder; expected a text file") from None
    except OSError as e:
        raise MinigptError(f"cannot read {label} ({e.strerror or e})") from None
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
