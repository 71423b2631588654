"""The one exception type for user mistakes.

Anything a user can get wrong (a missing file, a checkpoint of the wrong shape,
a NaN in a states file, an unknown task) raises :class:`WmelError` with a
one-line message that names the problem. The CLI prints it as
``wmel-jax: error: <message>`` and exits with status 2; every other exception
is a bug in wmel-jax and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["WmelError", "EXIT_USAGE"]

#: Exit status for user errors, as argparse uses for bad arguments.
EXIT_USAGE = 2


class WmelError(Exception):
    """A user-facing error: the message is one line and says what is wrong."""

    def __init__(self, message: str):
        # One line, always: a multi-line message would read like a traceback.
        super().__init__(" ".join(str(message).split()))
