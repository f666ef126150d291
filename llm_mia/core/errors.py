"""The one exception type users see.

Every error caused by the user's input (missing file, corrupt JSON, unknown model, empty corpus)
is raised as :class:`LlmMiaError` with a one-line message; the CLI prints it as
``error: <message>`` and exits with status 2, never a traceback.
"""


class LlmMiaError(Exception):
    """A user-facing error with a one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class LlmMiaWarning(UserWarning):
    """A one-line warning about the audit's validity (e.g. the reference model is the target)."""
