"""The one exception type for mistakes a user can make, and reading the files a user names.

The command line catches it and prints its message as a single line with
exit code 2 (bad input) or 1 (a runtime failure such as a full disk).
"""

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


def read_user_text(path, what: str) -> str:
    """The UTF-8 text of a file the user named; a missing, unreadable or binary file is a MinigptError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MinigptError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise MinigptError(f"{what} {path} is a folder; expected a text file") from None
    except UnicodeDecodeError:
        raise MinigptError(f"{what} {path} is not UTF-8 text") from None
    except OSError as e:
        raise MinigptError(f"cannot read {what} {path} ({e.strerror or e})") from None
