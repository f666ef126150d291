"""The one exception type users see.

Every error caused by the user's input (missing file, corrupt JSON, unknown model, empty corpus)
is raised as :class:`LlmMiaError` with a one-line message; the CLI prints it as
``error: <message>`` and exits with status 2, never a traceback.
"""


class LlmMiaError(Exception):
    """A user-facing error with a one-line message.

    Raised for every fault of the input (a missing file, a corrupt record, an unknown model or signal,
    an empty corpus) before long work starts; whitespace in the message is collapsed to one line. The
    CLI prints it as ``error: <message>`` and exits with status 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class LlmMiaWarning(UserWarning):
    """A one-line warning about the audit's validity (e.g. the reference model is the target)."""
