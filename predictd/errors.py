"""The one exception type users see.

Every check on user input raises :class:`PredictdError` with a message that names the culprit
(file, manifest row, config key). The CLI prints it as a single line and exits non-zero.
"""


class PredictdError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
