"""User errors: problems with a file, a shape or an option that the user can fix.

The command line prints them as one line, ``climseg: error: <message>``, and
exits with status 2; the library raises them like any exception. Messages name
the thing (usually a path) first, then the problem.

Every class also derives from the matching built-in, so code that does not know
climseg catches them as usual::

    UserError               ValueError         (a bad value: unknown channel, bad option)
      DataError             ValueError         (a bad data file)
        MissingFileError    FileNotFoundError  (a file or folder that is not there)
      CheckpointError       ValueError
      ConfigError           ValueError
      TrainingError         RuntimeError       (the loss diverged)
"""


class UserError(ValueError):
    """A problem with the user's input; the message is one line. A ``ValueError``."""

    def __init__(self, message):
        super().__init__(_original_line(str(message)))


class DataError(UserError, ValueError):
    """A data file that is missing, unreadable, malformed or holds bad values."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class ConfigError(UserError, ValueError):
    """A bad option or configuration value."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (the loss diverged); the message says what to change."""


class MissingFileError(DataError, FileNotFoundError):
    """A file or folder that does not exist (also a ``FileNotFoundError``)."""


def _original_line(message):
    # torch's DataLoader re-raises a worker's exception as
    # ``type("Caught X in DataLoader worker process 0.\nOriginal Traceback ...")``;
    # keep only the worker's own one-line message.
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    prefix, sep, rest = last.partition(": ")
    return rest if sep and "Error" in prefix else last


class OutputError(UserError, OSError):
    """An output location that cannot be written: a file where a folder belongs, a
    read-only or full file system, no permission, or a run folder in use by another run."""


def first_line(exc, limit=200):
    """The first non-empty line of an exception's message (its type name when it has none, and
    before a message without words, e.g. ``KeyError: 101``), cut at a word boundary to about
    ``limit`` characters: for ``(reason)`` parts."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if not any(c.isalpha() for c in text):  # e.g. a KeyError of a number: the number alone says nothing
        text = f"{type(exc).__name__}: {text}"
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return (cut if len(cut) > limit // 2 else text[:limit]) + " ..."
