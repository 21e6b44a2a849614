"""The one exception type for mistakes a user can make.

The command line catches it and prints its message as a single line with
exit code 2 (bad input) or 1 (a runtime failure such as a full disk).
"""


class MinigptError(Exception):
    """A problem the user caused and can fix; the message says what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
